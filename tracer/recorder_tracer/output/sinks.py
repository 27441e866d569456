"""Pick the writer for `recorder trace`: text lines, JSON lines or Chrome."""

from __future__ import annotations

from typing import Any, Protocol, TextIO

from recorder_tracer.decode.record import Record
from recorder_tracer.errors import TracerError


class Sink(Protocol):
    """What the session feeds: one record at a time, then a summary."""

    def write(self, record: Record) -> None: ...

    def close(self, summary: Any = None) -> None: ...


class _OwningSink:
    """A writer on a file we opened: closing it closes the file."""

    def __init__(self, writer: Sink, stream: TextIO) -> None:
        self.writer = writer
        self.stream = stream

    def write(self, record: Record) -> None:
        self.writer.write(record)

    def close(self, summary: Any = None) -> None:
        self.writer.close(summary)
        self.stream.close()


def open_sink(output: TextIO, as_json: bool = False,
              chrome: str | None = None) -> Sink:
    """Text lines on `output` (default), JSON lines, or a Chrome trace file."""
    if chrome:
        from recorder_tracer.output.chrome import ChromeTraceWriter
        try:
            stream = open(chrome, "w")  # noqa: SIM115 - closed by the sink
        except OSError as error:
            raise TracerError(f"cannot write {chrome}: {error.strerror}") from None
        return _OwningSink(ChromeTraceWriter(stream), stream)
    if as_json:
        from recorder_tracer.output.jsonl import JsonLinesWriter
        return JsonLinesWriter(output, flush=True)
    from recorder_tracer.decode.render import TextPrinter
    return TextPrinter(output)

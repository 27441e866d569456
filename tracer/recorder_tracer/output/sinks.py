"""The one sink factory: text lines, JSON lines or a Chrome trace file.

`open_sink` picks what `recorder trace`, `show` and `dump` write to;
`open_writer` names the file formats (output/jsonl.py, output/chrome.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from recorder_tracer.decode.record import Record
from recorder_tracer.errors import TracerError
from recorder_tracer.output.chrome import ChromeTraceWriter
from recorder_tracer.output.jsonl import JsonLinesWriter
from recorder_tracer.output.writer import Writer

if TYPE_CHECKING:
    from recorder_tracer.output.chrome_plans import ChromePlans
    from recorder_tracer.output.json_plans import JsonPlans
    from recorder_tracer.output.text_plans import TextPlans

FORMATS: dict[str, Callable[..., Writer]] = {"jsonl": JsonLinesWriter,
                                             "chrome": ChromeTraceWriter}


def open_writer(kind: str, stream: TextIO, **options: Any) -> Writer:
    """Return the writer for `kind` ("jsonl" or "chrome") on `stream`."""
    try:
        factory = FORMATS[kind]
    except KeyError:
        raise ValueError(f"unknown export format {kind!r}; "
                         f"choose from {', '.join(sorted(FORMATS))}") from None
    return factory(stream, **options)


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
        try:
            stream = open(chrome, "w")  # noqa: SIM115 - closed by the sink
        except OSError as error:
            raise TracerError(f"cannot write {chrome}: {error.strerror}") from None
        return _OwningSink(open_writer("chrome", stream), stream)
    if as_json:
        return open_writer("jsonl", output, flush=True)
    from recorder_tracer.output.text import TextPrinter
    return TextPrinter(output)


def line_plans_for(sink: Sink) -> JsonPlans | TextPlans | ChromePlans | None:
    """The line plans `recorder trace --batch` renders `sink`'s lines by, on
    the writer that writes them: JSON lines, text, or the Chrome writer of
    the file a sink owns (None: a sink no plans write for)."""
    writer = sink.writer if isinstance(sink, _OwningSink) else sink
    if isinstance(writer, JsonLinesWriter):
        from recorder_tracer.output.json_plans import JsonPlans
        return JsonPlans(writer)
    if isinstance(writer, ChromeTraceWriter):
        from recorder_tracer.output.chrome_plans import ChromePlans
        return ChromePlans(writer)
    from recorder_tracer.output.text import TextPrinter
    if isinstance(writer, TextPrinter):
        from recorder_tracer.output.text_plans import TextPlans
        return TextPlans(writer)
    return None

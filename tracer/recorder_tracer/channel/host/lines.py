"""The collector's JSON lines: records, console lines and metrics samples.

A record line is the `recorder trace --json` object with where it came
from in the stream and both clocks:

    {"seq": 12, "n": 0, "ts": 5021..., "host_ts": 4919..., "pid": ..,
     "tid": .., "comm": "app", "cpu": 1, "provider": "recorder",
     "topic": "net", "where": "a.c:3", "message": "sent 4", "args": [4]}

`ts` is the guest's CLOCK_MONOTONIC, `host_ts` the same instant on the
collector's (channel/clock.py; guest.json says how sure it is).
The lines are built by hand, each batch's names escaped once: json.dumps
per record would cost most of the channel's time.
"""

from __future__ import annotations

import json
import math

from recorder_tracer.channel.batch import (
    ConsoleLine,
    Sections,
    check_end,
    sections,
    slow_args,
)
from recorder_tracer.channel.wire import FrameError
from recorder_tracer.decode.record import Arg

_escape = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _arg(value: Arg) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f'"{value}"'
    if value is None:
        return "null"
    return _escape(value)


def record_lines(records: list[tuple], seq: int, offset_ns: float,
                 skip_through: int = -1) -> bytes:
    """The lines of one batch (Decoded tuples); records with index <=
    `skip_through` were written before (a batch resent after the collector
    restarted).

    >>> from recorder_tracer.channel.batch import Decoded
    >>> d = Decoded(10, 1, 2, 0, "recorder", "a", "t", "w", "m", [1, None])
    >>> json.loads(record_lines([d], 3, 4.0))["host_ts"]
    6
    """
    # What a thread's records share, escaped once per batch.
    middles: dict[tuple, str] = {}
    out = []
    append = out.append
    shift = round(offset_ns)
    for n, (ts, pid, tid, cpu, provider, comm, topic, where, message,
            args) in enumerate(records):
        if n <= skip_through:
            continue
        key = (pid, tid, cpu, provider, comm, topic, where)
        middle = middles.get(key)
        if middle is None:
            middle = middles[key] = (
                f'"pid": {pid}, "tid": {tid}, "comm": {_escape(comm)}, '
                f'"cpu": {cpu}, "provider": {_escape(provider)}, '
                f'"topic": {_escape(topic)}, "where": {_escape(where)}')
        if not args:
            text = ""
        elif all(type(arg) is int for arg in args):
            text = ", ".join(map(str, args))
        else:
            text = ", ".join(map(_arg, args))
        append(f'{{"seq": {seq}, "n": {n}, "ts": {ts}, "host_ts": {ts - shift}, '
               f'{middle}, "message": {_escape(message)}, "args": [{text}]}}\n')
    return "".join(out).encode()


def batch_lines(payload: bytes, seq: int, offset_ns: float,
                skip_through: int = -1) -> tuple[bytes, int]:
    """record_lines straight from a RECORDS payload (the collector's path:
    no tuple per record in between): (the lines, how many records).

    >>> from recorder_tracer.channel.batch import encode_records
    >>> from recorder_tracer.decode.record import Record
    >>> r = Record(ts=10, pid=1, tid=2, comm="a", topic="t", where="w",
    ...            message="m", args=[7])
    >>> data, count = batch_lines(encode_records([r, r]), 3, 4.0, skip_through=0)
    >>> count, json.loads(data)["n"], json.loads(data)["args"]
    (2, 1, [7])
    """
    cut = sections(payload)
    messages, arguments = _columns(cut)
    table = cut.table
    middles: dict[tuple, str] = {}
    out = []
    append = out.append
    shift = round(offset_ns)
    head = f'{{"seq": {seq}, "n": '
    for n, ts, key, message, args in zip(
            range(len(cut.ts)), cut.ts,
            zip(cut.pid, cut.tid, cut.cpu, cut.provider, cut.comm, cut.topic,
                cut.where, strict=True),
            map(_escape, messages), arguments, strict=True):
        if n <= skip_through:
            continue
        middle = middles.get(key)
        if middle is None:
            pid, tid, cpu, provider, comm, topic, where = key
            middle = middles[key] = (
                f'"pid": {pid}, "tid": {tid}, "comm": {_escape(table[comm])}, '
                f'"cpu": {cpu}, "provider": {_escape(table[provider])}, '
                f'"topic": {_escape(table[topic])}, '
                f'"where": {_escape(table[where])}')
        append(f'{head}{n}, "ts": {ts}, "host_ts": {ts - shift}, {middle}, '
               f'"message": {message}, "args": [{args}]}}\n')
    return "".join(out).encode(), len(cut.ts)


def _columns(cut: Sections) -> tuple[list[str], list[str]]:
    """Each record's message and its arguments as JSON text; checks that
    the argument counts use the tags, values and texts exactly."""
    counts, values, texts, tags = cut.nargs, cut.values, cut.texts, cut.tags
    if len(texts) == len(counts) and tags.count(b"q") == len(tags):
        # Every argument an int64 (the common batch): C-speed passes.
        check_end(cut, sum(counts), len(values), len(texts))
        numbers = list(map(str, values))
        width = counts[0] if counts else 0
        if counts.count(width) == len(counts):      # one argument count
            if width == 0:
                return texts, [""] * len(counts)
            if width == 1:
                return texts, numbers
            return texts, list(map(", ".join, zip(*[iter(numbers)] * width,
                                                  strict=True)))
        arguments = []
        value = 0
        for nargs in counts:
            arguments.append(", ".join(numbers[value:value + nargs]))
            value += nargs
        return texts, arguments
    messages: list[str] = []
    arguments = []
    tag = value = text = 0
    try:
        for nargs in counts:
            messages.append(texts[text])
            found, value, text = slow_args(cut, tag, nargs, value, text + 1)
            tag += nargs
            arguments.append(", ".join(map(_arg, found)))
    except IndexError:
        raise FrameError("a record batch's texts do not add up") from None
    check_end(cut, tag, value, text)
    return messages, arguments


def console_lines(lines: list[ConsoleLine], seq: int, offset_ns: float,
                  skip_through: int = -1) -> bytes:
    """One JSON line per console line: seq, n, ts, host_ts, source, text."""
    return "".join(
        f'{{"seq": {seq}, "n": {n}, "ts": {line.ts}, '
        f'"host_ts": {line.ts - round(offset_ns)}, "source": '
        f'{_escape(line.source)}, "text": {_escape(line.text)}}}\n'
        for n, line in enumerate(lines) if n > skip_through).encode()

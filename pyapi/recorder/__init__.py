"""recorder for Python: the same flight recorder and probes as C programs.

Records go into the C core's in-process rings (the extension
`recorder._core` compiles the core in), cost about a hundred nanoseconds,
and reach a tracer through the probe `recorder:recorder_dynamic`, armed
topic by topic (`recorder trace -p PID net`)::

    import recorder

    net = recorder.Recorder("net", size=1024, description="network")
    net.record("sent %d bytes to %s", 512, "example.org")
    recorder.record("net", "closed after %.3f s", 1.25)  # by topic name

    with recorder.span("checkout"):          # begin, end + duration in ns
        ...

    @recorder.traced                          # a span per call
    def handle(request): ...

    logging.getLogger("app").addHandler(recorder.LoggingHandler())

Formats are printf's (%d %u %x %c: int; %f %e %g: float or int; %s: str,
bytes, None or bool; %p: int or None); a format that does not match its
arguments raises TypeError at the call. `RECORDER_TRACES` (read at import)
and `trace_set` choose what is printed as it is recorded or turned off;
`dump` prints the rings; a fatal signal dumps them and still kills the
process (the core's handler hands the signal back, to faulthandler too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recorder._core import (
    MAX_ARGS,
    SPAN_BEGIN,
    SPAN_END,
    Recorder,
    dump_on_signals,
    now,
    record,
    span,
    topics,
    trace_set,
)
from recorder._core import dump as _dump

if TYPE_CHECKING:
    from recorder.bridge import LoggingHandler
    from recorder.spans import traced

# Like C programs that call recorder_dump_on_common_signals: a crash shows
# the last records, then the signal goes on to faulthandler or the default.
dump_on_signals()


def dump(pattern: str = "all") -> int:
    """Print the records of topics whose whole name matches `pattern` (a
    regex, or "all") on stderr, oldest first; returns how many were shown.

    >>> dump("no_such_topic")
    0
    """
    import sys

    sys.stderr.flush()          # the core writes to fd 2 directly
    return _dump(pattern)


def topic(name: str, size: int = 64, description: str = "") -> Recorder:
    """The recorder called `name` (an older spelling of `Recorder`)."""
    return Recorder(name, size, description)


def available() -> bool:
    """True: records always reach the C core (kept for older callers)."""
    return True


Topic = Recorder


def __getattr__(name: str) -> Any:
    # LoggingHandler and traced import logging and inspect (~10 ms): only
    # for the programs that use them.
    if name == "LoggingHandler":
        from recorder.bridge import LoggingHandler
        return LoggingHandler
    if name == "traced":
        from recorder.spans import traced
        return traced
    raise AttributeError(f"module 'recorder' has no attribute {name!r}")

__all__ = [
    "MAX_ARGS",
    "SPAN_BEGIN",
    "SPAN_END",
    "LoggingHandler",
    "Recorder",
    "Topic",
    "available",
    "dump",
    "dump_on_signals",
    "now",
    "record",
    "span",
    "topic",
    "topics",
    "trace_set",
    "traced",
]

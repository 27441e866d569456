"""`logging` into the flight recorder: one topic per logger name."""

from __future__ import annotations

import logging

from recorder._core import Recorder


class LoggingHandler(logging.Handler):
    """Record each `logging` record into the topic named after its logger,
    as "LEVEL message", located at the logging call ("file:line").

    The call's arguments are kept as the record's arguments, its format as
    the record's format ("%s " + msg, the level first), so a tracer sees
    `91` and "/var" of `log.warning("disk %d%% full on %s", 91, "/var")`
    as values. A call the core cannot take so (no arguments, `%r` or
    `%(name)s`, an argument that does not suit its conversion, over 11 of
    them) is recorded as its formatted text, as before.

    Records cost what `Recorder.record` costs once the message is
    formatted; topics are made on first use with `size` records per CPU.

    >>> import logging
    >>> log = logging.getLogger("doc.app")
    >>> log.addHandler(LoggingHandler())
    >>> log.warning("disk %d%% full", 91)     # into topic "doc.app"
    """

    FORMAT = "%s %s"

    def __init__(self, level: int = logging.NOTSET, size: int = 64) -> None:
        super().__init__(level)
        self.size = size
        self._recorders: dict[str, Recorder] = {}

    def recorder_for(self, name: str) -> Recorder:
        """The topic a logger's records go to."""
        found = self._recorders.get(name)
        if found is None:
            found = self._recorders[name] = Recorder(
                name, self.size, f"logging: {name}")
        return found

    def emit(self, record: logging.LogRecord) -> None:
        try:
            topic = self.recorder_for(record.name)
            where = f"{record.pathname}:{record.lineno}"
            if (isinstance(record.msg, str) and isinstance(record.args, tuple)
                    and record.args and "%r" not in record.msg):
                try:
                    topic._record_at(where, 0, "%s " + record.msg,
                                     record.levelname, *record.args)
                    return
                except (TypeError, ValueError, OverflowError):
                    pass        # not a printf format for these values
            topic._record_at(where, 0, self.FORMAT, record.levelname,
                             record.getMessage())
        except Exception:
            self.handleError(record)

"""`logging` into the flight recorder: one topic per logger name."""

from __future__ import annotations

import logging

from recorder._core import Recorder


class LoggingHandler(logging.Handler):
    """Record each `logging` record into the topic named after its logger,
    as "LEVEL message", located at the logging call ("file:line").

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
            message = record.getMessage()
            self.recorder_for(record.name)._record_at(
                f"{record.pathname}:{record.lineno}", 0, self.FORMAT,
                record.levelname, message)
        except Exception:
            self.handleError(record)

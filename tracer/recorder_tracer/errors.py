"""The one exception the CLI turns into a one-line error and exit status."""


class TracerError(RuntimeError):
    """A user-facing failure: the message is one line and says what to do."""

"""recorder's tracer: BPF harvest of recorder probes and the `recorder` CLI."""

from __future__ import annotations

from functools import cache


@cache
def _installed_version() -> str:
    # importlib.metadata costs ~70 ms of imports (email, zipfile, csv...):
    # only `--version` and the daemon's exposition ask for it.
    from importlib import metadata
    try:
        return metadata.version("recorder")
    except metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

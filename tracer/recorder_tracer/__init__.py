"""recorder's tracer: BPF harvest of recorder probes and the `recorder` CLI."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("recorder")
except _metadata.PackageNotFoundError:    # a checkout on sys.path, not installed
    __version__ = "0+unknown"

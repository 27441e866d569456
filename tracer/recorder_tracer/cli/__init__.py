"""The `recorder` command line: a module per command group, `app` joins them."""

from recorder_tracer.cli.app import main

__all__ = ["main"]

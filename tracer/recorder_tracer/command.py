"""The `recorder` console script: the CLI, or one line on how to get it.

`pip install recorder` installs the instrumentation alone; the CLI's own
dependencies come with the `tracer` extra. Without them, say so instead of
a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run the click CLI if its dependencies are installed."""
    try:
        import click  # noqa: F401 - only probing
    except ImportError:
        sys.stderr.write("recorder: the tracer's dependencies are missing: "
                         "pip install 'recorder[tracer]'\n")
        sys.exit(1)
    from recorder_tracer.cli.app import main as cli
    cli()

"""The `recorder` command line: thin click commands over the library.

Each command parses, calls one library function, renders. A TracerError
becomes one line on stderr and exit status 1; bad usage exits 2 (click).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from recorder_tracer.channel.host.command import collect
from recorder_tracer.cli.metrics import daemon, metrics, top
from recorder_tracer.cli.options import report
from recorder_tracer.cli.postmortem import dump, show, snapshot, snapshots
from recorder_tracer.cli.probes import probes
from recorder_tracer.cli.scope import scope
from recorder_tracer.cli.trace import trace
from recorder_tracer.errors import TracerError


class RecorderGroup(click.Group):
    """Turns TracerError into `recorder: <message>` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TracerError as error:
            report(str(error))
            sys.exit(1)


def _print_version(ctx: click.Context, wanted: bool) -> None:
    """`recorder --version`: the installed distribution's version, read
    only when asked (recorder_tracer.__version__ is lazy)."""
    if not wanted or ctx.resilient_parsing:
        return
    import recorder_tracer
    click.echo(f"recorder {recorder_tracer.__version__}")
    ctx.exit()


MAIN_EPILOG = """\b
Examples:
  sudo recorder probes                    # processes with a recorder core
  sudo recorder trace -p 1234 'net.*'     # stream topics net.* of 1234
  sudo recorder trace -c ./app --json     # run ./app, records as JSON lines
  sudo recorder trace --help              # every option of a command
"""


@click.group(cls=RecorderGroup, epilog=MAIN_EPILOG,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-V", "--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _param, value: _print_version(ctx, value),
              help="Show the version and exit.")
def main() -> None:
    """recorder: a flight-recorder tracer for recorder topics and USDT probes."""


for _command in (probes, trace, metrics, top, daemon, collect, snapshot, snapshots,
                 show, dump, scope):
    main.add_command(_command)

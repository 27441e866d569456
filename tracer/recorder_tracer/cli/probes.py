"""`recorder probes`: the probes of processes and files."""

from __future__ import annotations

import json

import click

PROBES_EPILOG = """\b
Examples:
  recorder probes                   # every process mapping a recorder core
  recorder probes 1234              # probes of process 1234
  recorder probes /usr/bin/python3  # USDT probes in a binary
  recorder probes --json ./app      # the same, as JSON
"""


@click.command(epilog=PROBES_EPILOG)
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def probes(targets: tuple[str, ...], as_json: bool) -> None:
    """List recorder topics first, then the other USDT probes, of processes
    (PID) or files (PATH); with no argument, of every process that maps a
    recorder core. Processes need root; files do not."""
    from recorder_tracer.cli.options import require_root
    from recorder_tracer.target import listing
    if not targets or any(target.isdigit() for target in targets):
        require_root("probes" if not targets else "probes PID")
    rows = listing.list_probes(list(targets))
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=1))
        return
    click.echo(listing.render(rows), nl=False)

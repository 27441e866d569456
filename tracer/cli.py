"""The `recorder` command line: thin click commands over the library.

Each command parses, calls one library function, renders. A TracerError
becomes one line on stderr and exit status 1; bad usage exits 2 (click).
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import Any, TextIO

import click

from recorder_tracer.errors import TracerError


class RecorderGroup(click.Group):
    """Turns TracerError into `recorder: <message>` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TracerError as error:
            click.echo(f"recorder: {error}", err=True)
            sys.exit(1)


@click.group(cls=RecorderGroup)
def main() -> None:
    """recorder: a flight-recorder tracer for recorder topics and USDT probes."""


PROBES_EPILOG = """\b
Examples:
  recorder probes                   # every process mapping a recorder core
  recorder probes 1234              # probes of process 1234
  recorder probes /usr/bin/python3  # USDT probes in a binary
  recorder probes --json ./app      # the same, as JSON
"""


@main.command(epilog=PROBES_EPILOG)
@click.argument("targets", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def probes(targets: tuple[str, ...], as_json: bool) -> None:
    """List recorder topics first, then the other USDT probes, of processes
    (PID) or files (PATH); with no argument, of every process that maps a
    recorder core."""
    from recorder_tracer import listing
    rows = listing.list_probes(list(targets))
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=1))
        return
    click.echo(listing.render(rows), nl=False)


TRACE_EPILOG = """\b
Examples:
  recorder trace -p 1234                  # every topic of process 1234
  recorder trace -p 1234 'net.*'          # topics matching net.* (regex)
  recorder trace --all 'all:/debug'       # all processes, all but `debug`
  recorder trace --comm server tick       # processes named server, now and later
  recorder trace -c './app --fast'        # start ./app, trace from its first record
  recorder trace -p 1234 --json -o t.json # JSON lines
  recorder trace -p 1234 --chrome t.trace # Chrome trace (open in Perfetto)
  recorder trace -p 1234 --duration 5     # stop after 5 seconds
"""


@main.command(epilog=TRACE_EPILOG)
@click.option("-p", "--pid", "pids", multiple=True, type=int,
              help="Trace this process (repeatable).")
@click.option("--comm", "comms", multiple=True,
              help="Trace processes with this name, now and later.")
@click.option("--all", "all_processes", is_flag=True,
              help="Trace every process with a recorder core, now and later.")
@click.option("-c", "--command", help="Start this command and trace it.")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.option("--chrome", type=click.Path(dir_okay=False),
              help="Write a Chrome trace-event file (Perfetto opens it).")
@click.option("-o", "--output", type=click.File("w"), default="-",
              help="Write records here instead of stdout.")
@click.argument("spec", nargs=-1)
def trace(pids: tuple[int, ...], comms: tuple[str, ...], all_processes: bool,
          command: str | None, duration: float | None, as_json: bool,
          chrome: str | None, output: TextIO, spec: tuple[str, ...]) -> None:
    """Arm the topics SPEC selects (the core's spec syntax: `[-|/]regex[=v]`
    items separated by ':' or spaces; none means all) and print records as
    they come, in timestamp order across processes and CPUs. On exit, print
    per CPU the records received and lost."""
    from recorder_tracer.session import TraceOptions, TraceSession
    from recorder_tracer.sinks import open_sink
    from recorder_tracer.spec import TopicSpec

    if as_json and chrome:
        raise click.UsageError("--json and --chrome are exclusive")
    if not (pids or comms or all_processes or command):
        raise click.UsageError("choose processes: -p PID, --comm, --all or -c")
    options = TraceOptions(
        pids=list(pids), comms=list(comms), all_processes=all_processes,
        command=shlex.split(command) if command else None,
        spec=TopicSpec.parse(*spec), duration=duration,
    )
    sink = open_sink(output, as_json=as_json, chrome=chrome)

    def report(message: str) -> None:
        click.echo(f"recorder: {message}", err=True)

    session = TraceSession(options, sink.write, report)
    try:
        session.start()
        click.echo("Tracing recorder topics... Hit Ctrl-C to end.", err=True)
        session.run(start=False)
    finally:
        summaries = session.summaries()
        sink.close(summaries)
        for cpu in summaries:
            click.echo(f"CPU {cpu.cpu}: {cpu.received} received, {cpu.lost} lost"
                       f" ({cpu.produced} produced)", err=True)


if __name__ == "__main__":
    main()

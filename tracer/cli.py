"""The `recorder` command line: thin click commands over the library.

Each command parses, calls one library function, renders. A TracerError
becomes one line on stderr and exit status 1; bad usage exits 2 (click).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from typing import Any, TextIO

import click

from recorder_tracer.errors import TracerError
from recorder_tracer.snapshot_file import DEFAULT_DIRECTORY as DEFAULT_SNAPSHOT_DIR


class RecorderGroup(click.Group):
    """Turns TracerError into `recorder: <message>` and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TracerError as error:
            click.echo(f"recorder: {error}", err=True)
            sys.exit(1)


MAIN_EPILOG = """\b
Examples:
  sudo recorder probes                    # processes with a recorder core
  sudo recorder trace -p 1234 'net.*'     # stream topics net.* of 1234
  sudo recorder trace -c ./app --json     # run ./app, records as JSON lines
  sudo recorder trace --help              # every option of a command
"""


@click.group(cls=RecorderGroup, epilog=MAIN_EPILOG)
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
  recorder trace -p 1234 --usdt python:line \\
      --usdt python:function__entry       # Python calls: file, function, line
                                          # (3.11 fires function__entry only
                                          # while python:line is armed)
  recorder trace -p 1234 --usdt postgres:postgresql:query__start:s
                                          # SQL text (`:s`: arg0 is a string)
  recorder trace -c 'python3.11 app.py' --usdt 'python:gc__*'
                                          # start a command, trace its GC
  recorder trace -p 1234 all --usdt 'python:gc__*'
                                          # every topic and the GC, merged
  recorder trace --comm python3.11 --usdt python:gc__start
                                          # GC starts of every python3.11
"""


@main.command(epilog=TRACE_EPILOG)
@click.option("-p", "--pid", "pids", multiple=True, type=int,
              help="Trace this process (repeatable).")
@click.option("--comm", "comms", multiple=True,
              help="Trace processes with this name, now and later.")
@click.option("--all", "all_processes", is_flag=True,
              help="Trace every process with a recorder core (with --usdt: "
                   "with the probes), now and later.")
@click.option("-c", "--command", help="Start this command and trace it.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.option("--chrome", type=click.Path(dir_okay=False),
              help="Write a Chrome trace-event file (Perfetto opens it).")
@click.option("-o", "--output", type=click.File("w", lazy=False), default="-",
              help="Write records here instead of stdout.")
@click.option("--usdt", "usdt", multiple=True,
              metavar="[PATH:]PROVIDER:PROBE[:FMT]",
              help="Trace this USDT probe too (repeatable; shell patterns "
                   "allowed); recorder topics then only if SPEC names some. "
                   "FMT has one letter per argument: s string, d signed, "
                   "u unsigned, x hex.")
@click.option("--flight-entries", type=click.IntRange(1, 1 << 20), default=1024,
              show_default=True,
              help="Records the kernel flight ring keeps per CPU.")
@click.option("--ring-pages", type=click.IntRange(1, 1 << 16), default=1024,
              show_default=True,
              help="Pages of the per-CPU stream ring (a power of two).")
@click.option("--snapshot-dir", default=DEFAULT_SNAPSHOT_DIR, show_default=True,
              envvar="RECORDER_SNAPSHOT_DIR", show_envvar=True,
              help="Write crash snapshots here.")
@click.option("--snapshot-records", type=click.IntRange(1, 1 << 16), default=256,
              show_default=True, help="Records a crash snapshot keeps.")
@click.option("--no-snapshots", is_flag=True,
              help="Do not capture crash snapshots while tracing.")
@click.argument("spec", nargs=-1)
def trace(pids: tuple[int, ...], comms: tuple[str, ...], all_processes: bool,
          command: str | None, duration: float | None, as_json: bool,
          chrome: str | None, output: TextIO, usdt: tuple[str, ...],
          flight_entries: int, ring_pages: int, snapshot_dir: str,
          snapshot_records: int, no_snapshots: bool, spec: tuple[str, ...]) -> None:
    """Arm the topics SPEC selects (the core's spec syntax: `[-|/]regex[=v]`
    items separated by ':' or spaces; none means all) and print records as
    they come, in timestamp order across processes and CPUs. A traced
    process that exits is reported on stderr; with only -p, the trace ends
    with the last one. On exit (Ctrl-C, SIGTERM, --duration, the end of -c),
    print per CPU the records received and lost.

    With --usdt, trace those USDT probes as well and print their arguments
    (TOPIC is the probe, WHERE its file); a pointer-sized argument shows the
    string it points to when it points to text. Without SPEC, --usdt traces
    only its probes; with one (`all` for every topic), both, merged in
    timestamp order.

    While it runs, a process with a recorder core that dies by a fatal
    signal (SEGV, BUS, ILL, FPE, ABRT, TRAP, SYS, KILL) leaves a snapshot of
    its last records in --snapshot-dir (see `recorder snapshots`), armed or
    not."""
    from recorder_tracer.render import TextPrinter
    from recorder_tracer.session import TraceOptions, TraceSession, stop_on_signals
    from recorder_tracer.sinks import open_sink
    from recorder_tracer.snapshot import SnapshotOptions
    from recorder_tracer.spec import TopicSpec

    if as_json and chrome:
        raise click.UsageError("--json and --chrome are exclusive")
    if ring_pages & (ring_pages - 1):
        raise click.UsageError(f"--ring-pages {ring_pages} is not a power of two")
    if not (pids or comms or all_processes or command):
        raise click.UsageError("choose processes: -p PID, --comm, --all or -c")
    try:
        argv = shlex.split(command) if command else None
    except ValueError as error:
        raise click.UsageError(f"-c {command!r}: {error}") from None
    if command is not None and not argv:
        raise click.UsageError("-c needs a command")
    if duration is not None and not math.isfinite(duration):
        raise click.UsageError(f"--duration {duration} is not a number of seconds")
    selectors: list[Any] = []
    if usdt:
        from recorder_tracer.usdt import UsdtSelector
        selectors = [UsdtSelector.parse(text) for text in usdt]
    options = TraceOptions(
        pids=list(pids), comms=list(comms), all_processes=all_processes,
        command=argv, spec=TopicSpec.parse(*spec), duration=duration,
        usdt=selectors, topics=bool(spec) or not usdt,
        flight_entries=flight_entries, pages_per_cpu=ring_pages,
        snapshots=None if no_snapshots else SnapshotOptions(snapshot_dir,
                                                            snapshot_records),
    )

    def report(message: str) -> None:
        click.echo(f"recorder: {message}", err=True)

    # From here on, SIGINT and SIGTERM only ask the session to stop: it
    # then detaches, drains and prints the summary, even mid-start.
    with stop_on_signals() as stopping:
        sink = open_sink(output, as_json=as_json, chrome=chrome)
        session = TraceSession(options, sink.write, report, stopping=stopping)
        try:
            session.start()
        except BaseException:
            session.close()     # detach what was armed; the error is the output
            raise
        if isinstance(sink, TextPrinter):
            sink.fit_topics(session.topic_names())
        try:
            click.echo(f"Tracing {_what(session)}... Hit Ctrl-C to end.", err=True)
            session.run(start=False)
        finally:
            summaries = session.summaries()
            sink.close(summaries)
            for cpu in summaries:
                click.echo(f"CPU {cpu.cpu}: {cpu.received} received, {cpu.lost} "
                           f"lost ({cpu.produced} produced)", err=True)
            if session.unknown_sites:
                click.echo(f"{session.unknown_sites} hits came before their site "
                           "was known: their arguments are lost", err=True)


def _what(session: Any) -> str:
    """What the banner says is traced."""
    parts = []
    if session.options.topics:
        parts.append("recorder topics")
    if session.usdt is not None:
        parts.append(f"{session.usdt.site_count} USDT probe sites in "
                     f"{len(session.usdt.processes)} processes")
    return " and ".join(parts)


# -- post-mortem: snapshots and shared-memory rings (issue 6) ---------------

SNAPSHOT_EPILOG = f"""\b
Examples:
  recorder snapshot 1234                  # last 256 records of 1234, to a file
  recorder snapshot 1234 --records 23     # its last 23
  recorder snapshot 1234 --snapshot-dir . # the file in the current directory
  (default directory: {DEFAULT_SNAPSHOT_DIR})
"""


@main.command(epilog=SNAPSHOT_EPILOG)
@click.argument("pid", type=int)
@click.option("--snapshot-dir", default=DEFAULT_SNAPSHOT_DIR, show_default=True,
              envvar="RECORDER_SNAPSHOT_DIR", show_envvar=True,
              help="Write the snapshot here.")
@click.option("--records", type=click.IntRange(1, 1 << 16), default=256,
              show_default=True, help="Records to keep.")
def snapshot(pid: int, snapshot_dir: str, records: int) -> None:
    """Write a snapshot of live process PID's last records, read from its
    memory without stopping or signalling it; print the file's path."""
    from recorder_tracer.snapshot import SnapshotOptions, take_snapshot
    click.echo(take_snapshot(pid, SnapshotOptions(snapshot_dir, records)))


SNAPSHOTS_EPILOG = """\b
Examples:
  recorder snapshots                      # the snapshots, oldest first
  recorder snapshots --json               # the same, as JSON
  recorder snapshots --snapshot-dir /tmp/s
"""


@main.command(epilog=SNAPSHOTS_EPILOG)
@click.option("--snapshot-dir", default=DEFAULT_SNAPSHOT_DIR, show_default=True,
              envvar="RECORDER_SNAPSHOT_DIR", show_envvar=True,
              help="Where snapshots are.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def snapshots(snapshot_dir: str, as_json: bool) -> None:
    """List the snapshot files: process, signal, records, exit status."""
    from recorder_tracer.snapshot_file import list_snapshots
    found = list_snapshots(snapshot_dir)
    if as_json:
        click.echo(json.dumps([item.as_json() for item in found], indent=1))
        return
    click.echo(f"{'PID':>7} {'COMM':<16} {'SIGNAL':<8} {'RECORDS':>7}  "
               f"{'EXIT':<28} FILE")
    for item in found:
        click.echo(f"{item.pid:>7} {item.comm:<16.16} {item.signal or '-':<8} "
                   f"{item.records:>7}  {item.exit or '-':<28.28} {item.path}")


SHOW_EPILOG = """\b
Examples:
  recorder show app.42.000001.snapshot.json          # header and records
  recorder show app.42.000001.snapshot.json --json   # the file, checked
  recorder show FILE --chrome t.trace                # Chrome trace (Perfetto)
"""


@main.command(epilog=SHOW_EPILOG)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.option("--chrome", type=click.Path(dir_okay=False),
              help="Write its records as a Chrome trace-event file.")
def show(file: str, as_json: bool, chrome: str | None) -> None:
    """Render a snapshot file: who died, how, and its last records."""
    from recorder_tracer.sinks import open_sink
    from recorder_tracer.snapshot_file import json_record, print_snapshot, read_snapshot
    snapshot = read_snapshot(file)
    if as_json:
        click.echo(json.dumps(snapshot, indent=1))
        return
    if chrome:
        records = [json_record(record) for record in snapshot["records"]]
        sink = open_sink(sys.stdout, as_json=False, chrome=chrome)
        for record in records:
            sink.write(record)
        sink.close([])
        click.echo(f"{len(records)} records written to {chrome}", err=True)
        return
    print_snapshot(snapshot, sys.stdout)


DUMP_EPILOG = """\b
Examples:
  recorder dump --shm 1234                # rings of 1234 (RECORDER_SHARE)
  recorder dump --shm /tmp/r/app.1234.recorder   # a file, also after a crash
  recorder dump --shm --share-dir /tmp/r  # list share files, live or stale
  recorder dump --shm --share-dir /tmp/r --remove-stale
"""


@main.command(epilog=DUMP_EPILOG)
@click.option("--shm", is_flag=True, required=True,
              help="Read RECORDER_SHARE files (the only source so far).")
@click.argument("target", required=False)
@click.option("--share-dir", help="The RECORDER_SHARE directory (default: the "
              "process's RECORDER_SHARE, else $RECORDER_SHARE).")
@click.option("--records", type=click.IntRange(1, 1 << 20), default=256,
              show_default=True, help="Records to print.")
@click.option("--remove-stale", is_flag=True,
              help="Remove share files no process maps any more.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
def dump(shm: bool, target: str | None, share_dir: str | None, records: int,
         remove_stale: bool, as_json: bool) -> None:
    """Print the records of a process's shared-memory rings (PID or FILE),
    also after it died; with no target, list the share files."""
    import os

    from recorder_tracer import shm as shares
    directory = share_dir or os.environ.get("RECORDER_SHARE")
    if target is None:
        if directory is None:
            raise TracerError("no share directory: give --share-dir")
        if remove_stale:
            for path in shares.remove_stale(directory):
                click.echo(f"removed {path}")
            return
        for share, live in shares.list_shares(directory):
            click.echo(f"{share.pid:>7} {share.comm:<16.16} "
                       f"{'live' if live else 'stale':<6} {share.path}")
        return
    path = target
    if target.isdigit():
        from recorder_tracer.snapshot import share_dir_of
        directory = share_dir_of(int(target)) or directory
        found = shares.share_file_of(directory, int(target)) if directory else None
        if found is None:
            raise TracerError(f"no share file of process {target} "
                              f"(in {directory or 'no directory'})")
        path = str(found)
    share = shares.open_share(path)
    from recorder_tracer.sinks import open_sink
    sink = open_sink(sys.stdout, as_json=as_json, chrome=None)
    for record in shares.share_records(share, records):
        sink.write(record)
    sink.close([])


if __name__ == "__main__":
    main()

"""The `recorder` command line: thin click commands over the library.

Each command parses, calls one library function, renders. A TracerError
becomes one line on stderr and exit status 1; bad usage exits 2 (click).
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, TextIO

import click

from recorder_tracer.errors import TracerError
from recorder_tracer.options import parse_command, require_targets, target_options
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
@target_options("Trace")
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
    require_targets(pids, comms, all_processes, command)
    argv = parse_command(command)
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


METRICS_EPILOG = """\b
Examples:
  recorder metrics -p 1234                # per topic of 1234, at Ctrl-C
  recorder metrics --all --interval 5     # every process, a table each 5 s
  recorder metrics -c ./app 'sent@1'      # run ./app; aggregate args[1] of sent
  recorder metrics --all --by topic       # each topic summed over processes
  recorder metrics -p 1234 --json         # the same figures as JSON
  recorder metrics -p 1234 --series tick:0 --csv tick.csv
                                          # args[0] of each tick record, in time
  recorder metrics -p 1234 --series tick --png tick.png --duration 10
                                          # the same, plotted
"""


@main.command(epilog=METRICS_EPILOG)
@target_options("Watch")
@click.option("--by", type=click.Choice(["topic", "pid", "comm"]),
              help="Sum rows by topic (over processes), pid or comm "
                   "(default: one row per topic and process).")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True),
              help="Print a table every this many seconds.")
@click.option("--count", type=click.IntRange(min=1),
              help="Stop after this many tables (default interval: 1 s).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Stop after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one line a table).")
@click.option("--series", metavar="TOPIC[:ARG]",
              help="Instead of aggregates, one argument (default 0) of each "
                   "record of TOPIC in time order (copies records).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="With --series: write `time_s,pid,value` rows here.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False),
              help="With --series: plot it into this PNG file.")
@click.argument("spec", nargs=-1)
def metrics(pids: tuple[int, ...], comms: tuple[str, ...], all_processes: bool,
            command: str | None, by: str | None, interval: float | None,
            count: int | None, duration: float | None, as_json: bool,
            series: str | None, csv_path: str | None, png_path: str | None,
            spec: tuple[str, ...]) -> None:
    """Aggregate in the kernel, per process and topic, without copying any
    record: count, rate, sum/min/max and a log2 histogram of one integer
    argument (args[0]; `TOPIC@N` in SPEC picks args[N], N up to 3; for span
    ends, the duration), and a log2 histogram of the time between records.
    SPEC selects topics (the core's spec syntax; none means all). Prints a
    table at the end (Ctrl-C, --duration, the end of -c or of every -p
    process), or every --interval seconds."""
    from recorder_tracer.metrics import group, metrics_options, watch
    from recorder_tracer.session import TraceSession, stop_on_signals

    require_targets(pids, comms, all_processes, command)
    argv = parse_command(command)
    if series is not None:
        _series(series, pids, comms, all_processes, argv, duration, csv_path, png_path)
        return
    if csv_path or png_path:
        raise click.UsageError("--csv and --png go with --series")
    if count is not None and interval is None:
        interval = 1.0
    options = metrics_options(pids, comms, all_processes, argv, spec, duration)

    def show(rows: list[Any]) -> None:
        if by is not None:
            rows = group(rows, by)
        if as_json:
            click.echo(json.dumps([row.as_json() for row in rows]))
            return
        from recorder_tracer.metrics_table import console, metrics_table
        # With --interval, each table says when it was read (like bcc's tools).
        title = time.strftime("%H:%M:%S") if interval else None
        console().print(metrics_table(rows, title=title))

    def report(message: str) -> None:
        click.echo(f"recorder: {message}", err=True)

    with stop_on_signals() as stopping:
        session = TraceSession(options, lambda record: None, report,
                               stopping=stopping)
        try:
            session.start()
        except BaseException:
            session.close()
            raise
        click.echo("Aggregating in the kernel... Hit Ctrl-C to end.", err=True)
        watch(session, show, interval, count)


def _series(series: str, pids: tuple[int, ...], comms: tuple[str, ...],
            all_processes: bool, argv: list[str] | None, duration: float | None,
            csv_path: str | None, png_path: str | None) -> None:
    """`recorder metrics --series`: one argument of one topic over time."""
    from recorder_tracer.series import SeriesOptions, record_series
    if not (csv_path or png_path):
        raise click.UsageError("--series needs --csv FILE or --png FILE")
    options = SeriesOptions.parse(series, csv=csv_path, png=png_path)
    points = record_series(options, pids=list(pids), comms=list(comms),
                           all_processes=all_processes, command=argv,
                           duration=duration)
    click.echo(f"{points} points of {options.topic} args[{options.arg}]", err=True)


TOP_EPILOG = """\b
Examples:
  recorder top --all                      # every process with a recorder core
  recorder top -p 1234 'net.*'            # topics net.* of 1234
  recorder top --comm server --interval 2 # refresh every 2 s
Keys: q quits; left/right choose the sort column, up/down the order.
"""


@main.command(epilog=TOP_EPILOG)
@target_options("Watch")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0,
              show_default=True, help="Seconds between refreshes.")
@click.argument("spec", nargs=-1)
def top(pids: tuple[int, ...], comms: tuple[str, ...], all_processes: bool,
        command: str | None, interval: float, spec: tuple[str, ...]) -> None:
    """A live view of the kernel's metrics (see `recorder metrics`): one
    row per topic and process, sorted by rate, with small histograms of the
    aggregated argument and of the time between records."""
    from recorder_tracer.metrics import metrics_options
    from recorder_tracer.session import TraceSession, stop_on_signals
    from recorder_tracer.top import run_top

    require_targets(pids, comms, all_processes, command)
    options = metrics_options(pids, comms, all_processes, parse_command(command), spec)
    with stop_on_signals() as stopping:
        session = TraceSession(options, lambda record: None, stopping=stopping)
        try:
            session.start()
        except BaseException:
            session.close()
            raise
        run_top(session, interval)


DAEMON_EPILOG = """\b
Examples:
  recorder daemon --all                   # every process, /metrics on 127.0.0.1:9476
  recorder daemon --config /etc/recorder/daemon.toml
                                          # setup from a file (flags override it)
  recorder daemon --comm server --listen 0.0.0.0:9476 'net.*' 'sent@1'
                                          # processes named server, topics net.*
  curl -s localhost:9476/metrics          # what Prometheus scrapes
  recorder daemon --all --forward vsock://2:7070 --trace 'net.*' \\
      --console kmsg --console /var/log/agent.log
                                          # a guest: records, metrics, snapshots
                                          # and console lines to the host's
                                          # `recorder collect`
"""


@main.command(epilog=DAEMON_EPILOG)
@target_options("Watch", command=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Read the setup from this TOML file (flags override it).")
@click.option("--listen", metavar="HOST:PORT",
              help="Serve /metrics here (default 127.0.0.1:9476).")
@click.option("--grace", type=click.FloatRange(min=0),
              help="Seconds an exited process stays exported (default 30).")
@click.option("--max-series", type=click.IntRange(min=1),
              help="Label sets exported at most (default 2000).")
@click.option("--snapshot-dir",
              help="Write crash snapshots here (default $RECORDER_SNAPSHOT_DIR, "
                   f"else {DEFAULT_SNAPSHOT_DIR}).")
@click.option("--snapshot-records", type=click.IntRange(1, 1 << 16),
              help="Records a crash snapshot keeps (default 256).")
@click.option("--no-snapshots", is_flag=True,
              help="Do not capture crash snapshots.")
@click.option("--pin-dir", metavar="DIR",
              help="bpffs directory where links, metrics tables and the "
                   "snapshot program outlive the daemon, for the next one to "
                   "take over (default $RECORDER_PIN_DIR, else "
                   "/sys/fs/bpf/recorder; '' for none).")
@click.option("--forward", metavar="URL",
              help="Send records, metrics, snapshots and console lines to a "
                   "`recorder collect` at URL: vsock://CID:PORT, "
                   "tcp://HOST:PORT, unix:PATH or a character device.")
@click.option("--trace", "trace_spec", multiple=True, metavar="SPEC",
              help="With --forward: stream the records of these topics "
                   "(repeatable; the spec syntax of `recorder trace`).")
@click.option("--console", "console", multiple=True, metavar="PATH|kmsg",
              help="With --forward: follow this file or FIFO, or the kernel "
                   "log (kmsg), line by line (repeatable).")
@click.option("--backlog", "backlog_mb", type=click.FloatRange(min=0.0625),
              default=32, show_default=True,
              help="With --forward: MiB kept while the collector is away "
                   "(the oldest go first, counted).")
@click.option("--forward-interval", type=click.FloatRange(min=0.01),
              default=1.0, show_default=True,
              help="With --forward: seconds between metrics and snapshot sends.")
@click.argument("spec", nargs=-1)
def daemon(pids: tuple[int, ...], comms: tuple[str, ...], all_processes: bool,
           config_path: str | None, listen: str | None, grace: float | None,
           max_series: int | None, snapshot_dir: str | None,
           snapshot_records: int | None, no_snapshots: bool, pin_dir: str | None,
           forward: str | None, trace_spec: tuple[str, ...],
           console: tuple[str, ...], backlog_mb: float, forward_interval: float,
           spec: tuple[str, ...]) -> None:
    """Keep arming processes and aggregating their topics in the kernel
    (metrics only: no record is copied), and serve the figures on
    http://HOST:PORT/metrics in the Prometheus exposition format:
    recorder_records_total{topic,comm,pid}, histograms of the aggregated
    argument, span durations and intervals between records, and the
    tracer's own counters. Meanwhile, a process with a recorder core that
    dies by a fatal signal leaves a crash snapshot (see `recorder
    snapshots`), and with a pin directory what the daemon armed and counted
    outlives it for the next daemon. Runs until SIGINT or SIGTERM."""
    from dataclasses import replace

    from recorder_tracer.daemon import Daemon, DaemonConfig
    from recorder_tracer.session import stop_on_signals

    config = DaemonConfig.load(config_path) if config_path else DaemonConfig()
    config = config.merged(pid=pids, comm=comms, all=all_processes, spec=spec,
                           listen=listen, grace=grace, max_series=max_series,
                           snapshot_dir=snapshot_dir,
                           snapshot_records=snapshot_records)
    if pin_dir is not None:
        config = replace(config, pin_dir=pin_dir)
    if no_snapshots:
        config = replace(config, snapshots=False)

    def report(message: str) -> None:
        click.echo(f"recorder: {message}", err=True)

    if (trace_spec or console) and not forward:
        raise click.UsageError("--trace and --console go with --forward")
    with stop_on_signals() as stopping:
        server = Daemon(config, report, stopping)
        server.start()
        channel = None
        try:
            if forward:
                from recorder_tracer.channel.guest import ForwardOptions, GuestChannel
                channel = GuestChannel(server, ForwardOptions(
                    forward, list(trace_spec), list(console),
                    int(backlog_mb * (1 << 20)), forward_interval), report)
                channel.start()
            click.echo(f"Serving metrics on http://{config.listen}/metrics"
                       f"{f', forwarding to {forward}' if forward else ''}... "
                       "Hit Ctrl-C to end.", err=True)
            server.run()
        finally:
            if channel is not None:
                channel.close()
            server.close()


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


def _add_channel_commands() -> None:
    from recorder_tracer.channel.command import collect
    main.add_command(collect)


_add_channel_commands()


if __name__ == "__main__":
    main()

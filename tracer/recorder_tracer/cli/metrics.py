"""`recorder metrics`, `top` and `daemon`: what the kernel aggregates."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from recorder_tracer.cli.options import (
    check_spec_matched,
    parse_command,
    report,
    require_root,
    require_targets,
    target_options,
)
from recorder_tracer.postmortem.snapshot_file import (
    DEFAULT_DIRECTORY as DEFAULT_SNAPSHOT_DIR,
)

METRICS_EPILOG = """\b
Examples:
  recorder metrics -p 1234                # per topic of 1234, at Ctrl-C
  recorder metrics --all -i 5             # every process, a table each 5 s
  recorder metrics -c ./app 'sent@1'      # run ./app; aggregate args[1] of sent
  recorder metrics --all --by topic       # each topic summed over processes
  recorder metrics -p 1234 --json         # the same figures as JSON
  recorder metrics -p 1234 --series tick:0 --csv tick.csv
                                          # args[0] of each tick record, in time
  recorder metrics -p 1234 --series tick --png tick.png -d 10
                                          # the same, plotted
"""


@click.command(epilog=METRICS_EPILOG)
@target_options("Watch")
@click.option("--by", type=click.Choice(["topic", "pid", "comm"]),
              help="Sum rows by topic (over processes), pid or comm "
                   "(default: one row per topic and process).")
@click.option("-i", "--interval", type=click.FloatRange(min=0, min_open=True),
              help="Print a table every this many seconds.")
@click.option("--count", type=click.IntRange(min=1),
              help="Stop after this many tables (default interval: 1 s).")
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True),
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
    from recorder_tracer.metrics.aggregates import group, metrics_options, watch
    from recorder_tracer.session.loop import TraceSession, stop_on_signals

    require_root("metrics")
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
        from recorder_tracer.metrics.table import console, metrics_table
        # With --interval, each table says when it was read (like bcc's tools).
        title = time.strftime("%H:%M:%S") if interval else None
        console().print(metrics_table(rows, title=title))

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
    check_spec_matched(session)


def _series(series: str, pids: tuple[int, ...], comms: tuple[str, ...],
            all_processes: bool, argv: list[str] | None, duration: float | None,
            csv_path: str | None, png_path: str | None) -> None:
    """`recorder metrics --series`: one argument of one topic over time."""
    from recorder_tracer.metrics.series import SeriesOptions, record_series
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
  recorder top --comm server -i 2         # refresh every 2 s
  recorder top --all | cat                # no terminal: a plain table each second
Keys: q quits; left/right choose the sort column, up/down the order.
"""


@click.command(epilog=TOP_EPILOG)
@target_options("Watch")
@click.option("-i", "--interval", type=click.FloatRange(min=0.1), default=1.0,
              show_default=True, help="Seconds between refreshes.")
@click.argument("spec", nargs=-1)
def top(pids: tuple[int, ...], comms: tuple[str, ...], all_processes: bool,
        command: str | None, interval: float, spec: tuple[str, ...]) -> None:
    """A live view of the kernel's metrics (see `recorder metrics`): one
    row per topic and process, sorted by rate, with small histograms of the
    aggregated argument and of the time between records."""
    from recorder_tracer.metrics.aggregates import metrics_options
    from recorder_tracer.metrics.top import run_top
    from recorder_tracer.session.loop import TraceSession, stop_on_signals

    require_root("top")
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
  recorder daemon --all --by comm         # series per topic and comm, not pid
  curl -s localhost:9476/metrics          # what Prometheus scrapes
  recorder daemon --all --forward vsock://2:7070 --trace 'net.*' \\
      --console kmsg --console /var/log/agent.log
                                          # a guest: records, metrics, snapshots
                                          # and console lines to the host's
                                          # `recorder collect`
"""


@click.command(epilog=DAEMON_EPILOG)
@target_options("Watch", command=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Read the setup from this TOML file (flags override it).")
@click.option("--listen", metavar="HOST:PORT",
              help="Serve /metrics here (default 127.0.0.1:9476).")
@click.option("--grace", type=click.FloatRange(min=0),
              help="Seconds an exited process stays exported (default 30).")
@click.option("--max-series", type=click.IntRange(min=1),
              help="Label sets exported at most (default 2000).")
@click.option("--by", type=click.Choice(["pid", "comm", "topic"]),
              help="Label sets: topic, comm, pid (pid, the default); topic, "
                   "comm (comm: summed over the processes of a name); topic.")
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
              help="With --forward: MiB kept while the collector is away "
                   "(the oldest go first, counted; default 32).")
@click.option("--forward-interval", type=click.FloatRange(min=0.01),
              help="With --forward: seconds between metrics and snapshot sends "
                   "(default 1).")
@click.argument("spec", nargs=-1)
def daemon(pids: tuple[int, ...], comms: tuple[str, ...], all_processes: bool,
           config_path: str | None, listen: str | None, grace: float | None,
           max_series: int | None, by: str | None, snapshot_dir: str | None,
           snapshot_records: int | None, no_snapshots: bool, pin_dir: str | None,
           forward: str | None, trace_spec: tuple[str, ...],
           console: tuple[str, ...], backlog_mb: float | None,
           forward_interval: float | None, spec: tuple[str, ...]) -> None:
    """Keep arming processes and aggregating their topics in the kernel
    (metrics only: no record is copied), and serve the figures on
    http://HOST:PORT/metrics in the Prometheus exposition format:
    recorder_records_total{topic,comm,pid} (--by chooses the labels),
    recorder_build_info, histograms of the aggregated
    argument, span durations and intervals between records, and the
    tracer's own counters. Meanwhile, a process with a recorder core that
    dies by a fatal signal leaves a crash snapshot (see `recorder
    snapshots`), and with a pin directory what the daemon armed and counted
    outlives it for the next daemon. Runs until SIGINT or SIGTERM."""
    from dataclasses import replace

    from recorder_tracer.session.daemon import Daemon, DaemonConfig
    from recorder_tracer.session.loop import stop_on_signals

    require_root("daemon")
    config = DaemonConfig.load(config_path) if config_path else DaemonConfig()
    config = config.merged(pid=pids, comm=comms, all=all_processes, spec=spec,
                           listen=listen, grace=grace, max_series=max_series, by=by,
                           snapshot_dir=snapshot_dir,
                           snapshot_records=snapshot_records, forward=forward,
                           trace=trace_spec, console=console,
                           backlog_mb=backlog_mb,
                           forward_interval=forward_interval)
    if pin_dir is not None:
        config = replace(config, pin_dir=pin_dir)
    if no_snapshots:
        config = replace(config, snapshots=False)

    if (config.trace or config.console) and not config.forward:
        raise click.UsageError("--trace and --console go with --forward")
    if config.backlog_mb < 0.0625 or config.forward_interval < 0.01:
        raise click.UsageError("backlog_mb must be >= 0.0625 and "
                               "forward_interval >= 0.01")
    started = time.time()
    with stop_on_signals() as stopping:
        server = Daemon(config, report, stopping)
        server.start()
        channel = None
        if config.forward:
            from recorder_tracer.channel.guest.sources import (
                ForwardOptions,
                GuestChannel,
            )
            try:
                channel = GuestChannel(server, ForwardOptions(
                    config.forward, list(config.trace), list(config.console),
                    int(config.backlog_mb * (1 << 20)), config.forward_interval,
                    started), report)
                channel.start()
            except BaseException:
                server.close()
                raise
        try:
            forwarding = (f", forwarding to {config.forward}" if config.forward
                          else "")
            click.echo(f"Serving metrics on http://{config.listen}/metrics"
                       f"{forwarding}... Hit Ctrl-C to end.", err=True)
            server.run()
        finally:
            if channel is not None:
                channel.close()

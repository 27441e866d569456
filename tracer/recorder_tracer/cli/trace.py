"""`recorder trace`: stream records of recorder topics and USDT probes."""

from __future__ import annotations

import math
import os
from typing import Any, TextIO

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
from recorder_tracer.terminal import escape_controls

TRACE_EPILOG = """\b
Examples:
  recorder trace -p 1234                  # every topic of process 1234
  recorder trace -p 1234 'net.*'          # topics matching net.* (regex)
  recorder trace --all 'all:/debug'       # all processes, all but `debug`
  recorder trace --comm server tick       # processes named server, now and later
  recorder trace -c './app --fast'        # start ./app, trace from its first record
  recorder trace -p 1234 --no-children    # 1234 alone, not what it forks
  recorder trace --cgroup system.slice/app.service
                                          # every process of a cgroup, now and later
  recorder trace -p 1234 --json -o t.json # JSON lines
  recorder trace -p 1234 --chrome t.trace # Chrome trace (open in Perfetto)
  recorder trace -p 1234 -d 5            # stop after 5 seconds
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


@click.command(epilog=TRACE_EPILOG)
@target_options("Trace")
@click.option("--cgroup", "cgroups", multiple=True, metavar="PATH",
              help="Trace every process of this cgroup (v2; under "
                   "/sys/fs/cgroup or absolute), now and later.")
@click.option("--no-children", is_flag=True,
              help="Trace the -p processes alone, not what they fork or exec.")
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True),
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
@click.option("-w", "--write", "capture", type=click.Path(dir_okay=False),
              help="Write a compact binary capture instead of printing records "
                   "(`recorder show FILE` renders it): nothing is decoded while "
                   "tracing.")
@click.option("--batch/--latency", "batch", default=False,
              help="--batch: take records in batches from the processes' own "
                   "rings (no trap: free to the traced program, records within "
                   "a few ms; -w implies it). --latency (the default for now): "
                   "trap at every record (uprobes), each record at once, at "
                   "~0.5 us a record to the traced process.")
@click.argument("spec", nargs=-1)
def trace(pids: tuple[int, ...], comms: tuple[str, ...], all_processes: bool,
          command: str | None, cgroups: tuple[str, ...], no_children: bool,
          duration: float | None, as_json: bool,
          chrome: str | None, output: TextIO, usdt: tuple[str, ...],
          flight_entries: int, ring_pages: int, snapshot_dir: str,
          snapshot_records: int, no_snapshots: bool, capture: str | None,
          batch: bool, spec: tuple[str, ...]) -> None:
    """Arm the topics SPEC selects (the core's spec syntax: `[-|/]regex[=v]`
    items separated by ':' or spaces; none means all) and print records as
    they come, in timestamp order across processes and CPUs. A traced
    process that exits is reported on stderr; with only -p, the trace ends
    with the last one. On exit (Ctrl-C, SIGTERM, --duration, the end of -c),
    print per CPU the records received and lost.

    By default every armed record traps (--latency: each arrives at once,
    at ~0.5 us a record to the program). With --batch (or -w), records come
    in batches from the processes' own rings instead (a thread's are copied
    when it leaves its CPU, every 1 ms while it runs, at its exit or fatal
    signal): the traced program pays no trap per record, and records
    overwritten in a ring before they were copied are counted lost, per
    process and topic.

    With --usdt, trace those USDT probes as well and print their arguments
    (TOPIC is the probe, WHERE its file); a pointer-sized argument shows the
    string it points to when it points to text. Without SPEC, --usdt traces
    only its probes; with one (`all` for every topic), both, merged in
    timestamp order.

    While it runs, a process with a recorder core that dies by a fatal
    signal (SEGV, BUS, ILL, FPE, ABRT, TRAP, SYS, KILL) leaves a snapshot of
    its last records in --snapshot-dir (see `recorder snapshots`), armed or
    not.

    Exit status: 0; 1 on an error, or if an item of SPEC matched no topic
    of the traced processes by the end (a mistyped topic); 2 on bad usage."""
    from recorder_tracer.decode.spec import TopicSpec
    from recorder_tracer.output.sinks import line_plans_for, open_sink
    from recorder_tracer.output.text import TextPrinter
    from recorder_tracer.output.writer import Summary
    from recorder_tracer.postmortem.snapshot import SnapshotOptions
    from recorder_tracer.session.loop import TraceOptions, TraceSession, stop_on_signals

    require_root("trace")
    if as_json and chrome:
        raise click.UsageError("--json and --chrome are exclusive")
    if capture and (as_json or chrome or usdt):
        raise click.UsageError("-w takes recorder topics in batches only: not with "
                               "--json, --chrome or --usdt")
    batch = batch or bool(capture)
    if ring_pages & (ring_pages - 1):
        raise click.UsageError(f"--ring-pages {ring_pages} is not a power of two")
    if not cgroups:
        require_targets(pids, comms, all_processes, command)
    for cgroup in cgroups:      # before the slow part: a typo fails at once
        from recorder_tracer.kernel.coverage import cgroup_fd
        os.close(cgroup_fd(cgroup))
    argv = parse_command(command)
    if duration is not None and not math.isfinite(duration):
        raise click.UsageError(f"--duration {duration} is not a number of seconds")
    selectors: list[Any] = []
    if usdt:
        from recorder_tracer.session.usdt import UsdtSelector
        selectors = [UsdtSelector.parse(text) for text in usdt]
    options = TraceOptions(
        pids=list(pids), comms=list(comms), all_processes=all_processes,
        command=argv, spec=TopicSpec.parse(*spec), duration=duration,
        children=not no_children, cgroups=list(cgroups),
        usdt=selectors, topics=bool(spec) or not usdt,
        flight_entries=flight_entries, pages_per_cpu=ring_pages,
        snapshots=None if no_snapshots else SnapshotOptions(snapshot_dir,
                                                            snapshot_records),
        latency=not batch, capture=capture,
    )

    # From here on, SIGINT and SIGTERM only ask the session to stop: it
    # then detaches, drains and prints the summary, even mid-start.
    with stop_on_signals() as stopping:
        sink = open_sink(output, as_json=as_json, chrome=chrome)
        # Batch mode renders by plans.
        session = TraceSession(options, sink.write, report, stopping=stopping,
                               lines=line_plans_for(sink))
        try:
            session.start()
        except BaseException:
            session.close()     # detach what was armed; the error is the output
            raise
        if isinstance(sink, TextPrinter):
            sink.fit_topics(session.topic_names())
        try:
            click.echo(f"Tracing {_what(session)}... Hit Ctrl-C to end. "
                       f"{_anchor()}", err=True)
            session.run(start=False)
        finally:
            losses = session.topic_losses()
            summaries = Summary(session.summaries(), [
                {"pid": pid, "topic": topic, "produced": loss.produced,
                 "streamed": loss.streamed, "overwritten": loss.overwritten,
                 "refused": loss.refused}
                for (pid, topic), loss in sorted(losses.items())] if losses else None,
                kernel_skipped=session.kernel_skipped())
            sink.close(summaries)
            for cpu in summaries:
                click.echo(f"CPU {cpu.cpu}: {cpu.received} received, {cpu.lost} "
                           f"lost ({cpu.produced} produced)", err=True)
            if summaries.kernel_skipped:
                click.echo(f"{summaries.kernel_skipped} BPF program runs skipped "
                           "by the kernel (the program was already running on "
                           "that CPU): with the per-record trap, records not "
                           "harvested, outside the counts above", err=True)
            for (pid, topic), loss in sorted(losses.items()):
                if loss.lost:
                    click.echo(f"pid {pid} {escape_controls(topic)}: {loss.lost} "
                               f"of {loss.produced} "
                               "lost (overwritten in its ring before a harvest, "
                               "or refused at its end)", err=True)
            if session.reorder.late:
                click.echo(f"{session.reorder.late} records came after newer ones "
                           "had left, so out of timestamp order (stamped longer "
                           "before their commit than the reordering margin: a "
                           "thread preempted in between); the margin grew to "
                           f"{session.reorder.margin_ns // 1_000_000} ms", err=True)
            unfinished = getattr(session.recorder, "unfinished_walks", 0)
            if unfinished:
                click.echo(f"{unfinished} harvests at a process's end ran out of "
                           "steps before its last shard: what those shards held "
                           "is outside the counts above", err=True)
            capped = getattr(session.recorder, "capped_processes", 0)
            if capped:
                from recorder_tracer.kernel.batch import TOPICS_MAX
                click.echo(f"more topics armed than --batch harvests ({TOPICS_MAX} "
                           f"a process) in {capped} process(es): the others were "
                           "not traced (--latency traps every one)", err=True)
            if session.unknown_sites:
                click.echo(f"{session.unknown_sites} hits came before their site "
                           "was known: their arguments are lost", err=True)
            coverage = session.coverage
            if coverage is not None and (coverage.backfilled or coverage.copied
                                         or coverage.overwritten):
                # Delivered first this way; their live twins, if any, were
                # dropped (the CPU lines count what the stream received).
                click.echo(f"from processes' own rings: {coverage.backfilled} "
                           f"records read when armed, {coverage.copied} copied "
                           f"at their end; {coverage.overwritten} overwritten "
                           "before the copy", err=True)
    check_spec_matched(session)


def _anchor() -> str:
    """Where record times (CLOCK_MONOTONIC) stand against the wall clock."""
    import time
    monotonic = time.clock_gettime(time.CLOCK_MONOTONIC)
    wall = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
    return (f"(monotonic {monotonic:.6f} s = {stamp}.{int(wall % 1 * 1e6):06d}Z)")


def _what(session: Any) -> str:
    """What the banner says is traced."""
    parts = []
    if session.options.topics:
        parts.append("recorder topics")
    if session.usdt is not None:
        parts.append(f"{session.usdt.site_count} USDT probe sites in "
                     f"{len(session.usdt.processes)} processes")
    return " and ".join(parts)

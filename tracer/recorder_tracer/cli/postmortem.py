"""`recorder snapshot`, `snapshots`, `show` and `dump`: records after the fact."""

from __future__ import annotations

import json
import sys

import click

from recorder_tracer.errors import TracerError
from recorder_tracer.postmortem.snapshot_file import (
    DEFAULT_DIRECTORY as DEFAULT_SNAPSHOT_DIR,
)
from recorder_tracer.terminal import printable

SNAPSHOT_EPILOG = f"""\b
Examples:
  recorder snapshot 1234                  # last 256 records of 1234, to a file
  recorder snapshot 1234 --records 23     # its last 23
  recorder snapshot 1234 --snapshot-dir . # the file in the current directory
  (default directory: {DEFAULT_SNAPSHOT_DIR})
"""


@click.command(epilog=SNAPSHOT_EPILOG)
@click.argument("pid", type=int)
@click.option("--snapshot-dir", default=DEFAULT_SNAPSHOT_DIR, show_default=True,
              envvar="RECORDER_SNAPSHOT_DIR", show_envvar=True,
              help="Write the snapshot here.")
@click.option("--records", type=click.IntRange(1, 1 << 16), default=256,
              show_default=True, help="Records to keep.")
def snapshot(pid: int, snapshot_dir: str, records: int) -> None:
    """Write a snapshot of live process PID's last records, read from its
    memory without stopping or signalling it; print the file's path."""
    from recorder_tracer.cli.options import require_root
    from recorder_tracer.postmortem.build import SnapshotOptions, take_snapshot
    require_root("snapshot")
    click.echo(take_snapshot(pid, SnapshotOptions(snapshot_dir, records)))


SNAPSHOTS_EPILOG = """\b
Examples:
  recorder snapshots                      # the snapshots, oldest first
  recorder snapshots --json               # the same, as JSON
  recorder snapshots --snapshot-dir /tmp/s
"""


@click.command(epilog=SNAPSHOTS_EPILOG)
@click.option("--snapshot-dir", default=DEFAULT_SNAPSHOT_DIR, show_default=True,
              envvar="RECORDER_SNAPSHOT_DIR", show_envvar=True,
              help="Where snapshots are.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def snapshots(snapshot_dir: str, as_json: bool) -> None:
    """List the snapshot files: process, signal, records, exit status."""
    from recorder_tracer.postmortem.snapshot_file import list_snapshots
    found = list_snapshots(snapshot_dir)
    if as_json:
        click.echo(json.dumps([item.as_json() for item in found], indent=1))
        return
    click.echo(f"{'PID':>7} {'COMM':<16} {'SIGNAL':<8} {'RECORDS':>7}  "
               f"{'EXIT':<28} FILE")
    # A process chose its name; a crafted file, every field but the path.
    for item in found:
        click.echo(f"{item.pid:>7} {printable(item.comm):<16.16} "
                   f"{printable(item.signal):<8} {item.records:>7}  "
                   f"{printable(item.exit):<28.28} {printable(item.path)}")


SHOW_EPILOG = """\b
Examples:
  recorder show app.42.000001.snapshot.json          # header and records
  recorder show app.42.000001.snapshot.json --json   # the file, checked
  recorder show FILE --chrome t.trace                # Chrome trace (Perfetto)
  recorder show t.cap                # a `recorder trace -w t.cap` capture
  recorder show t.cap --json         # its records as JSON lines
"""


@click.command(epilog=SHOW_EPILOG)
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.option("--chrome", type=click.Path(dir_okay=False),
              help="Write its records as a Chrome trace-event file.")
def show(file: str, as_json: bool, chrome: str | None) -> None:
    """Render a snapshot file (who died, how, and its last records), or a
    capture written by `recorder trace -w` (its records in time order)."""
    from recorder_tracer.output.capture import is_capture
    from recorder_tracer.output.sinks import open_sink
    from recorder_tracer.postmortem.snapshot_file import (
        json_record,
        print_snapshot,
        read_snapshot,
    )
    if is_capture(file):
        _show_capture(file, as_json, chrome)
        return
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


def _show_capture(file: str, as_json: bool, chrome: str | None) -> None:
    """Render a `recorder trace -w` capture like `recorder trace` prints."""
    from recorder_tracer.output.capture import read_capture
    from recorder_tracer.output.sinks import open_sink
    from recorder_tracer.output.text import TextPrinter
    records = list(read_capture(file))
    sink = open_sink(sys.stdout, as_json=as_json, chrome=chrome)
    if isinstance(sink, TextPrinter):
        sink.fit_topics({record.topic for record in records})
    for record in records:
        sink.write(record)
    sink.close([])
    if chrome:
        click.echo(f"{len(records)} records written to {chrome}", err=True)


DUMP_EPILOG = """\b
Examples:
  recorder dump --shm 1234                # rings of 1234 (RECORDER_SHARE)
  recorder dump --shm /tmp/r/app.1234.recorder   # a file, also after a crash
  recorder dump --shm --share-dir /tmp/r  # list share files, live or stale
  recorder dump --shm --share-dir /tmp/r --remove-stale
"""


@click.command(epilog=DUMP_EPILOG)
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

    from recorder_tracer.target import shm as shares
    directory = share_dir or os.environ.get("RECORDER_SHARE")
    if target is None:
        if directory is None:
            raise TracerError("no share directory: give --share-dir")
        if remove_stale:
            for path in shares.remove_stale(directory):
                click.echo(f"removed {printable(path)}")
            return
        for share, live in shares.list_shares(directory):
            click.echo(f"{share.pid:>7} {printable(share.comm):<16.16} "
                       f"{'live' if live else 'stale':<6} {printable(share.path)}")
        return
    path = target
    if target.isdigit():
        from recorder_tracer.postmortem.build import share_dir_of
        directory = share_dir_of(int(target)) or directory
        found = shares.share_file_of(directory, int(target)) if directory else None
        if found is None:
            raise TracerError(f"no share file of process {target} "
                              f"(in {directory or 'no directory'})")
        path = str(found)
    share = shares.open_share(path)
    from recorder_tracer.output.sinks import open_sink
    sink = open_sink(sys.stdout, as_json=as_json, chrome=None)
    for record in shares.share_records(share, records):
        sink.write(record)
    sink.close([])

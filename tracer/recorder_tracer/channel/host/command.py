"""`recorder collect`: the click command over channel/host/collector.py."""

from __future__ import annotations

import signal
import sys
import threading

import click

from recorder_tracer.errors import TracerError
from recorder_tracer.terminal import escape_controls

COLLECT_EPILOG = """\b
Examples:
  recorder collect --listen vsock://2:7070 --out /var/lib/recorder/guests
                                          # Kata guests dial the host's CID 2
  recorder collect --listen tcp://0.0.0.0:7070 --listen unix:/run/r.sock \\
      --out guests --metrics-listen 127.0.0.1:9477
                                          # two transports, one /metrics
  recorder collect --out guests --chrome all.trace
                                          # merge every guest into one trace
"""


@click.command(epilog=COLLECT_EPILOG)
@click.option("--listen", "urls", multiple=True, metavar="URL",
              help="Accept guests here (repeatable): tcp://HOST:PORT, "
                   "unix:PATH, vsock://CID:PORT, or a character device.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Write each guest's folder under this directory.")
@click.option("--metrics-listen", metavar="HOST:PORT",
              help="Serve every guest's metrics on http://HOST:PORT/metrics, "
                   "labelled by guest.")
@click.option("--chrome", type=click.Path(dir_okay=False),
              help="Merge every guest under --out into this Chrome trace "
                   "(Perfetto): at once without --listen, else at the end.")
def collect(urls: tuple[str, ...], out: str, metrics_listen: str | None,
            chrome: str | None) -> None:
    """Receive what guests' daemons forward (`recorder daemon --forward`):
    records, metrics, crash snapshots and console lines, each guest into
    its own folder under --out, with every time also on this machine's
    clock (and the bound of that estimate in the guest's guest.json).
    Runs until SIGINT or SIGTERM."""
    if not urls:
        if not chrome:
            raise click.UsageError("give --listen URL (to collect) or --chrome "
                                   "FILE (to merge what was collected)")
        _merge(out, chrome)
        return
    from recorder_tracer.channel.host.collector import Collector

    def report(message: str) -> None:
        click.echo(escape_controls(message), err=True)     # a guest's names

    stopping = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stopping.set())
    collector = Collector(list(urls), out, report)
    server = None
    try:
        if metrics_listen:
            server = _serve_metrics(collector, metrics_listen)
        collector.start()
        where = ", ".join(listener.url() for listener in collector.listeners)
        click.echo(f"Collecting on {where} into {out}... Hit Ctrl-C to end.",
                   err=True)
        while not stopping.wait(1.0):
            pass
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        collector.close()
    if chrome:
        _merge(out, chrome)


def _serve_metrics(collector: object, listen: str) -> object:
    from prometheus_client import CollectorRegistry, start_http_server

    from recorder_tracer.channel.host.metrics import GuestMetrics
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TracerError(f"--metrics-listen {listen!r}: expected HOST:PORT")
    registry = CollectorRegistry()
    registry.register(GuestMetrics(lambda: list(collector.guests.values())))  # type: ignore[attr-defined]
    try:
        server, _ = start_http_server(int(port), host.strip("[]"), registry)
    except OSError as error:
        raise TracerError(f"cannot listen on {listen}: {error.strerror}") from None
    return server


def _merge(out: str, chrome: str) -> None:
    from recorder_tracer.channel.host.merge import merge_chrome
    try:
        with open(chrome, "w") as stream:
            events = merge_chrome(out, stream)
    except OSError as error:
        raise TracerError(f"cannot write {chrome}: {error.strerror}") from None
    click.echo(f"{events} events of {out} written to {chrome}", file=sys.stderr)

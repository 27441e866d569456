"""`recorder daemon --forward URL`: what the daemon sends to the collector.

Beside the daemon's own session (metrics in the kernel, crash snapshots),
a GuestChannel runs:

- with `--trace SPEC`, a streaming TraceSession over the same processes,
  whose records (as `recorder trace` streams them) go to the forwarder;
- every `interval` seconds, the daemon's metrics (the exposition text its
  /metrics serves) and any snapshot file new or rewritten in its snapshot
  directory since the last look;
- one follower per `--console` source (a path, or `kmsg`).

All of it goes through one Forwarder (one connection, one backlog).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder_tracer.channel.guest.backlog import DEFAULT_LIMIT
from recorder_tracer.channel.guest.console import FileFollower, KmsgFollower
from recorder_tracer.channel.guest.forwarder import Forwarder
from recorder_tracer.errors import TracerError

MAX_SNAPSHOT = 12 << 20     # bytes of a snapshot file sent (the frame's bound)
STATE_DIR = Path("/run/recorder")


def state_path(url: str, pin_dir: str) -> Path:
    """Where a daemon forwarding to `url` (with `pin_dir`) says how far it
    got, for the next one to report what it lost (tmpfs: one boot)."""
    name = hashlib.sha1(f"{url}\0{os.path.abspath(pin_dir or '-')}".encode())
    return STATE_DIR / f"forward-{name.hexdigest()[:16]}.json"


@dataclass(frozen=True)
class ForwardOptions:
    """`recorder daemon --forward` and its companions."""

    url: str
    trace: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    backlog_bytes: int = DEFAULT_LIMIT
    interval: float = 1.0
    # Snapshot files older than this (time.time()) were there before this
    # daemon: not sent. Those it writes as it starts (a crash while no
    # daemon ran, captured by the pinned program) are newer: sent.
    since: float = field(default_factory=time.time)


class GuestChannel:
    """The forwarder and its sources, started beside a running Daemon."""

    def __init__(self, daemon: Any, options: ForwardOptions,
                 report: Any = lambda message: None) -> None:
        if options.interval <= 0:
            raise TracerError("the forward interval must be positive")
        self.daemon = daemon
        self.options = options
        self.report = report
        self.forwarder = Forwarder(options.url, options.backlog_bytes, report,
                                   state_path=state_path(options.url,
                                                         daemon.config.pin_dir))
        self.followers: list[Any] = []
        for source in options.console:
            if source == "kmsg":
                try:
                    follower: Any = KmsgFollower(self.forwarder.add_console)
                except OSError as error:
                    raise TracerError(f"cannot read /dev/kmsg: {error.strerror}"
                                      ) from None
            else:
                follower = FileFollower(source, self.forwarder.add_console)
            self.followers.append(follower)
        self.trace_session: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._snapshots_seen: dict[str, tuple[int, int, int]] = {}
        self._registry: Any = None

    def start(self) -> None:
        from prometheus_client import CollectorRegistry

        from recorder_tracer.output.prometheus import RecorderCollector
        self._registry = CollectorRegistry()
        self._registry.register(RecorderCollector(self.daemon.snapshot,
                                                  self.daemon.config.by))
        self._snapshots_seen = {name: key for name, key in self._snapshot_files()
                                if key[1] < self.options.since * 1e9}
        if self.options.trace:
            self._start_trace()
        self.forwarder.start()
        for follower in self.followers:
            follower.start()
        for target in (self._periodic,) + ((self._trace_loop,)
                                           if self.trace_session else ()):
            thread = threading.Thread(target=target, daemon=True,
                                      name=f"guest {target.__name__}")
            thread.start()
            self._threads.append(thread)

    def _start_trace(self) -> None:
        from recorder_tracer.decode.spec import TopicSpec
        from recorder_tracer.session.loop import TraceOptions, TraceSession
        config = self.daemon.config
        options = TraceOptions(pids=list(config.pid), comms=list(config.comm),
                               all_processes=config.all,
                               spec=TopicSpec.parse(*self.options.trace))
        self.trace_session = TraceSession(options, self.forwarder.add_record,
                                          self.report, stopping=self._stop)
        try:
            self.trace_session.start()
        except BaseException:
            self.trace_session.close()
            raise

    def _trace_loop(self) -> None:
        while self.trace_session.poll(timeout_ms=50):
            pass

    def _periodic(self) -> None:
        while not self._stop.wait(self.options.interval):
            self.send_metrics()
            self.send_snapshots()

    def send_metrics(self) -> None:
        from prometheus_client import generate_latest
        self.forwarder.add_metrics(generate_latest(self._registry))

    def _snapshot_files(self) -> list[tuple[str, tuple[int, int, int]]]:
        directory = self.daemon.config.snapshot_dir
        found = []
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return []
        for entry in entries:
            if not entry.name.endswith(".snapshot.json"):
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                found.append((entry.name, (info.st_ino, info.st_mtime_ns,
                                           info.st_size)))
        return found

    def send_snapshots(self) -> None:
        """Send the snapshot files written or rewritten since the last look."""
        directory = Path(self.daemon.config.snapshot_dir)
        for name, key in self._snapshot_files():
            if self._snapshots_seen.get(name) == key:
                continue
            self._snapshots_seen[name] = key
            if key[2] > MAX_SNAPSHOT:
                self.report(f"forward: snapshot {name} is over {MAX_SNAPSHOT} "
                            "bytes: not sent")
                continue
            try:
                fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW
                             | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as file:
                    content = file.read(MAX_SNAPSHOT + 1)
            except OSError:
                continue
            self.forwarder.add_snapshot(name, content[:MAX_SNAPSHOT])

    def close(self) -> None:
        """Stop the sources, send what is left (briefly), disconnect."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.trace_session is not None:
            self.trace_session.close()
        for follower in self.followers:
            follower.stop()
        with contextlib.suppress(Exception):
            self.send_metrics()
            self.send_snapshots()
        self.forwarder.close()

"""`recorder daemon`: keep arming and aggregating, serve /metrics.

A thin loop over a metrics-only TraceSession (it arms and follows processes,
the kernel aggregates): every scrape reads the kernel's tables afresh
(output/prometheus.py). Processes that exit stay exported for
`grace` seconds, then their label sets and kernel slots are dropped; at
most `max_series` label sets are exported (the busiest), the rest counted.

Setup comes from a TOML file and flags (flags win):

    listen = "127.0.0.1:9476"
    all = true                  # every process with a recorder core
    comm = ["server"]           # and/or processes by name
    pid = [1234]                # and/or these
    spec = ["all", "sent@1"]    # topics (and arguments) to aggregate
    grace = 30.0                # seconds an exited process stays exported
    max_series = 2000           # label sets exported at most
    by = "pid"                  # labels: topic, comm, pid; "comm": topic,
                                # comm (no new series as processes restart);
                                # "topic": topic alone
    snapshots = true            # crash snapshots of every process with a core
    snapshot_dir = "/var/lib/recorder/snapshots"
    snapshot_records = 256      # records a crash snapshot keeps
    pin_dir = "/sys/fs/bpf/recorder"    # "" : nothing outlives the daemon
    forward = "vsock://2:7070"  # send everything to a `recorder collect`
    trace = ["net.*"]           # with forward: records of these topics
    console = ["kmsg", "/var/log/agent.log"]    # with forward: console lines
    backlog_mb = 32.0           # with forward: kept while the host is away
    forward_interval = 1.0      # with forward: seconds between metrics sends

With a pin directory (kernel/pins.py) the daemon's links, metrics tables
and snapshot program stay in the kernel when it dies (kill -9, OOM): armed
processes keep counting, a process that crashes meanwhile is still captured,
and the next daemon takes all of it over. One daemon per pin directory (a
lock file under /run/recorder says which).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.pins import DEFAULT_PIN_DIR
from recorder_tracer.metrics.aggregates import MetricsReader, metrics_options
from recorder_tracer.output.prometheus import LABEL_SETS, RecorderCollector, Snapshot
from recorder_tracer.postmortem.snapshot_file import (
    DEFAULT_DIRECTORY as DEFAULT_SNAPSHOT_DIR,
)
from recorder_tracer.selftrace import SESSION

DEFAULT_LISTEN = "127.0.0.1:9476"
LOCK_DIR = Path("/run/recorder")


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon's setup; see the module's docstring."""

    listen: str = DEFAULT_LISTEN
    all: bool = False
    comm: list[str] = field(default_factory=list)
    pid: list[int] = field(default_factory=list)
    spec: list[str] = field(default_factory=list)
    grace: float = 30.0
    max_series: int = 2000
    by: str = "pid"
    snapshots: bool = True
    snapshot_dir: str = field(default_factory=lambda: os.environ.get(
        "RECORDER_SNAPSHOT_DIR", DEFAULT_SNAPSHOT_DIR))
    snapshot_records: int = 256
    pin_dir: str = field(default_factory=lambda: os.environ.get(
        "RECORDER_PIN_DIR", DEFAULT_PIN_DIR))
    # The channel out of a guest (channel/guest/sources.py); "": none.
    forward: str = ""
    trace: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    backlog_mb: float = 32.0
    forward_interval: float = 1.0

    @classmethod
    def load(cls, path: str | Path) -> DaemonConfig:
        """Read a TOML file; unknown keys and wrong types are errors."""
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except OSError as error:
            raise TracerError(f"cannot read {path}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise TracerError(f"{path}: {error}") from None
        known = {item.name: item for item in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise TracerError(f"{path}: unknown setting {key!r} "
                                  f"(known: {', '.join(known)})")
            if not _fits(value, known[key].type):
                raise TracerError(f"{path}: {key} = {value!r} is not "
                                  f"{known[key].type}")
        return cls(**data)

    def merged(self, **flags: Any) -> DaemonConfig:
        """This config with the flags that were given (not None/empty)."""
        given = {key: value for key, value in flags.items()
                 if value not in (None, (), [], False)}
        return replace(self, **{key: list(value) if isinstance(value, tuple)
                                else value for key, value in given.items()})

    def address(self) -> tuple[str, int]:
        """(host, port) of `listen`.

        >>> DaemonConfig(listen="127.0.0.1:9000").address()
        ('127.0.0.1', 9000)
        """
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TracerError(f"listen address {self.listen!r}: expected HOST:PORT")
        return host.strip("[]"), int(port)


def _fits(value: Any, kind: Any) -> bool:
    text = str(kind)
    if text.startswith("list"):
        inner = int if "int" in text else str
        return isinstance(value, list) and all(isinstance(v, inner) for v in value)
    if text == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if text == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, {"bool": bool, "str": str}.get(text, object))


class Daemon:
    """The session, the HTTP server and the expiry of exited processes."""

    def __init__(self, config: DaemonConfig, report: Any = lambda message: None,
                 stopping: threading.Event | None = None) -> None:
        from recorder_tracer.session.loop import TraceSession
        if not (config.all or config.comm or config.pid):
            raise TracerError("choose processes: --all, --comm or -p "
                              "(flags or the config file)")
        if config.max_series < 1 or config.grace < 0:
            raise TracerError("max_series must be >= 1 and grace >= 0")
        if config.by not in LABEL_SETS:
            raise TracerError(f"by = {config.by!r}: choose "
                              f"{', '.join(sorted(LABEL_SETS))}")
        if not 1 <= config.snapshot_records <= 1 << 16:
            raise TracerError("snapshot_records must be 1 to 65536")
        self.config = config
        self.host, self.port = config.address()
        self.report = report
        self._lock_file = claim_pin_dir(config.pin_dir) if config.pin_dir else None
        options = metrics_options(config.pid, config.comm, config.all,
                                  specs=config.spec)
        if config.snapshots:
            from recorder_tracer.postmortem.snapshot import SnapshotOptions
            options.snapshots = SnapshotOptions(config.snapshot_dir,
                                                config.snapshot_records)
        options.pin_dir = config.pin_dir or None
        self.session = TraceSession(options, lambda record: None, report,
                                    stopping=stopping)
        self.reader = MetricsReader(self.session)
        self._lock = threading.Lock()
        self._gone_since: dict[int, float] = {}
        self._server: Any = None

    def snapshot(self) -> Snapshot:
        """What a scrape exports now (called in the server's thread)."""
        with self._lock, self.session.lock:
            rows = self.reader.read()
            harvester = self.session.harvester
            counters = harvester.counters() if harvester is not None else []
            processes = len(self.session.processes)
            watcher = self.session.snapshots
            written = watcher.counts.written if watcher is not None else 0
            failed = watcher.counts.failed if watcher is not None else 0
        dropped = max(0, len(rows) - self.config.max_series)
        if dropped:
            rows = sorted(rows, key=lambda row: row.stats.count,
                          reverse=True)[:self.config.max_series]
        return Snapshot(rows, hits=sum(cpu.hits for cpu in counters),
                        lost=sum(cpu.stats_full for cpu in counters),
                        dropped_series=dropped, processes=processes,
                        snapshots_written=written, snapshots_failed=failed)

    def start(self) -> None:
        """Arm, follow, and listen."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.process_collector import ProcessCollector
        self.session.start()
        registry = CollectorRegistry()
        registry.register(RecorderCollector(self.snapshot, self.config.by))
        ProcessCollector(registry=registry)     # the daemon's own CPU and RSS
        try:
            self._server, _ = start_http_server(self.port, self.host, registry)
        except OSError as error:
            self.session.close()
            raise TracerError(f"cannot listen on {self.config.listen}: "
                              f"{error.strerror}") from None
        SESSION.record("daemon listening on %s", self.config.listen)

    def run(self) -> None:
        """Until stopped (SIGINT/SIGTERM) or every -p target is gone."""
        try:
            while self.session.poll(timeout_ms=200):
                self.expire()
        finally:
            self.close()

    def expire(self, now: float | None = None) -> list[int]:
        """Forget processes gone for longer than the grace period."""
        now = time.monotonic() if now is None else now
        dropped = []
        with self._lock:
            for pid in list(self.session.exited):
                if pid in self.session.processes:
                    continue                # exec'd: armed again
                since = self._gone_since.setdefault(pid, now)
                if now - since >= self.config.grace:
                    self.session.forget(pid)
                    del self._gone_since[pid]
                    dropped.append(pid)
        return dropped

    def close(self) -> None:
        """Stop serving, detach everything."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            self.session.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


def claim_pin_dir(pin_dir: str) -> Any:
    """Lock `pin_dir` for this daemon (a second one would take over, and
    drop, the first one's links); the open lock file, held until closed."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(os.path.abspath(pin_dir).encode()).hexdigest()[:16]
    path = LOCK_DIR / f"daemon-{name}.lock"
    lock = open(path, "a+")     # noqa: SIM115 - held for the daemon's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "?"
        lock.close()
        raise TracerError(f"another daemon (pid {owner}) uses {pin_dir}; "
                          "give this one another pin_dir") from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock

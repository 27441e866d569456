"""Coverage of foreign USDT probes: PostgreSQL's backends, forked per
connection and never exec'd, counted as bpftrace counts them
(kernel/usdt.py, WideSites)."""

from __future__ import annotations

import collections
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.prometheus import free_port
from helpers.tracer import BackgroundSession, wait_for
from timing import scaled

from recorder_tracer.session.loop import TraceOptions
from recorder_tracer.session.usdt import UsdtSelector

# coverage runs where the kernel has the 6.16 exit tracepoint; the VM guest's
# 6.1 does not yet
pytestmark = [pytest.mark.bpf, pytest.mark.host]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
POSTGRES = PG_BIN / "postgres"
COMMIT = "postgresql:transaction__commit"


class Cluster:
    """A private PostgreSQL cluster under `directory`, run as user
    postgres on a free loopback port; its log names each backend's pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = free_port()
        self.log = directory / "log"
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*as_postgres, str(PG_BIN / "initdb"), "-D", str(self.data),
                        "-A", "trust", "-U", "postgres"], check=True,
                       capture_output=True, timeout=scaled(120))
        self.server = subprocess.Popen(
            [*as_postgres, str(POSTGRES), "-D", str(self.data), "-p", str(self.port),
             "-k", str(directory), "-c", "listen_addresses=127.0.0.1",
             "-c", "autovacuum=off", "-c", "log_connections=on",
             "-c", "log_line_prefix=%p ", "-c", "logging_collector=off"],
            stderr=self.log.open("w"), stdout=subprocess.DEVNULL)
        wait_for(lambda: subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True).returncode == 0, timeout=scaled(60))

    def pgbench(self, *arguments: str) -> None:
        subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", *arguments, "postgres"], check=True,
                       capture_output=True, timeout=scaled(300))

    def backends(self) -> set[int]:
        """Pids of the backends that served a connection (from the log)."""
        pattern = re.compile(r"^(\d+) LOG:  connection received")
        return {int(match.group(1)) for line in self.log.read_text().splitlines()
                if (match := pattern.match(line))}

    def stop(self) -> None:
        self.server.send_signal(signal.SIGINT)      # fast shutdown
        try:
            self.server.wait(timeout=scaled(60))
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not POSTGRES.exists() or shutil.which("pgbench") is None:
        pytest.skip("PostgreSQL 15 and pgbench are not installed")
    # Not under pytest's root-only temporary directory: user postgres
    # must reach it.
    directory = Path(tempfile.mkdtemp(prefix="recorder-pg-"))
    try:
        running = Cluster(directory)
        try:
            yield running
        finally:
            running.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def bpftrace_counting(program: str) -> subprocess.Popen[str]:
    """bpftrace running `program`, once its probes are attached."""
    tracer = subprocess.Popen(["bpftrace", "-f", "json", "-e", program],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert tracer.stdout is not None
    line = tracer.stdout.readline()
    assert "attached_probes" in line, line + tracer.stderr.read()
    return tracer


def bpftrace_map(tracer: subprocess.Popen[str]) -> dict[str, int]:
    tracer.send_signal(signal.SIGINT)
    output, _ = tracer.communicate(timeout=scaled(60))
    counts: dict[str, int] = {}
    for line in output.splitlines():
        if line.startswith("{"):
            message = json.loads(line)
            if message["type"] == "map":
                counts.update(next(iter(message["data"].values())))
    return counts


def test_postgres_commits_under_comm_equal_bpftrace_count(cluster) -> None:
    """pgbench -C: a new connection, so a newly forked backend, for every
    transaction; each commits at once."""
    cluster.pgbench("-i", "-q", "-s", "1")
    bpftrace = bpftrace_counting(
        f"usdt:{POSTGRES}:{COMMIT} /comm == \"postgres\"/ {{ @[pid] = count(); }}")
    session = BackgroundSession(TraceOptions(
        comms=["postgres"], topics=False,
        usdt=[UsdtSelector.parse(f"{POSTGRES}:{COMMIT}")]))
    started = time.monotonic()
    cluster.pgbench("-C", "-c", "4", "-t", "25")
    records = session.stop()
    theirs = bpftrace_map(bpftrace)
    backends = cluster.backends()
    ours = collections.Counter(record.pid for record in records
                               if record.topic == "transaction__commit")
    theirs_here = {int(pid): count for pid, count in theirs.items()
                   if int(pid) in backends}
    ours_here = {pid: count for pid, count in ours.items() if pid in backends}
    assert sum(ours_here.values()) >= 100, (ours_here, time.monotonic() - started)
    assert ours_here == theirs_here
    assert len(ours_here) >= 100            # one backend per transaction

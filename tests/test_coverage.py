"""Coverage: every record of every process a selection names, forked
workers and processes that live a millisecond included (session/coverage.py,
kernel/bpf/coverage.c)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tracer import BackgroundSession
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.output.jsonl import record_json
from recorder_tracer.session.loop import TraceOptions

# coverage runs where the kernel has the 6.16 exit tracepoint; the VM guest's
# 6.1 does not yet
pytestmark = [pytest.mark.bpf, pytest.mark.host]

WORKERS, RECORDS, INTERVAL_US = 3, 1000, 100


class PreforkServer:
    """build/progs/prefork_server: forks its workers (no exec) on "go"."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline().split()
        assert ready[0] == "ready", ready
        self.pid = int(ready[1])    # in its own PID namespace, if any

    def serve(self) -> list[str]:
        """Fork the workers; returns the server's lines once they are done."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        lines = self.process.stdout.read().splitlines()
        assert self.process.wait(timeout=scaled(30)) == 0
        assert lines[-1] == "done 0", lines
        return lines

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def server_argv(progs: Path) -> list[str]:
    return [str(progs / "prefork_server"), str(WORKERS), str(RECORDS),
            str(INTERVAL_US)]


def assert_every_worker_record(records: list[Record], workers: int,
                               late: int = 0) -> None:
    """WORKERS x RECORDS records from `workers` processes (other processes
    of the machine may record `work` too), each worker's in order, none
    twice, none unreadable, all in timestamp order but the `late` the
    session counted (decode/reorder.py: a worker starved of CPU between
    its stamp and its trap for longer than the margin, as beside a VM run
    with the suite at nice 19)."""
    work = [record for record in records
            if record.topic == "work" and record.comm == "prefork_server"]
    by_pid = collections.defaultdict(list)
    for record in work:
        by_pid[record.pid].append(record)
    counts = {pid: len(mine) for pid, mine in by_pid.items()}
    assert len(work) == WORKERS * RECORDS, counts
    assert len(by_pid) == workers == WORKERS, counts
    for mine in by_pid.values():
        worker = mine[0].args[0]
        assert [record.args for record in mine] == [
            [worker, i] for i in range(RECORDS)]
        assert mine[7].message == f"worker {worker} record 7"
        assert mine[7].where.endswith("prefork_server.c:48")
    assert not [record for record in work if "unreadable" in record.message]
    newest, out_of_order = 0, 0
    for record in records:
        out_of_order += record.ts < newest
        newest = max(newest, record.ts)
    assert out_of_order <= late
    if not late:
        assert [record.ts for record in records] == sorted(r.ts for r in records)


@pytest.mark.parametrize("selection", ["pid", "comm", "all"])
def test_forked_workers_are_traced_from_their_first_record(progs, selection) -> None:
    server = PreforkServer(server_argv(progs))
    try:
        options = {
            "pid": TraceOptions(pids=[server.pid]),
            "comm": TraceOptions(comms=["prefork_server"]),
            "all": TraceOptions(all_processes=True),
        }[selection]
        options.spec = TopicSpec.parse("work")
        session = BackgroundSession(options)
        lines = server.serve()
        workers = {int(line.split()[1]) for line in lines if line.startswith("worker")}
        records = session.stop()
    finally:
        server.close()
    assert_every_worker_record(records, len(workers), session.session.reorder.late)
    assert workers <= {record.pid for record in records}


@pytest.mark.parametrize("selection", ["pid", "comm", "all"])
def test_workers_in_a_private_mount_and_pid_namespace_are_traced(
        progs, tmp_path, selection) -> None:
    """As in a container: the binary exists only in the server's own mount
    namespace (a tmpfs mounted there), and its pids are its namespace's."""
    mount = tmp_path / "root"
    mount.mkdir()
    inner = " ".join([str(mount / "prefork_server"), *server_argv(progs)[1:]])
    server = PreforkServer([
        "unshare", "--mount", "--pid", "--fork", "--mount-proc", "sh", "-c",
        f"mount -t tmpfs tmpfs {mount} && cp {progs / 'prefork_server'} {mount} "
        f"&& exec {inner}"])
    try:
        assert server.pid == 1 and not list(mount.iterdir())
        unshare = server.process.pid
        with open(f"/proc/{unshare}/task/{unshare}/children") as children:
            host_pid = int(children.read().split()[0])
        options = {
            "pid": TraceOptions(pids=[host_pid]),
            "comm": TraceOptions(comms=["prefork_server"]),
            "all": TraceOptions(all_processes=True),
        }[selection]
        options.spec = TopicSpec.parse("work")
        session = BackgroundSession(options)
        lines = server.serve()
        records = session.stop()
    finally:
        server.close()
    workers = [line for line in lines if line.startswith("worker")]
    assert_every_worker_record(records, len(workers), session.session.reorder.late)
    mine = [record for record in records if record.comm == "prefork_server"]
    assert all(record.pid > 4 for record in mine)   # host pids, not 2, 3, 4
    # JSON adds the pid each worker has in its own namespace: the one the
    # server printed (records copied at a worker's end have none).
    in_namespace = {record_json(record).get("ns_pid") for record in mine}
    assert in_namespace - {None} == {int(line.split()[1]) for line in workers}


def test_no_children_traces_the_pid_alone(progs) -> None:
    server = PreforkServer([*server_argv(progs)[:2], "20", "0"])
    try:
        session = BackgroundSession(TraceOptions(
            pids=[server.pid], spec=TopicSpec.parse("work"), children=False))
        server.serve()
        records = session.stop()
    finally:
        server.close()
    assert records == []


def test_jobs_that_live_a_millisecond_are_all_traced(progs) -> None:
    """300 processes, each exec'd, recording 10 records and exiting at
    once: most end before any tracer could arm them."""
    session = BackgroundSession(TraceOptions(all_processes=True,
                                             spec=TopicSpec.parse("job")))
    for index in range(300):
        subprocess.run([str(progs / "short_job"), "10", str(index)], check=True)
    records = session.stop()
    mine = [record for record in records if record.comm == "short_job"]
    by_job = collections.defaultdict(list)
    for record in mine:
        by_job[record.args[0]].append(record)
    assert sorted(by_job) == list(range(300))
    assert len(mine) == 3000
    for index, theirs in by_job.items():
        assert [record.args for record in theirs] == [[index, i] for i in range(10)]
        assert len({record.pid for record in theirs}) == 1
    assert theirs[3].message == f"job {index} record 3"
    assert theirs[3].where.endswith("short_job.c:18")
    copied = session.session.coverage
    assert copied is not None and copied.copied > 0     # not all armed in time


def test_workers_ending_before_arming_are_copied_with_their_topic_names(
        progs) -> None:
    """Workers that record 10 entries and exit at once end before the
    session arms them: BPF copies them at their end. A fork's page holding
    a topic's name is not mapped in it until it touches it (fork copies no
    page table of a file mapping), so BPF cannot read the name there: the
    copy must still come out under its topic (the name read from the
    parent's image), not be dropped as an unarmed topic."""
    workers = 8
    server = PreforkServer([str(progs / "prefork_server"), str(workers), "10", "0"])
    try:
        session = BackgroundSession(TraceOptions(pids=[server.pid],
                                                 spec=TopicSpec.parse("work")))
        lines = server.serve()
        records = session.stop()
    finally:
        server.close()
    pids = {int(line.split()[1]) for line in lines if line.startswith("worker")}
    by_pid = collections.Counter(record.pid for record in records
                                 if record.topic == "work")
    assert by_pid == {pid: 10 for pid in pids}, session.reports
    coverage = session.session.coverage
    assert coverage is not None and coverage.copied > 0    # not all armed


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A cgroup of our own in the v2 hierarchy, removed at the end."""
    from recorder_tracer.target.cgroups import cgroup2_root
    path = Path(cgroup2_root()) / f"recorder-test-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            (path.parent / "cgroup.procs").write_text(pid)
        path.rmdir()


def test_every_process_of_a_cgroup_is_traced_now_and_later(progs, cgroup) -> None:
    """One server is in the cgroup when the trace starts, another joins it
    and execs later; a third, outside, is not traced."""
    before = PreforkServer(server_argv(progs))
    outside = PreforkServer(server_argv(progs))
    later: PreforkServer | None = None
    try:
        (cgroup / "cgroup.procs").write_text(str(before.pid))
        session = BackgroundSession(TraceOptions(
            cgroups=[str(cgroup)], spec=TopicSpec.parse("work")))
        later = PreforkServer(["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && "
                               f"exec {' '.join(server_argv(progs))}"])
        lines = before.serve() + later.serve() + outside.serve()
        records = session.stop()
    finally:
        for server in (before, outside, later):
            if server is not None:
                server.close()
    workers = [int(line.split()[1]) for line in lines if line.startswith("worker")]
    by_pid = collections.Counter(record.pid for record in records)
    assert by_pid == {pid: RECORDS for pid in workers[:2 * WORKERS]}, \
        session.reports
    assert sorted(record.args for record in records) == sorted(
        [w, i] for w in range(WORKERS) for i in range(RECORDS) for _ in (0, 1))


def test_a_missing_cgroup_is_one_line_and_nonzero() -> None:
    result = subprocess.run([sys.executable, "-m", "recorder_tracer.cli", "trace",
                             "--cgroup", "recorder-no-such-cgroup"],
                            capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "recorder: --cgroup recorder-no-such-cgroup: No such file or directory"]


def test_metrics_follow_forked_workers(progs) -> None:
    """`recorder metrics -p SERVER` counts its forked workers' hits (the
    kernel aggregates live hits only: what a worker made before it was
    armed is not counted, so at most every record)."""
    from recorder_tracer.metrics.aggregates import metrics_options
    server = PreforkServer(server_argv(progs))
    try:
        session = BackgroundSession(metrics_options(pids=[server.pid],
                                                    specs=["work"]))
        lines = server.serve()
        session.stop()
    finally:
        server.close()
    workers = {int(line.split()[1]) for line in lines if line.startswith("worker")}
    per_pid = collections.Counter()
    for key, count in session.session.topic_counts().items():
        per_pid[key.pid] += count
    assert set(per_pid) == workers
    assert all(0 < count <= RECORDS for count in per_pid.values())

"""kernel/arm.py: uprobe_multi links, the perf-event fallback, semaphores.

A counting bcc program (helpers/counter.py) stands in for the harvest:
every hit adds one, so counts are exact and say which processes trapped.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.counter import Counter
from helpers.tracer import Workload, semaphore_value, uprobe_multi_links_here
from timing import scaled

from recorder_tracer.kernel import arm, link
from recorder_tracer.target import notes

pytestmark = pytest.mark.bpf


@pytest.fixture(autouse=True)
def links_allowed(monkeypatch) -> None:
    """Each test chooses: links unless it forces perf events itself."""
    monkeypatch.delenv(arm.NO_UPROBE_MULTI, raising=False)


@pytest.fixture(scope="module")
def counter() -> Iterator[Counter]:
    loaded = Counter()
    yield loaded
    loaded.bpf.cleanup()


@pytest.fixture
def workloads(progs: Path) -> Iterator[tuple[Workload, Workload]]:
    pair = (Workload(progs), Workload(progs))
    yield pair
    for workload in pair:
        workload.close()


def ticks(progs: Path) -> tuple[str, list[Any]]:
    path = str(progs / "workload_ticks")
    return path, [probe for probe in notes.probes_in_file(path)
                  if probe.provider == "recorder" and probe.name == "tick"]


def arm_ticks(counter: Counter, progs: Path, pid: int) -> list[arm.Attachment]:
    path, probes = ticks(progs)
    return [arm.attach_uprobe(counter.fd, path, probe.file_offset, pid,
                              probe.semaphore_offset) for probe in probes]


def fd_kind(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def bpf_program_fds() -> int:
    """BPF programs this process holds open."""
    return sum(fd_kind(int(fd)) == "anon_inode:bpf-prog"
               for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))


def check_one_process_armed(counter: Counter, progs: Path,
                            workloads: tuple[Workload, Workload],
                            method: arm.Method, fd_kinds: set[str]) -> None:
    armed, other = workloads
    path, _ = ticks(progs)
    counter.take()
    attachments = arm_ticks(counter, progs, armed.pid)
    assert {attachment.method for attachment in attachments} == {method}
    assert {fd_kind(attachment.fd) for attachment in attachments} == fd_kinds
    # The kernel raised tick's semaphore in the armed process only, once per
    # site (its RECORD and the one RECORDER_DEFINE adds for recorder_append*).
    assert semaphore_value(armed.pid, path, "tick") == 2
    assert semaphore_value(armed.pid, path, "tock") == 0
    assert semaphore_value(other.pid, path, "tick") == 0
    armed.record("tick", 23)
    other.record("tick", 7)
    armed.record("tock", 5)
    assert counter.take() == 23
    for attachment in attachments:
        arm.detach(attachment)
    assert semaphore_value(armed.pid, path, "tick") == 0
    armed.record("tick", 3)
    assert counter.take() == 0


def test_this_kernel_attaches_through_uprobe_multi_links(counter, progs,
                                                         workloads) -> None:
    if not uprobe_multi_links_here():
        # Before 6.9: every attachment falls back to a perf event.
        assert not link.uprobe_multi_supported()
        check_one_process_armed(counter, progs, workloads, arm.Method.PERF_EVENT,
                                {"anon_inode:[perf_event]"})
        return
    check_one_process_armed(counter, progs, workloads, arm.Method.LINK,
                            {"anon_inode:bpf_link"})
    # The kernel's own view of one link: its type, process and file.
    armed = workloads[0]
    path, probes = ticks(progs)
    attachments = arm_ticks(counter, progs, armed.pid)
    try:
        fdinfo = Path(f"/proc/self/fdinfo/{attachments[0].fd}").read_text()
        assert "link_type:\tuprobe_multi" in fdinfo
        assert f"pid:\t{armed.pid}\n" in fdinfo
        assert f"path:\t{Path(path).resolve()}\n" in fdinfo
        assert f"{probes[0].semaphore_offset:#x}" in fdinfo
    finally:
        for attachment in attachments:      # one per site of tick
            arm.detach(attachment)


def test_perf_events_when_forced(counter, progs, workloads, monkeypatch) -> None:
    monkeypatch.setenv(arm.NO_UPROBE_MULTI, "1")
    check_one_process_armed(counter, progs, workloads, arm.Method.PERF_EVENT,
                            {"anon_inode:[perf_event]"})


def test_a_link_and_a_perf_event_share_a_site(counter, progs, workloads,
                                              monkeypatch) -> None:
    """As with bpftrace beside us: both count, the semaphore stays up until
    the last one goes. (Before 6.9, two perf events share it.)"""
    first_method = (arm.Method.LINK if uprobe_multi_links_here()
                    else arm.Method.PERF_EVENT)
    armed = workloads[0]
    path, _ = ticks(progs)
    counter.take()
    links = arm_ticks(counter, progs, armed.pid)
    assert {attachment.method for attachment in links} == {first_method}
    monkeypatch.setenv(arm.NO_UPROBE_MULTI, "1")
    perf_events = arm_ticks(counter, progs, armed.pid)
    armed.record("tick", 11)
    assert counter.take() == 22
    for attachment in links:
        arm.detach(attachment)
    assert semaphore_value(armed.pid, path, "tick") == 2    # both sites
    armed.record("tick", 11)
    assert counter.take() == 11
    for attachment in perf_events:
        arm.detach(attachment)
    assert semaphore_value(armed.pid, path, "tick") == 0


def test_the_program_copy_lives_as_long_as_its_links(counter, progs,
                                                     workloads) -> None:
    # Perf events (before 6.9) attach the program itself: no copy.
    copies = 1 if uprobe_multi_links_here() else 0
    before = bpf_program_fds()
    first = arm_ticks(counter, progs, workloads[0].pid)
    second = arm_ticks(counter, progs, workloads[1].pid)
    assert bpf_program_fds() == before + copies     # one copy for every link
    for attachment in first:
        arm.detach(attachment)
    assert bpf_program_fds() == before + copies
    for attachment in second:
        arm.detach(attachment)
        arm.detach(attachment)                   # twice: nothing more
    assert bpf_program_fds() == before


def test_an_unregistered_program_goes_through_perf_events(progs,
                                                          workloads) -> None:
    program = link.prog_load(link.BPF_PROG_TYPE_KPROBE,
                             bytes([0xB7, 0, 0, 0, 0, 0, 0, 0,
                                    0x95, 0, 0, 0, 0, 0, 0, 0]),
                             b"GPL", b"return_zero")
    try:
        path, probes = ticks(progs)
        attachment = arm.attach_uprobe(program, path, probes[0].file_offset,
                                       workloads[0].pid, probes[0].semaphore_offset)
        assert attachment.method is arm.Method.PERF_EVENT
        assert semaphore_value(workloads[0].pid, path, "tick") == 1
        arm.detach(attachment)
        assert semaphore_value(workloads[0].pid, path, "tick") == 0
    finally:
        os.close(program)


@pytest.mark.parametrize("forced", [False, True], ids=["link", "perf-event"])
def test_a_process_that_is_gone(counter, progs, monkeypatch, forced) -> None:
    if forced:
        monkeypatch.setenv(arm.NO_UPROBE_MULTI, "1")
    gone = subprocess.Popen([str(progs / "workload_ticks")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    gone.wait(timeout=scaled(10))       # reaped: no such process any more
    path, probes = ticks(progs)
    with pytest.raises(arm.ArmError, match=f"^process {gone.pid} is gone$"):
        arm.attach_uprobe(counter.fd, path, probes[0].file_offset, gone.pid,
                          probes[0].semaphore_offset)

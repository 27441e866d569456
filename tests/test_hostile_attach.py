"""A uprobe goes on the file its probes were read from, or nowhere.

The attacker (user nobody) runs a recorder program from a directory of
its own, and renames another file over that program's path while root
arms it: after root read the probes, or after root checked the file and
before the kernel attaches. Attached by name, the probe (and its
semaphore's increment: with pid -1, in every process that maps the other
file) would land on the attacker's choice of file. kernel/arm.py opens the
file once, checks its device and inode, and hands the kernel
/proc/self/fd/N; when the path names another file by then, the mapping's
/proc/PID/map_files entry.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.counter import Counter
from helpers.tracer import BackgroundSession, Workload, wait_for
from hostile_helpers import AS_NOBODY, as_nobody, public_dir

from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.kernel import arm
from recorder_tracer.session.loop import TraceOptions
from recorder_tracer.target import notes
from recorder_tracer.target.memory import read_maps

pytestmark = pytest.mark.bpf


@dataclass
class Planted:
    """nobody's program at `app` (the victim runs it) and a copy, `decoy`,
    which another of nobody's processes runs."""

    app: Path
    decoy: Path
    victim: Workload
    other: Workload

    def tick_probes(self) -> list[notes.UsdtProbe]:
        return [probe for probe in notes.probes_in_process(self.victim.pid)
                if probe.provider == "recorder" and probe.name == "tick"]

    def swap(self) -> None:
        """The attack: rename the decoy over the victim's program."""
        done = as_nobody("mv", "-f", str(self.decoy), str(self.app))
        assert done.returncode == 0, done.stderr

    def semaphore(self, pid: int, probe: notes.UsdtProbe,
                  identity: tuple[int, int] | None) -> int:
        """tick's semaphore in process `pid`'s mapping of `identity`."""
        base = min(m.start - m.offset for m in read_maps(pid)
                   if (m.device, m.inode) == identity)
        with open(f"/proc/{pid}/mem", "rb") as memory:
            memory.seek(base + probe.semaphore)
            return int.from_bytes(memory.read(2), "little")


@pytest.fixture
def planted(progs: Path) -> Iterator[Planted]:
    with public_dir() as root:
        app, decoy = root / "nobody" / "app", root / "nobody" / "decoy"
        for name in (app, decoy):
            copied = as_nobody("cp", str(progs / "workload_ticks"), str(name))
            assert copied.returncode == 0, copied.stderr
        victim = Workload(progs, command=[*AS_NOBODY, str(app)])
        other = Workload(progs, command=[*AS_NOBODY, str(decoy)])
        try:
            yield Planted(app, decoy, victim, other)
        finally:
            victim.close()
            other.close()


@pytest.fixture(scope="module")
def counter() -> Iterator[Counter]:
    loaded = Counter()
    yield loaded
    loaded.bpf.cleanup()


@pytest.fixture(params=["link", "perf-event"])
def method(request, monkeypatch) -> str:
    if request.param == "perf-event":
        monkeypatch.setenv(arm.NO_UPROBE_MULTI, "1")
    else:
        monkeypatch.delenv(arm.NO_UPROBE_MULTI, raising=False)
    return request.param


def check_only_the_victim_armed(planted: Planted, counter: Counter,
                                attachments: list[arm.Attachment],
                                probe: notes.UsdtProbe) -> None:
    decoy_identity = (os.stat(planted.app).st_dev, os.stat(planted.app).st_ino)
    assert decoy_identity != probe.identity         # the swap happened
    try:
        # Once per armed site: tick's RECORD and its RECORDER_DEFINE site.
        assert planted.semaphore(planted.victim.pid, probe, probe.identity) == 2
        assert planted.semaphore(planted.other.pid, probe, decoy_identity) == 0
        counter.take()
        planted.victim.record("tick", 23)
        planted.other.record("tick", 7)
        assert counter.take() == 23
    finally:
        for attachment in attachments:
            arm.detach(attachment)
    assert planted.semaphore(planted.victim.pid, probe, probe.identity) == 0


@pytest.mark.parametrize("pid", ["victim", "every"])
def test_a_path_replaced_after_the_probes_were_read_arms_the_mapped_file(
        planted: Planted, counter: Counter, method: str, pid: str) -> None:
    probes = planted.tick_probes()
    assert probes and probes[0].identity is not None
    planted.swap()
    target = planted.victim.pid if pid == "victim" else -1
    attachments = [arm.attach_uprobe(counter.fd, probe.path, probe.file_offset,
                                     target, probe.semaphore_offset,
                                     probe.identity, planted.victim.pid)
                   for probe in probes]
    check_only_the_victim_armed(planted, counter, attachments, probes[0])


def test_a_path_replaced_between_check_and_attach_arms_the_checked_file(
        planted: Planted, counter: Counter, method: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    probes = planted.tick_probes()
    real = arm.safe_open.pin_identified
    swapped: list[str] = []

    def check_then_swap(path: str, identity: tuple[int, int] | None) -> int:
        checked = real(path, identity)
        if not swapped:         # the race, won by the attacker every time
            planted.swap()
            swapped.append(path)
        return checked

    monkeypatch.setattr(arm.safe_open, "pin_identified", check_then_swap)
    attachments = [arm.attach_uprobe(counter.fd, probe.path, probe.file_offset,
                                     planted.victim.pid, probe.semaphore_offset,
                                     probe.identity) for probe in probes]
    assert swapped == [str(planted.app)]
    check_only_the_victim_armed(planted, counter, attachments, probes[0])


def test_a_path_that_names_no_mapped_file_is_not_armed(
        planted: Planted, counter: Counter) -> None:
    """The victim unmapped nothing, yet asked for a file it never mapped:
    no probe rather than the file the path names."""
    probe = planted.tick_probes()[0]
    planted.swap()
    with pytest.raises(arm.ArmError, match="not the file the process mapped"):
        arm.attach_uprobe(counter.fd, probe.path, probe.file_offset,
                          planted.other.pid, probe.semaphore_offset,
                          probe.identity)
    assert planted.semaphore(planted.other.pid, probe,
                             (os.stat(planted.app).st_dev,
                              os.stat(planted.app).st_ino)) == 0


def test_a_trace_session_arms_the_file_mapped_when_it_read_the_probes(
        planted: Planted, monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's own path: read the probes, (swap), attach."""
    real = notes.probes_in_process

    def read_then_swap(pid: int) -> list[notes.UsdtProbe]:
        probes = real(pid)
        if pid == planted.victim.pid and planted.decoy.exists():
            planted.swap()
        return probes

    monkeypatch.setattr(notes, "probes_in_process", read_then_swap)
    background = BackgroundSession(TraceOptions(pids=[planted.victim.pid],
                                                spec=TopicSpec.parse("tick")))
    records = None
    try:
        assert not planted.decoy.exists()
        planted.victim.record("tick", 3)
        planted.other.record("tick", 5)
        wait_for(lambda: len(background.records) >= 3)
        records = background.stop()
    finally:
        if records is None:
            background.stop()
    assert [(r.pid, r.args[0]) for r in records] == [
        (planted.victim.pid, i) for i in range(3)]

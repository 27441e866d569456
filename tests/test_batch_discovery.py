"""Topics BPF finds by name after their process was armed (batch.c's
discover): one a forked child registers under a name BPF cannot read, and
one the process registers while the controller arms it.

Real processes (tests/progs/fork_late_topic.c), real BPF. The records of
such a topic arrive from its first one, in order; the bounds are points of
giving up (scaled), the tests wait on records and on the program's lines.
"""

from __future__ import annotations

import ctypes
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from timing import scaled

import recorder
from recorder_tracer.decode.record import Record
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.session import batch_topics
from recorder_tracer.session.loop import TraceOptions, TraceSession
from recorder_tracer.target.memory import ProcessImage, Topic

pytestmark = [pytest.mark.bpf, pytest.mark.host]   # as tests/test_batch.py


class ForkLateTopic:
    """fork_late_topic under a batch session of topic `late`: its parent
    armed, its child forked; `register()` has the child register its own
    `late` topic and record into it every 2 ms, `stop()` ends it."""

    def __init__(self, progs: Path, touch: bool, **options) -> None:
        argv = [str(progs / "fork_late_topic")] + (["touch"] if touch else [])
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.pid = int(self.stdout.readline().split()[1])
        self.records: list[Record] = []
        self.session = TraceSession(
            TraceOptions(latency=False, pids=[self.pid],
                         spec=TopicSpec.parse("late"), **options),
            self.records.append)
        self.session.start()
        self._say("go\n")
        self.child = int(self.stdout.readline().split()[1])

    def _say(self, line: str) -> None:
        self.stdin.write(line)
        self.stdin.flush()

    def register(self) -> None:
        self._say("a")

    def poll_until(self, condition: Callable[[], bool], seconds: float) -> bool:
        for _ in range(int(scaled(seconds) / 0.02)):
            if condition():
                return True
            self.session.poll(timeout_ms=20)
        return bool(condition())

    def child_records(self) -> list[Record]:
        return [r for r in self.records if r.pid == self.child]

    def stop(self) -> int:
        """Ends the child and closes the session; returns how many records
        the child made."""
        self._say("s")
        recorded = int(self.stdout.readline().split()[1])
        assert self.stdout.readline().split() == ["done", "0"]
        self.session.close()
        return recorded

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def fork_late_topic(progs: Path) -> Iterator[Callable[..., ForkLateTopic]]:
    started: list[ForkLateTopic] = []

    def start(touch: bool, **options) -> ForkLateTopic:
        started.append(ForkLateTopic(progs, touch, **options))
        return started[-1]

    yield start
    for program in started:
        program.kill()


def discovery_state(session: TraceSession, pid: int) -> str:
    """What BPF's discovery holds for `pid`, and the controller's own steps
    (on stderr): said when a topic never came."""
    batch = session.recorder.batch
    target = batch.bpf[b"targets"].get(ctypes.c_uint32(pid))
    fields = ("base", "known", "generation", "topics", "lock", "retry_ns", "unread",
              "unread_now", "resume", "look_known", "look_generation")
    held = {f: getattr(target, f) for f in fields} if target is not None else None
    totals = {name: sum(cpu[name] for cpu in batch.counters())
              for name in ("harvests", "unnamed", "busy")}
    look_now = batch.bpf[b"look_now"].get(ctypes.c_uint32(pid))
    recorder.dump("tracer_session")
    return (f"target {held} at {time.monotonic_ns()} ns, counters {totals}, "
            f"look_now {look_now}")


@pytest.mark.parametrize("touched", [False, True], ids=["untouched", "touched"])
def test_batch_arms_a_topic_a_fork_registers_under_a_name_it_never_read(
        fork_late_topic, touched: bool) -> None:
    """A forked child registers a topic whose name is on a read-only page
    it never touched: fork copies no page table of a file mapping, so BPF
    cannot read the name there. Discovery must not give up on it: the
    topic is harvested from its first record all the same. (`touched`: the
    child reads the name first, as a control.)"""
    program = fork_late_topic(touched)
    # Armed in BPF (`batch.armed` is set once its target is written), not
    # only followed: a topic registered before that is one the child had
    # when armed, harvested from then on, not from its first record.
    armed = program.session.recorder.batch.armed
    assert program.poll_until(lambda: program.child in armed, 10)
    program.register()
    found = program.poll_until(lambda: bool(program.child_records()), 5)
    state = "" if found else discovery_state(program.session, program.child)
    recorded = program.stop()
    assert found, f"no record of the child's topic while it ran: {state}"
    assert [r.args[0] for r in program.child_records()] == list(range(recorded))
    assert all(r.topic == "late" for r in program.records)
    # The child has two topics named late (its parent's, armed with it, and
    # its own): the account by name is both.
    loss = program.session.topic_losses()[(program.child, "late")]
    assert (loss.streamed, loss.lost) == (recorded, 0)


class ImageRegisteredMeanwhile(ProcessImage):
    """A real process image; the first time `read_last` (the registry's
    topic count, or its topic list) has been read, `meanwhile` runs before
    it returns: the process registers a topic while the controller arms it,
    on cue instead of by chance."""

    read_last = "topics"
    meanwhile: Callable[[], None] | None = None

    def _then(self) -> None:
        owner = ImageRegisteredMeanwhile    # once: the class's, not the image's
        hook, owner.meanwhile = owner.meanwhile, None
        if hook is not None:
            hook()

    def topic_count(self) -> int | None:
        count = super().topic_count()
        if self.read_last == "topic_count":
            self._then()
        return count

    def topics(self) -> list[Topic]:
        listed = super().topics()
        if self.read_last == "topics":
            self._then()
        return listed


@pytest.mark.parametrize("read_last", ["topic_count", "topics"])
def test_batch_arms_a_topic_registered_while_the_controller_arms_its_process(
        fork_late_topic, monkeypatch, read_last: str) -> None:
    """The child (not followed: armed here by hand, as a scan or the fork
    follower arms one) registers its topic just after the controller read
    its registry's topic count, or its topic list. Each record of that
    topic arrives, from its first: from a list, the topic registered since
    the count is harvested from its start; missing from it, BPF finds it,
    as the process's `base` (the count from which BPF looks) was read
    before the list. Read after it (the flake of CI stop 24), the topic was
    lost for good."""
    program = fork_late_topic(True, children=False)
    assert program.child not in program.session.recorder.processes

    def register_and_wait() -> None:
        image = ProcessImage.of(program.child)
        before = ProcessImage.topic_count(image)
        assert before is not None
        program.register()
        deadline = time.monotonic() + scaled(10)
        while ProcessImage.topic_count(image) == before \
                and time.monotonic() < deadline:
            time.sleep(0.001)
        assert ProcessImage.topic_count(image) == before + 1, "no topic registered"
        # Its first records, made before the controller arms it.
        time.sleep(0.02)

    monkeypatch.setattr(batch_topics, "ProcessImage", ImageRegisteredMeanwhile)
    monkeypatch.setattr(ImageRegisteredMeanwhile, "read_last", read_last)
    monkeypatch.setattr(ImageRegisteredMeanwhile, "meanwhile", register_and_wait)
    assert program.session.trace_process(program.child)
    assert ImageRegisteredMeanwhile.meanwhile is None, "the hook never ran"
    found = program.poll_until(lambda: bool(program.child_records()), 5)
    state = "" if found else discovery_state(program.session, program.child)
    recorded = program.stop()
    assert found, f"no record of the topic registered while armed: {state}"
    assert [r.args[0] for r in program.child_records()] == list(range(recorded))

"""Following processes: EXEC and EXIT from the proc connector, and helpers."""

from __future__ import annotations

import contextlib
import doctest
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from timing import scaled

from recorder_tracer.target.procs import (
    ProcessFollower,
    ProcessGone,
    ProcEvent,
    ProcEventKind,
    describe_exit,
    process_comm,
    process_exists,
)

TIMEOUT = scaled(10)


def events_of(follower: ProcessFollower, pid: int) -> list[ProcEvent]:
    """The events of `pid` up to and including its EXIT."""
    found: list[ProcEvent] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        try:
            event = follower.events.get(timeout=0.1)
        except queue.Empty:
            continue
        if event.pid == pid:
            found.append(event)
            if event.kind is ProcEventKind.EXIT:
                return found
    raise AssertionError(f"no EXIT of {pid} within {TIMEOUT}s; got {found}")


def start_waiting(progs: Path, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([str(progs / "tracer_wait"), *args],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


@pytest.mark.bpf
def test_child_exec_and_exit_code_are_reported(progs: Path) -> None:
    with ProcessFollower() as follower, start_waiting(progs, "7") as child:
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(TIMEOUT) == 7
        events = events_of(follower, child.pid)
    exec_event, exit_event = events
    assert exec_event.kind is ProcEventKind.EXEC
    assert exec_event.comm == "tracer_wait"
    assert (exit_event.exit_code, exit_event.signal, exit_event.core_dumped) == (
        7, None, False)
    assert exit_event.parent_pid == os.getpid()
    assert exit_event.describe() == "exit code 7"
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert exec_event.timestamp <= exit_event.timestamp <= now


@pytest.mark.bpf
def test_child_killed_by_sigkill_reports_the_signal(progs: Path) -> None:
    with ProcessFollower() as follower, start_waiting(progs) as child:
        child.kill()
        assert child.wait(TIMEOUT) == -signal.SIGKILL
        events = events_of(follower, child.pid)
    exit_event = events[-1]
    assert (exit_event.exit_code, exit_event.signal, exit_event.core_dumped) == (
        None, signal.SIGKILL, False)
    assert exit_event.describe() == "killed by SIGKILL"


@pytest.mark.bpf
def test_thread_exits_do_not_end_the_process() -> None:
    code = ("import sys, threading\n"
            "threads = [threading.Thread(target=sum, args=([1],)) for _ in range(3)]\n"
            "[t.start() for t in threads]; [t.join() for t in threads]\n"
            "sys.exit(5)\n")
    with ProcessFollower() as follower:
        child = subprocess.Popen([sys.executable, "-c", code])
        assert child.wait(TIMEOUT) == 5
        events = events_of(follower, child.pid)
    exits = [e for e in events if e.kind is ProcEventKind.EXIT]
    assert [(e.exit_code, e.signal) for e in exits] == [(5, None)]


@pytest.mark.bpf
def test_callback_runs_in_the_follower_thread() -> None:
    seen: list[tuple[ProcEvent, str]] = []

    def on_event(event: ProcEvent) -> None:
        seen.append((event, threading.current_thread().name))

    def child_exited() -> bool:
        return any(event.kind is ProcEventKind.EXIT and event.pid == child.pid
                   for event, _ in list(seen))

    with ProcessFollower(on_event) as follower:
        child = subprocess.Popen(["true"])
        child.wait(TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not child_exited() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child_exited()
    assert follower.events.empty()
    threads = {name for event, name in seen if event.pid == child.pid}
    assert threads == {"recorder-procs"}


@pytest.mark.bpf
def test_callback_error_is_raised_by_stop() -> None:
    def broken(event: ProcEvent) -> None:
        raise ValueError("callback failed")

    follower = ProcessFollower(broken)
    follower.start()
    subprocess.run(["true"], check=True)
    deadline = time.monotonic() + TIMEOUT
    while follower.running and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(ValueError, match="callback failed"):
        follower.stop()


@pytest.mark.bpf
def test_stop_is_prompt_and_idempotent() -> None:
    follower = ProcessFollower()
    follower.start()
    assert follower.running
    started = time.monotonic()
    follower.stop()
    assert time.monotonic() - started < 1.0
    assert not follower.running
    follower.stop()


@pytest.mark.parametrize(("status", "decoded"), [
    (0, (0, None, False)),
    (7 << 8, (7, None, False)),
    (255 << 8, (255, None, False)),
    (signal.SIGKILL, (None, signal.SIGKILL, False)),
    (signal.SIGSEGV | 0x80, (None, signal.SIGSEGV, True)),
])
def test_wait_status_decodes_to_code_or_signal(
        status: int, decoded: tuple[int | None, int | None, bool]) -> None:
    assert describe_exit(status) == decoded


def test_comm_and_existence_of_a_live_and_a_gone_process(progs: Path) -> None:
    with start_waiting(progs) as child:
        assert process_exists(child.pid)
        assert process_comm(child.pid) == "tracer_wait"
        child.kill()
    assert not process_exists(child.pid)
    with pytest.raises(ProcessGone, match=rf"^process {child.pid} does not exist$"):
        process_comm(child.pid)
    assert not process_exists(0)


@pytest.mark.bpf
def test_overrun_counts_lost_events_and_following_goes_on() -> None:
    release = threading.Event()
    seen: queue.Queue[ProcEvent] = queue.Queue()

    def slow(event: ProcEvent) -> None:
        release.wait(TIMEOUT)   # hold the reader while its socket fills up
        seen.put(event)

    with ProcessFollower(slow, receive_buffer=4096) as follower:
        for _ in range(20):
            subprocess.run(["true"], check=True)
        release.set()
        events = []
        with contextlib.suppress(queue.Empty):    # what the socket kept
            while True:
                events.append(seen.get(timeout=0.3))
        # A later event on a CPU that dropped some reveals the gap (the
        # kernel numbers events per CPU, so it may take a few children);
        # the reader keeps up again.
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            child = subprocess.Popen(["true"])
            child.wait(TIMEOUT)
            while time.monotonic() < deadline:
                events.append(seen.get(timeout=TIMEOUT))
                if (events[-1].kind is ProcEventKind.EXIT
                        and events[-1].pid == child.pid):
                    break
            if any(e.kind is ProcEventKind.OVERRUN for e in events):
                break
    overruns = [e for e in events if e.kind is ProcEventKind.OVERRUN]
    assert follower.lost > 0
    assert sum(e.lost for e in overruns) == follower.lost
    assert overruns[0].describe() == f"{overruns[0].lost} process events lost"
    assert events[-1].pid == child.pid


def test_docstring_examples_hold() -> None:
    from recorder_tracer.target import procs

    assert doctest.testmod(procs).failed == 0


def test_stat_fields_are_read_past_a_command_that_mimics_the_line() -> None:
    """The command in /proc/PID/stat is the process's to choose: one that
    looks like the end of the field and more fields must not shift them."""
    from recorder_tracer.target.procs import start_time, stat_fields

    code = ("import ctypes, sys; ctypes.CDLL(None).prctl(15, b'x) R 1 2 (3', 0, 0, 0);"
            "print('named', flush=True); sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "named\n"
        assert Path(f"/proc/{child.pid}/comm").read_text() == "x) R 1 2 (3\n"
        fields = stat_fields(child.pid, 1, 4, 22)
        assert fields is not None and fields[:2] == (child.pid, os.getpid())
        assert fields[2] == start_time(child.pid) > 0
    finally:
        child.kill()
        child.wait()

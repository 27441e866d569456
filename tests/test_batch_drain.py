"""kernel/batch_stream.py at the edges of a read: a handler that raises in
the middle of one, a process's exit while another is still sending the
strings of its chunk, strings that come after their chunk went out.

Real processes, real BPF. Two states a real program cannot reach on cue
are set up on the real stream: a read cut between a chunk and its strings
(the ring's share made small, as tests/test_batch_backlog.py does; in a
session it is the moment between BPF committing a chunk and its strings),
and another process's harvest landing just after the exit's drain last
looked at the rings (its look wrapped to let the program record then).
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import time
from typing import Any

import pytest
from timing import scaled

from recorder_tracer.decode.record import Record
from recorder_tracer.decode.ring_messages import MESSAGE_COST, RING_HEADER
from recorder_tracer.decode.spec import TopicSpec
from recorder_tracer.output.text import TextPrinter
from recorder_tracer.output.text_plans import TextPlans
from recorder_tracer.session.loop import TraceOptions, TraceSession

pytestmark = [pytest.mark.bpf, pytest.mark.host]     # as tests/test_batch.py


def started_session(pids: list[int], topic: str, sink: Any, **options: Any
                    ) -> tuple[TraceSession, Any]:
    session = TraceSession(TraceOptions(latency=False, pids=pids,
                                        spec=TopicSpec.parse(topic)), sink, **options)
    session.start()
    return session, session.recorder.stream     # type: ignore[union-attr]


def wait_pending(stream, size: int) -> None:
    """Until BPF's rings hold `size` bytes not read yet."""
    deadline = time.monotonic() + scaled(10)
    while (sum(ring.pending() for ring in stream._rings) < size
           and time.monotonic() < deadline):
        time.sleep(0.005)
    assert sum(ring.pending() for ring in stream._rings) >= size


def message_cost(payload: int) -> int:
    """What a message of `payload` bytes takes of a ring's share."""
    return (RING_HEADER + payload + 7) // 8 * 8 + MESSAGE_COST


def tick_messages(stream) -> tuple[int, int]:
    """The share taken by a chunk, and by one string of a %s argument."""
    batch = stream.harvester
    return (message_cost(ctypes.sizeof(batch.chunk_type)),
            message_cost(ctypes.sizeof(batch.string_type)))


def tick_message(i: int) -> str:
    return f"tick {i} of tick-string half {i * 0.5:.1f}"


class RaisesOnce:
    """A handler that, on its `nth` call, hands on what it got and then
    raises: a sink that wrote and then failed."""

    def __init__(self, handler: Any, nth: int) -> None:
        self.handler, self.nth, self.calls = handler, nth, 0

    def __call__(self, *args: Any) -> None:
        self.handler(*args)
        self.calls += 1
        if self.calls == self.nth:
            raise OSError("the sink failed once")


def test_a_record_handler_that_raises_mid_read_loses_no_record(workloads) -> None:
    """on_record raises at the 5th of 40 %s records taken in one read: the
    rest of its chunk and the chunks after it come with the next read,
    strings and all, and every record is counted."""
    workload = workloads()
    records: list[Record] = []
    session, stream = started_session([workload.pid], "tick", records.append)
    workload.record("tick", 40)
    chunk, string = tick_messages(stream)
    wait_pending(stream, 3 * (chunk - MESSAGE_COST) + 40 * (string - MESSAGE_COST))
    stream.on_record = RaisesOnce(stream.on_record, 5)
    stream.poll(timeout_ms=0)           # takes all three chunks: held for strings
    with pytest.raises(OSError, match="failed once"):
        stream.poll(timeout_ms=0)       # delivers them: the 5th raises
    session.close()
    assert [r.message for r in records] == [tick_message(i) for i in range(40)]
    loss = session.topic_losses()[(workload.pid, "tick")]
    assert (loss.produced, loss.streamed, loss.lost) == (40, 40, 0)
    assert all(cpu.balanced for cpu in session.summaries())
    assert all(ring.held == 0 for ring in stream._rings)


def test_a_chunk_handler_that_raises_mid_read_loses_no_record(workloads) -> None:
    """on_chunk (lines rendered in batches) raises at the 2nd of 63 chunks
    of one read: the 61 after it come with the next read."""
    workload = workloads()
    out = io.StringIO()
    printer = TextPrinter(out, header=False)
    session, stream = started_session([workload.pid], "flood", printer.write,
                                      lines=TextPlans(printer))
    workload.record("flood", 997)
    chunk, _string = tick_messages(stream)
    wait_pending(stream, 62 * (chunk - MESSAGE_COST))
    stream.on_chunk = RaisesOnce(stream.on_chunk, 2)
    with pytest.raises(OSError, match="failed once"):
        stream.poll(timeout_ms=0)
    session.close()
    numbers = [int(n) for n in re.findall(r"flood (\d+)", out.getvalue())]
    assert numbers == list(range(997))
    loss = session.topic_losses()[(workload.pid, "flood")]
    assert (loss.produced, loss.streamed, loss.lost) == (997, 997, 0)
    assert all(cpu.balanced for cpu in session.summaries())


def test_a_process_exit_leaves_a_live_process_chunk_waiting_for_its_strings(
        workloads) -> None:
    """A exits; just after its drain last looked at the rings, B's harvest
    lands (a chunk of 16 %s records, then their 16 strings) and the next
    read can take only the chunk and half the strings. No final read at
    A's exit: B's chunk waits for the rest, and every string is there."""
    cpu = min(os.sched_getaffinity(0))
    exiting, live = workloads(), workloads()
    os.sched_setaffinity(live.pid, {cpu})
    records: list[Record] = []
    reports: list[str] = []
    session = TraceSession(TraceOptions(latency=False, pids=[exiting.pid, live.pid],
                                        spec=TopicSpec.parse("tick")),
                           records.append, reports.append)
    session.start()
    stream = session.recorder.stream        # type: ignore[union-attr]
    chunk, string = tick_messages(stream)
    ring = next(ring for ring in stream._rings if ring.cpu == cpu)
    ring.share = chunk + 8 * string         # a read: the chunk, 8 strings
    last = stream._rings[-1]                # the drain's last look
    look = last.pending
    recorded: list[bool] = []

    def late_harvest() -> int:
        seen = look()
        if not recorded:
            recorded.append(True)
            live.record("tick", 16)         # harvested as it waits for more
            wait_pending(stream, chunk - MESSAGE_COST + 16 * (string - MESSAGE_COST))
        return seen

    last.pending = late_harvest             # type: ignore[method-assign]
    captured: list[Any] = []                # what BPF sent of B's strings
    decode = stream.on_record

    def on_record(cpu: int, raw: Any) -> None:
        if raw.pid == live.pid:
            captured.extend(raw.strings)
        decode(cpu, raw)

    stream.on_record = on_record
    assert exiting.close() == 0
    deadline = time.monotonic() + scaled(10)
    while not any("exited" in line for line in reports):
        assert time.monotonic() < deadline, reports
        session.poll(timeout_ms=20)
    assert recorded                         # B's harvest came at A's exit
    session.close()
    assert [r.message for r in records if r.pid == live.pid] == [
        tick_message(i) for i in range(16)]
    # Not read again from its memory (as the decoder does where BPF's copy
    # is missing): each came with its record.
    assert len(captured) == 16 and None not in captured
    assert all(cpu.balanced for cpu in session.summaries())


def test_strings_that_come_after_their_chunk_went_out_are_not_kept(
        workloads) -> None:
    """A read cut after 4 strings of a chunk's 16, the next one after 4
    more: the chunk goes out with 8, and the 8 that come later, which no
    chunk will ask for, are dropped and counted, not kept for the session."""
    workload = workloads()
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(workload.pid, {cpu})
    records: list[Record] = []
    session, stream = started_session([workload.pid], "tick", records.append)
    chunk, string = tick_messages(stream)
    ring = next(ring for ring in stream._rings if ring.cpu == cpu)
    ring.share = chunk + 4 * string
    for round_ in range(1, 3):
        workload.record("tick", 16)
        wait_pending(stream, chunk - MESSAGE_COST + 16 * (string - MESSAGE_COST))
        for _ in range(6):              # the chunk, its strings, two reads more
            stream.poll(timeout_ms=0)
        assert len(stream._strings) == 0
        assert stream._strings.dropped == 8 * round_
    session.close()
    assert stream.strings_received == 32
    # Those 16 went out without BPF's copy: the decoder read them from the
    # live process instead.
    assert [r.message for r in records] == [tick_message(i) for i in range(16)] * 2
    assert all(cpu.balanced for cpu in session.summaries())

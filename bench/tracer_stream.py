"""What the stream carries to the controller: records per second, and losses.

A tracer_bench process records into one topic that a Harvester configured
as `recorder trace` runs it (metrics + flight + stream) harvests; this
process, pinned to another CPU, reads the per-CPU rings with a
`stream.Stream` in a thread. Each run makes records for a while (as fast
as it can, or paced), then stops, drains, and compares what the program
counted on each CPU (produced, refused) with what arrived.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STREAM_TOPIC = "t7"


@dataclass(frozen=True)
class StreamRun:
    """One run: what was produced, received and lost, per CPU and in all."""

    label: str
    consumer: str
    produced: int
    received: int
    lost: int
    seconds: float          # how long the producer made records
    consumer_cpu: float     # CPU seconds the consumer thread used
    balanced: bool          # received + lost == produced on every CPU

    @property
    def received_per_s(self) -> float:
        return self.received / self.seconds

    @property
    def produced_per_s(self) -> float:
        return self.produced / self.seconds


class Consumer:
    """Counts or decodes records, through one of the Stream's interfaces.

    "count": batches, counted (no decoding); "batch": batches, each record
    unpacked with `RecordBatch.tuples()` and its fields picked out;
    "record": one ctypes record per call, fields picked out (the interface
    TraceSession uses).
    """

    def __init__(self, kind: str, harvester: Any) -> None:
        self.kind = kind
        self.count = 0
        fields = harvester.record_fields()
        self._at = {name: fields.index(name) for name in (
            "pid", "comm", "entry.timestamp", "entry.tid", "entry.topic_id",
            "entry.nargs", "entry.args[0]")}
        self.decoded: tuple[Any, ...] = ()

    def handlers(self) -> dict[str, Callable[..., None]]:
        if self.kind == "record":
            return {"on_record": self.on_record}
        return {"on_batch": self.on_batch_count if self.kind == "count"
                else self.on_batch_decode}

    def on_batch_count(self, cpu: int, batch: Any) -> None:
        self.count += len(batch)

    def on_batch_decode(self, cpu: int, batch: Any) -> None:
        at = self._at
        pid, comm, timestamp = at["pid"], at["comm"], at["entry.timestamp"]
        tid, topic, nargs, args = (at["entry.tid"], at["entry.topic_id"],
                                   at["entry.nargs"], at["entry.args[0]"])
        decoded = self.decoded
        for values in batch.tuples():
            decoded = (values[pid], values[tid], values[timestamp], values[topic],
                       values[comm], values[args:args + values[nargs]])
        self.decoded = decoded
        self.count += len(batch)

    def on_record(self, cpu: int, raw: Any) -> None:
        entry = raw.entry
        self.decoded = (raw.pid, entry.tid, entry.timestamp, entry.topic_id, raw.comm,
                        entry.args[:entry.nargs])
        self.count += 1


def run(target: Any, harvester: Any, label: str, command: str,
        consumer_kind: str, pages_per_cpu: int = 256) -> StreamRun:
    """Run `command` in the target while a Stream consumes; drain; account."""
    from recorder_tracer.kernel.stream import Stream
    consumer = Consumer(consumer_kind, harvester)
    before = {cpu.cpu: cpu for cpu in harvester.counters()}
    stream = Stream(harvester, pages_per_cpu=pages_per_cpu, **consumer.handlers())
    stop = threading.Event()
    used = [0.0]

    def poll() -> None:
        start = time.thread_time()
        while not stop.is_set():
            stream.poll(timeout_ms=20)
        used[0] = time.thread_time() - start

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        _records, wall_ns, _cpu = target.command(command)
    finally:
        stop.set()
        thread.join()
        stream.drain()
        received = dict(stream.received)
        stream.close()
    produced = lost = 0
    balanced = True
    for counters in harvester.counters():
        old = before[counters.cpu]
        cpu_produced = (counters.streamed + counters.stream_failed
                        - old.streamed - old.stream_failed)
        cpu_lost = counters.stream_failed - old.stream_failed
        balanced &= received.get(counters.cpu, 0) + cpu_lost == cpu_produced
        produced += cpu_produced
        lost += cpu_lost
    balanced &= consumer.count == sum(received.values())
    return StreamRun(label, consumer_kind, produced, consumer.count, lost,
                     wall_ns / 1e9, used[0], balanced)


def measure(target: Any, milliseconds: int, paced_rate: int,
            pages_per_cpu: int) -> list[StreamRun]:
    """The stream runs, in the order the report shows them."""
    from recorder_tracer.kernel import arm
    from recorder_tracer.kernel.harvest import Harvester
    harvester = Harvester(stream=True, flight=True, metrics=True)
    attachments = [
        arm.attach_uprobe(harvester.program_fd, target.path, site.file_offset,
                          target.pid, site.semaphore_offset)
        for site in target.sites[STREAM_TOPIC]]
    plan = (
        ("as fast as it can, counted", "sample", "count"),
        ("as fast as it can, decoded in batches", "sample", "batch"),
        ("as fast as it can, decoded per record", "sample", "record"),
        (f"paced, {paced_rate // 1000} k/s, decoded per record",
         f"paced {STREAM_TOPIC} {paced_rate}", "record"),
        ("2 threads, both CPUs, counted", "flood", "count"),
    )
    try:
        target.command(f"sample {STREAM_TOPIC} 20")      # warm up (records lost)
        runs = []
        for label, command, consumer in plan:
            if " " not in command:
                command = f"{command} {STREAM_TOPIC}"
            runs.append(run(target, harvester, label, f"{command} {milliseconds}",
                            consumer, pages_per_cpu))
    finally:
        for attachment in attachments:
            arm.detach(attachment)
        harvester.close()
    return runs


def render(runs: list[StreamRun]) -> list[str]:
    lines = [f"{'STREAM RUN':<38} {'MADE/S':>7} {'GOT/S':>7} "
             f"{'LOST':>7} {'CPU':>5}  ACCOUNT"]
    for item in runs:
        lines.append(
            f"{item.label:<38} {_rate(item.produced_per_s):>7} "
            f"{_rate(item.received_per_s):>7} {item.lost:>7} "
            f"{item.consumer_cpu / item.seconds:>5.0%}  "
            f"{'exact' if item.balanced else 'MISMATCH'}")
    lines.append("(harvest: metrics + flight + stream, as `recorder trace` runs "
                 "it; MADE/S,")
    lines.append(" GOT/S: records per second the program produced and the "
                 "controller received;")
    lines.append(" LOST: refused by a full ring; CPU: the consumer thread's share "
                 "of one CPU;")
    lines.append(" ACCOUNT: received + lost = produced on every CPU)")
    return lines


def _rate(per_second: float) -> str:
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f} M"
    return f"{per_second / 1e3:.0f} k"

"""Throughput of the guest-to-host channel and the clock estimate's error.

A Forwarder in this process (the guest's end, as `recorder daemon --forward`
runs it) sends N records to a `recorder collect` process (the host's end)
over loopback TCP and a Unix socket; the collector decodes every batch and
writes every record as a JSON line with its host-aligned time. The figure
is records per second from the first record handed to the forwarder until
the collector acknowledged the last one written, with the CPU time each end
spent per record. Then an idle guest stays connected for a few seconds of
clock probes: guest and host share one clock here, so the estimated offset
IS the estimate's error, printed beside the uncertainty it claims.

Examples:
    .venv/bin/python bench/channel_bench.py                  # 1 M records
    .venv/bin/python bench/channel_bench.py --records 200000 --transport unix
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import Load, Snapshot, describe

from recorder_tracer.channel.guest.forwarder import Forwarder
from recorder_tracer.decode.record import Record

TARGET = 500_000
BATCH_SOURCE = 4096


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_collector(out: Path, url: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "recorder_tracer.cli", "collect", "--out", str(out),
         "--listen", url], stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    line = process.stderr.readline()
    match = re.match(r"^Collecting on (\S+) into ", line)
    if match is None:
        process.kill()
        raise SystemExit(f"collector did not start: {line}")
    return process, match.group(1)


def records() -> list[Record]:
    """Records as the daemon's trace session hands them over: a few threads,
    a formatted message and two integer arguments each."""
    now = time.monotonic_ns()
    return [Record(ts=now + i, pid=4000 + i % 4, tid=4000 + i % 4, comm="server",
                   topic="request", where="server.c:120",
                   message=f"request {i} took {i % 977} us", args=[i, i % 977],
                   cpu=i % 2) for i in range(BATCH_SOURCE)]


def throughput(transport: str, count: int, work: Path, load: Load) -> float:
    url = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix:{work}/bench.sock"
    collector, url = start_collector(work / f"out-{transport}", url)
    forwarder = Forwarder(url, backlog_bytes=1 << 30)
    forwarder.start()
    forwarder.connected.wait(30)
    source = records()
    add = forwarder.add_record
    before, collector_cpu = Snapshot.now(), cpu_seconds(collector.pid)
    guest_cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(count // BATCH_SOURCE):
        for record in source:
            add(record)
    forwarder.flush()
    produced = time.perf_counter()
    guest_cpu = time.process_time() - guest_cpu
    last = forwarder.backlog.next_seq - 1
    while forwarder.backlog.acked < last:
        time.sleep(0.001)
    elapsed = time.perf_counter() - start
    collector_cpu = cpu_seconds(collector.pid) - collector_cpu
    load.add(before, Snapshot.now())
    sent = count // BATCH_SOURCE * BATCH_SOURCE
    forwarder.close()
    collector.terminate()
    collector.wait()
    lines = sum(path.read_bytes().count(b"\n")
                for path in (work / f"out-{transport}").glob("*/*/records.jsonl"))
    rate = sent / elapsed
    print(f"{transport:<5} {sent:>9,} records in {elapsed:6.2f} s: {rate:>9,.0f} "
          f"records/s end to end ({lines:,} lines written); guest "
          f"{guest_cpu / sent * 1e9:5.0f} ns CPU/record (framing done "
          f"{sent / (produced - start):,.0f}/s), collector "
          f"{collector_cpu / sent * 1e9:5.0f} ns CPU/record")
    # What each end could carry with a CPU to itself (this machine is
    # shared: the end-to-end rate above is what the two got meanwhile).
    capacity = 1e9 / max(guest_cpu / sent * 1e9, collector_cpu / sent * 1e9)
    print(f"      CPU-bound capacity with a free CPU per end: {capacity:,.0f} "
          "records/s")
    if lines != sent:
        print(f"  MISMATCH: {sent} sent, {lines} written")
    return rate


def clock_error(seconds: float, work: Path) -> None:
    collector, url = start_collector(work / "out-clock", "tcp://127.0.0.1:0")
    forwarder = Forwarder(url, hello={"hostname": "clock"})
    forwarder.start()
    time.sleep(seconds)
    forwarder.close()
    collector.terminate()
    collector.wait()
    guest = json.loads(next((work / "out-clock").glob("clock/*/guest.json"))
                       .read_text())
    points = [json.loads(line) for line in next(
        (work / "out-clock").glob("clock/*/clock.jsonl")).read_text().splitlines()]
    clock = guest["clock"]
    rtts = sorted(point["rtt_ns"] for point in points)
    print(f"clock after {seconds:.0f} s idle ({clock['probes']} probes, "
          f"{clock['points']} kept): offset {clock['offset_ns']} ns (true offset "
          f"0: one machine), uncertainty claimed +-{clock['uncertainty_ns']} ns, "
          f"kept round trips {rtts[0]}..{rtts[-1]} ns")
    worst = max(abs(point["offset_ns"]) for point in points)
    print(f"  worst kept point's offset error {worst} ns; every kept point "
          f"within its rtt/2: "
          f"{all(abs(p['offset_ns']) <= p['rtt_ns'] / 2 for p in points)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--transport", choices=["tcp", "unix", "both"],
                        default="both")
    parser.add_argument("--clock-seconds", type=float, default=10.0)
    options = parser.parse_args(argv)
    print(describe())
    load = Load()
    rates = []
    with tempfile.TemporaryDirectory(prefix="channel-bench-") as directory:
        work = Path(directory)
        for transport in (["tcp", "unix"] if options.transport == "both"
                          else [options.transport]):
            rates.append(throughput(transport, options.records, work, load))
        clock_error(options.clock_seconds, work)
    print(load.describe())
    best = max(rates)
    print(f"{'PASS' if best >= TARGET else 'FAIL'}: channel {best:,.0f} records/s "
          f"(target >= {TARGET:,})")
    return 0 if best >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

"""The channel over loopback TCP and a Unix socket: real collector processes,
real forwarders, real frames (no BPF: the daemon's part is in
test_channel_daemon.py)."""

from __future__ import annotations

import contextlib
import doctest
import io
import json
import os
import socket
import struct
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.channel import (
    CollectorProcess,
    count_lines,
    read_lines,
    reap_all,
    stream_dirs,
)
from helpers.prometheus import free_port
from helpers.tracer import wait_for
from timing import scaled

from recorder_tracer.channel import batch, clock, transport, wire
from recorder_tracer.channel.guest import backlog
from recorder_tracer.channel.guest.forwarder import Forwarder
from recorder_tracer.channel.host import lines, store
from recorder_tracer.channel.wire import FrameError, Kind
from recorder_tracer.decode.record import Record

RECORDS = 23


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """No collector or daemon of a failed test outlives it."""
    yield
    reap_all()



def make_records(count: int, start: int = 0, comm: str = "app") -> list[Record]:
    return [Record(ts=time.monotonic_ns(), pid=4242, tid=4243, comm=comm,
                   topic="tick", where="app.c:7", message=f"tick {i}",
                   args=[i, i * 0.5, "s", None], cpu=1)
            for i in range(start, start + count)]


@pytest.mark.parametrize("module", [backlog, batch, clock, lines, store, transport,
                                    wire])
def test_channel_doctests_pass(module: object) -> None:
    assert doctest.testmod(module).failed == 0


def test_frames_with_bad_magic_size_kind_or_zip_bomb_are_refused() -> None:
    good = wire.frame(Kind.RECORDS, batch.encode_records(make_records(3)), seq=1)
    assert wire.read_frame(io.BytesIO(good))[:2] == (Kind.RECORDS, 1)
    cases = {
        b"XX" + good[2:]: "bad magic",
        wire.HEADER.pack(wire.MAGIC, Kind.RECORDS, 0, wire.MAX_PAYLOAD + 1, 1):
            "over the limit",
        wire.HEADER.pack(wire.MAGIC, Kind.HELLO, 0, wire.MAX_CONTROL + 1, 0):
            "over the limit",
        wire.HEADER.pack(wire.MAGIC, 99, 0, 0, 1): "unknown frame kind",
        wire.HEADER.pack(wire.MAGIC, Kind.RECORDS, 0, 0, 0): "sequence number 0",
        good[:-3]: "inside a frame",
    }
    bomb = zlib.compress(b"\0" * (wire.MAX_INFLATED + 1), 9)
    cases[wire.HEADER.pack(wire.MAGIC, Kind.SNAPSHOT, wire.FLAG_ZLIB, len(bomb), 2)
          + bomb] = "too large"
    for data, message in cases.items():
        with pytest.raises(FrameError, match=message):
            wire.read_frame(io.BytesIO(data))


def test_record_batches_that_lie_about_their_sizes_are_refused() -> None:
    payload = batch.encode_records(make_records(5))
    assert len(batch.decode_records(payload)) == 5
    count, names, values, tags, text = batch.HEAD.unpack_from(payload)
    lies = [batch.HEAD.pack(count + 1, names, values, tags, text),
            batch.HEAD.pack(batch.MAX_BATCH + 1, names, values, tags, text),
            batch.HEAD.pack(count, names, values + 1, tags, text),
            batch.HEAD.pack(count, names + 7, values, tags, text)]
    for head in lies:
        with pytest.raises(FrameError):
            batch.decode_records(head + payload[batch.HEAD.size:])
    wrong_name = bytearray(payload)
    offset = batch.HEAD.size
    for _ in range(names):
        offset += 2 + struct.unpack_from("<H", payload, offset)[0]
    comm_column = offset + count * (8 + 4 + 4 + 2 + 2)     # ts pid tid cpu provider
    struct.pack_into("<H", wrong_name, comm_column, 999)
    with pytest.raises(FrameError, match="past"):
        lines.batch_lines(bytes(wrong_name), 1, 0.0)


def test_hostile_names_become_one_safe_path_component(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "evil").symlink_to(outside)
    out_fd = store.open_out(str(out))
    try:
        for hostname in ("../../outside", "/etc/passwd", "..", ".hidden", "a\nb",
                         "x" * 300):
            folder = store.StreamStore(out_fd, hostname, "../boot", "../s").folder
            assert ".." not in folder and not folder.startswith(("/", "."))
            assert (out / folder).resolve().is_relative_to(out.resolve())
        with pytest.raises(OSError):    # a planted symlink is refused
            store.StreamStore(out_fd, "evil", "b", "s")
    finally:
        os.close(out_fd)
    assert list(outside.iterdir()) == []


def deliver(forwarder: Forwarder, timeout: float = 30) -> None:
    """Wait until the collector acknowledged everything sent so far."""
    forwarder.flush()
    wait_for(lambda: forwarder.backlog.acked >= forwarder.backlog.next_seq - 1,
             scaled(timeout))


def test_records_over_tcp_and_unix_arrive_once_with_host_times(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    collector = CollectorProcess(out, ["tcp://127.0.0.1:0",
                                       f"unix:{tmp_path}/collect.sock"])
    forwarders = [Forwarder(url, hello={"hostname": name})
                  for url, name in zip(collector.urls, ("tcp-guest", "unix-guest"),
                                       strict=True)]
    try:
        for forwarder in forwarders:
            forwarder.start()
            for record in make_records(RECORDS):
                forwarder.add_record(record)
            forwarder.add_console("agent.log", "started")
            deliver(forwarder)
    finally:
        for forwarder in forwarders:
            forwarder.close()
        assert collector.stop() == 0
    folders = {folder.parent.name: folder for folder in stream_dirs(out)}
    assert sorted(folders) == ["tcp-guest", "unix-guest"]
    for folder in folders.values():
        records = read_lines(folder / "records.jsonl")
        assert [r["message"] for r in records] == [f"tick {i}" for i in range(RECORDS)]
        assert records[5]["args"] == [5, 2.5, "s", None]
        guest = json.loads((folder / "guest.json").read_text())
        bound = guest["clock"]["uncertainty_ns"]
        # One machine, one clock: the aligned time is the raw one, within
        # the bound the collector states.
        assert all(abs(r["host_ts"] - r["ts"]) <= bound for r in records), bound
        assert read_lines(folder / "console.jsonl")[0]["text"] == "started"


def test_garbled_and_oversized_frames_close_only_their_connection(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    collector = CollectorProcess(out, ["tcp://127.0.0.1:0"])
    host, port = collector.urls[0][len("tcp://"):].rsplit(":", 1)
    try:
        for data, message in (
                (b"GET / HTTP/1.1\r\n\r\n" * 2, "bad magic"),
                (wire.HEADER.pack(wire.MAGIC, Kind.HELLO, 0, 1 << 30, 0),
                 "over the limit"),
                (wire.control(Kind.HELLO, {"version": 1, "hostname": 5}),
                 "hostname")):
            with socket.create_connection((host, int(port))) as raw:
                raw.sendall(data)
                raw.settimeout(scaled(10))
                assert raw.recv(100) == b""     # the collector hung up
            line = collector.wait_line(message)
            assert line.startswith("collect: ") and line.endswith(
                "; connection closed")
        forwarder = Forwarder(collector.urls[0])
        forwarder.start()
        for record in make_records(RECORDS):
            forwarder.add_record(record)
        deliver(forwarder)          # the collector lives on
        forwarder.close()
    finally:
        assert collector.stop() == 0
    assert count_lines(out, "records.jsonl") == RECORDS
    assert "Traceback" not in "\n".join(collector.lines)


def test_full_backlog_drops_oldest_and_the_gap_is_counted_exactly(
        tmp_path: Path) -> None:
    port = free_port()
    forwarder = Forwarder(f"tcp://127.0.0.1:{port}", backlog_bytes=1 << 16)
    forwarder.start()           # nobody listens yet: everything waits
    produced = 0
    for chunk in range(40):
        for record in make_records(50, start=chunk * 50):
            forwarder.add_record(record)
        forwarder.flush()
        produced += 50
    dropped = forwarder.backlog.dropped
    assert dropped.frames > 0 and dropped.items["records"] > 0
    out = tmp_path / "out"
    collector = CollectorProcess(out, [f"tcp://127.0.0.1:{port}"])
    try:
        deliver(forwarder)
    finally:
        forwarder.close()
        assert collector.stop() == 0
    received = read_lines(stream_dirs(out)[0] / "records.jsonl")
    assert len(received) + dropped.items["records"] == produced
    # The oldest went: what arrived is the newest, in order.
    assert [r["message"] for r in received] == [
        f"tick {i}" for i in range(produced - len(received), produced)]
    gaps = read_lines(stream_dirs(out)[0] / "gaps.jsonl")
    assert sum(gap["frames"] for gap in gaps) == dropped.frames
    assert gaps[0]["guest_dropped"]["items"]["records"] == dropped.items["records"]


def test_collector_killed_mid_run_loses_and_duplicates_nothing(
        tmp_path: Path) -> None:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "out"
    collector = CollectorProcess(out, [url])
    forwarder = Forwarder(url)
    forwarder.start()
    total = 0
    try:
        for round_ in range(3):
            for chunk in range(20):
                for record in make_records(1000, start=total):
                    forwarder.add_record(record)
                total += 1000
                if chunk == 10:     # mid-stream: frames in flight, unacked
                    collector.kill()
                    collector = CollectorProcess(out, [url])
            forwarder.flush()
            assert round_ >= 0
        deliver(forwarder, 60)
    finally:
        forwarder.close()
        assert collector.stop() == 0
    messages = [r["message"] for r in read_lines(stream_dirs(out)[0]
                                                 / "records.jsonl")]
    assert len(messages) == total
    assert messages == [f"tick {i}" for i in range(total)]
    assert read_lines(stream_dirs(out)[0] / "gaps.jsonl") == []


def test_metrics_of_two_guests_on_one_page_with_a_guest_label(
        tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "out"
    collector = CollectorProcess(out, ["tcp://127.0.0.1:0"], "--metrics-listen",
                                 f"127.0.0.1:{port}")
    exposition = ("# HELP recorder_records_total Records.\n"
                  "# TYPE recorder_records_total counter\n"
                  'recorder_records_total{topic="tick",comm="app",pid="7"} %d\n')
    forwarders = []
    try:
        for name, value in (("guest-a", 23), ("guest-b", 29)):
            forwarder = Forwarder(collector.urls[0], hello={"hostname": name})
            forwarder.start()
            forwarder.add_metrics((exposition % value).encode())
            deliver(forwarder)
            forwarders.append(forwarder)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                      timeout=scaled(10)).read().decode()
    finally:
        for forwarder in forwarders:
            forwarder.close()
        assert collector.stop() == 0
    for name, value in (("guest-a", 23), ("guest-b", 29)):
        assert ('recorder_records_total{boot="' in page
                and f'guest="{name}",pid="7",topic="tick"}} {value}.0' in page), page
    assert 'recorder_collect_items_total{boot=' in page


def test_chrome_merge_puts_each_guest_in_its_own_process_group(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    collector = CollectorProcess(out, ["tcp://127.0.0.1:0"])
    forwarders = []
    try:
        for name in ("guest-a", "guest-b"):
            forwarder = Forwarder(collector.urls[0], hello={"hostname": name})
            forwarder.start()
            for record in make_records(RECORDS, comm=name):
                forwarder.add_record(record)
            forwarder.add_console("kmsg", f"{name} says hi")
            deliver(forwarder)
            forwarders.append(forwarder)
    finally:
        for forwarder in forwarders:
            forwarder.close()
        assert collector.stop() == 0
    chrome = tmp_path / "all.trace"
    from subprocess import run

    from helpers.channel import RECORDER
    result = run([*RECORDER, "collect", "--out", str(out), "--chrome", str(chrome)],
                 capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 0, result.stderr
    trace = json.loads(chrome.read_text())
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events
             if e["name"] == "process_name"}
    instants = [e for e in events if e["ph"] == "i" and e["cat"] == "recorder"]
    assert len(instants) == 2 * RECORDS
    groups = {names[e["pid"]].split(":")[0] for e in instants}
    assert groups == {"guest-a", "guest-b"}
    assert len({e["pid"] for e in instants}) == 2
    assert {g["guest"] for g in trace["otherData"]["guests"]} == groups


def test_collect_without_listen_or_chrome_is_a_usage_error(tmp_path: Path) -> None:
    from subprocess import run

    from helpers.channel import RECORDER
    result = run([*RECORDER, "collect", "--out", str(tmp_path)],
                 capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 2 and "--listen" in result.stderr
    result = run([*RECORDER, "collect", "--out", str(tmp_path), "--listen",
                  "vsock://x:1"], capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 1
    assert result.stderr.startswith("recorder: channel URL 'vsock://x:1'")


def test_hostile_guest_cannot_write_outside_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "evil").symlink_to(outside)      # planted: a guest named `evil`
    collector = CollectorProcess(out, ["tcp://127.0.0.1:0"])
    host, port = collector.urls[0][len("tcp://"):].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(wire.control(Kind.HELLO, {
                "version": 1, "hostname": "evil", "boot_id": "b", "stream": "s",
                "first_seq": 1, "next_seq": 1}))
            raw.settimeout(scaled(10))
            assert raw.recv(100) == b""
        assert "'evil' is a symlink or not a directory: refused" in (
            collector.wait_line("connection closed"))
        forwarders = [Forwarder(collector.urls[0], hello={"hostname": name,
                                                          "boot_id": "../../x"})
                      for name in ("../outside", "/etc", "..")]
        for forwarder in forwarders:
            forwarder.start()
            forwarder.add_console("kmsg", "hi")
            deliver(forwarder)
            forwarder.close()
    finally:
        assert collector.stop() == 0
    assert list(outside.iterdir()) == []
    assert len(stream_dirs(out)) == 3
    for folder in stream_dirs(out):
        assert folder.resolve().is_relative_to(out.resolve())
        assert not folder.parent.name.startswith(".")


def test_character_device_transport_carries_the_channel(tmp_path: Path) -> None:
    """A pty stands in for a virtio-serial port: the forwarder opens the
    device (raw mode), and the test relays its other end to the collector's
    Unix socket, as QEMU relays a virtio-serial port to a chardev socket."""
    import pty
    import threading
    out = tmp_path / "out"
    collector = CollectorProcess(out, [f"unix:{tmp_path}/serial.sock"])
    master, slave = pty.openpty()
    relay = socket.socket(socket.AF_UNIX)
    relay.connect(str(tmp_path / "serial.sock"))
    stop = threading.Event()

    def pump(read: object, write: object) -> None:
        while not stop.is_set():
            try:
                data = read()       # type: ignore[operator]
                if not data:
                    return
                write(data)         # type: ignore[operator]
            except OSError:         # the other end closed: the test is over
                return

    threads = [threading.Thread(target=pump, args=(lambda: os.read(master, 65536),
                                                   relay.sendall), daemon=True),
               threading.Thread(target=pump, args=(lambda: relay.recv(65536),
                                                   lambda d: os.write(master, d)),
                                daemon=True)]
    for thread in threads:
        thread.start()
    forwarder = Forwarder(os.ttyname(slave), hello={"hostname": "serial-guest"})
    try:
        forwarder.start()
        for record in make_records(RECORDS):
            forwarder.add_record(record)
        deliver(forwarder)
    finally:
        forwarder.close()
        stop.set()
        relay.close()
        os.close(slave)
        os.close(master)
        assert collector.stop() == 0
    records = read_lines(stream_dirs(out)[0] / "records.jsonl")
    assert [r["message"] for r in records] == [f"tick {i}" for i in range(RECORDS)]


def test_clock_tracks_offset_and_drift_within_its_stated_uncertainty() -> None:
    """A guest clock 3 ms ahead and 50 ppm fast, probed over legs of
    random, unequal length: the fit puts guest times on the host's clock
    within the uncertainty it states."""
    import random
    rng = random.Random(23)
    estimator = clock.ClockEstimator()

    def guest(host_ns: float) -> int:
        return round(3_000_000 + host_ns * (1 + 50e-6))

    host = 1_000_000_000
    for _ in range(400):                    # one probe each 0.1 s: 40 s
        out_leg = rng.randint(20_000, 400_000)
        back_leg = rng.randint(20_000, 400_000)
        estimator.add(host, guest(host + out_leg), host + out_leg + back_leg)
        host += 100_000_000
    summary = estimator.summary()
    assert abs(summary["drift_ppm"] - 50) < 5, summary
    bound = estimator.uncertainty_ns()
    for probe_host in (host - 30_000_000_000, host - 1_000_000_000):
        assert abs(estimator.to_host(guest(probe_host)) - probe_host) <= bound


def test_store_cuts_a_torn_line_and_resumes_after_the_last_whole_one(
        tmp_path: Path) -> None:
    out_fd = store.open_out(str(tmp_path))
    try:
        first = store.StreamStore(out_fd, "g", "b", "s")
        first.write("records.jsonl", b'{"seq": 4, "n": 0}\n{"seq": 4, "n": 1}\n'
                    b'{"seq": 5, "n": 0, "ts": 12')      # killed mid-write
        first.write("metrics.jsonl", b'{"seq": 3}\n')
        first.close()
        again = store.StreamStore(out_fd, "g", "b", "s")
        assert (again.last_seq, again.last_n) == (4, 1)
        again.close()
    finally:
        os.close(out_fd)
    records = tmp_path / "g" / "b.s" / "records.jsonl"
    assert records.read_bytes().endswith(b'{"seq": 4, "n": 1}\n')


def test_mutated_payloads_raise_only_frame_errors() -> None:
    """Every byte a guest sends is hostile: 3000 seeded mutations of valid
    payloads (flipped bytes, cuts, growths) either decode or raise
    FrameError, never anything else (which would end the collector's
    thread with a traceback instead of one line)."""
    import random
    rng = random.Random(23)
    records = [*make_records(7), Record(ts=1, pid=2, tid=3, comm="c", topic="t",
                                        where="w", message="m", args=[1])]
    valid = {
        "records": batch.encode_records(records),
        "console": batch.encode_console([batch.ConsoleLine(1, "kmsg", "hello")] * 3),
        "snapshot": batch.encode_snapshot(5, "a.snapshot.json", b"{}"),
        "metrics": batch.encode_metrics(5, b"x_total 1\n"),
    }
    decoders = {
        "records": lambda data: lines.batch_lines(data, 1, 0.0),
        "console": lambda data: list(batch.decode_console(data)),
        "snapshot": batch.decode_snapshot,
        "metrics": batch.decode_metrics,
    }
    for _ in range(3000):
        kind = rng.choice(sorted(valid))
        data = bytearray(valid[kind])
        for _ in range(rng.randint(1, 4)):
            choice = rng.random()
            if choice < 0.6 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice < 0.8:
                del data[rng.randrange(len(data) + 1):]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9)))
        with contextlib.suppress(FrameError):
            decoders[kind](bytes(data))


def test_daemon_config_file_sets_the_forward_options(tmp_path: Path) -> None:
    from recorder_tracer.session.daemon import DaemonConfig
    config = tmp_path / "daemon.toml"
    config.write_text('all = true\nforward = "vsock://2:7070"\ntrace = ["net.*"]\n'
                      'console = ["kmsg"]\nbacklog_mb = 8.0\n')
    loaded = DaemonConfig.load(config)
    assert (loaded.forward, loaded.trace, loaded.console, loaded.backlog_mb,
            loaded.forward_interval) == ("vsock://2:7070", ["net.*"], ["kmsg"],
                                         8.0, 1.0)
    merged = loaded.merged(forward="unix:/run/c.sock", trace=(), backlog_mb=None)
    assert (merged.forward, merged.trace) == ("unix:/run/c.sock", ["net.*"])

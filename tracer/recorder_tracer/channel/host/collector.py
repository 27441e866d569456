"""`recorder collect`: the host's end; any number of guests, one clock.

Each listener's accepted connection gets a thread (a GuestLink): HELLO
names the guest (hostname, boot id, the stream of one daemon run); its
StreamStore (channel/host/store.py) says where to resume; WELCOME tells
the guest, and the first clock probes run before any bulk data. Then every
data frame is written once, in order, and acknowledged; a frame already
written (resent after a reconnect) is skipped, a jump in sequence numbers
is written to gaps.jsonl, and a probe every PROBE_INTERVAL_S keeps the
clock estimate (channel/clock.py) current.

A frame that breaks the format, or a guest that breaks the protocol, ends
its connection with one line on stderr; the collector and the other guests
go on.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recorder_tracer.channel import batch
from recorder_tracer.channel.clock import ClockEstimator
from recorder_tracer.channel.host.lines import batch_lines, console_lines
from recorder_tracer.channel.host.store import StreamStore, open_out
from recorder_tracer.channel.transport import Connection, Listener, parse_url
from recorder_tracer.channel.wire import (
    DATA,
    PROTOCOL_VERSION,
    Closed,
    FrameError,
    Kind,
    control,
    parse_control,
    read_frame,
)
from recorder_tracer.channel.wire import field as checked

FIRST_PROBES = 8
PROBE_INTERVAL_S = 0.5
ACK_INTERVAL_S = 0.05
HELLO_TIMEOUT_S = 10.0
MAX_LINKS = 256

Reporter = Callable[[str], None]


@dataclass
class GuestState:
    """What the collector knows of one stream, also across connections."""

    store: StreamStore
    clock: ClockEstimator = field(default_factory=ClockEstimator)
    link: GuestLink | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    metrics_text: str = ""
    metrics_version: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("records", "console", "metrics", "snapshots", "duplicates", "gap_frames",
         "connections"), 0))

    @property
    def label(self) -> str:
        return self.store.folder.split("/")[0]


class Collector:
    """Listeners, the guests' states and their output directory."""

    def __init__(self, urls: list[str], out: str,
                 report: Reporter = lambda message: None) -> None:
        if not urls:
            raise ValueError("no --listen URL")
        endpoints = [parse_url(url) for url in urls]
        self.out_fd = open_out(out)
        self.out = out
        self.report = report
        self.guests: dict[tuple[str, str, str], GuestState] = {}
        self._lock = threading.Lock()
        self._links: set[GuestLink] = set()
        self._stop = threading.Event()
        self.listeners = [Listener(endpoint) for endpoint in endpoints]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for listener in self.listeners:
            thread = threading.Thread(target=self._accept, args=(listener,),
                                      daemon=True, name=f"accept {listener.url()}")
            thread.start()
            self._threads.append(thread)

    def _accept(self, listener: Listener) -> None:
        while not self._stop.is_set():
            connection = listener.accept()
            if connection is None:
                if self._stop.is_set():
                    return
                continue
            with self._lock:
                if len(self._links) >= MAX_LINKS:
                    self.report(f"collect: {connection.peer}: over {MAX_LINKS} "
                                "guests; connection closed")
                    connection.close()
                    continue
                link = GuestLink(self, connection)
                self._links.add(link)
            threading.Thread(target=link.run, daemon=True,
                             name=f"guest {connection.peer}").start()

    def state_for(self, hello: dict[str, Any]) -> GuestState:
        key = (hello["hostname"], hello["boot_id"], hello["stream"])
        with self._lock:
            state = self.guests.get(key)
            if state is None:
                state = self.guests[key] = GuestState(StreamStore(self.out_fd, *key))
            return state

    def forget(self, link: GuestLink) -> None:
        with self._lock:
            self._links.discard(link)

    def close(self) -> None:
        self._stop.set()
        for listener in self.listeners:
            listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.connection.close()
        for link in links:
            link.finished.wait(5)
        for thread in self._threads:
            thread.join(timeout=5)
        for state in self.guests.values():
            state.store.close()


class GuestLink:
    """One connection: handshake, then frames until it ends."""

    _ids = itertools.count(1)

    def __init__(self, collector: Collector, connection: Connection) -> None:
        self.collector = collector
        self.connection = connection
        self.state: GuestState | None = None
        self.finished = threading.Event()
        self._probes: dict[int, int] = {}
        self._probe_lock = threading.Lock()
        self._probe_ids = itertools.count(1)
        self._last_ack = 0.0
        self._acked = 0
        self._ack_lock = threading.Lock()   # the reader and the ack timer

    def run(self) -> None:
        report = self.collector.report
        name = self.connection.peer
        try:
            name = self._handshake()
            self._loop()
        except Closed:
            pass
        except FrameError as error:
            report(f"collect: {name}: {error}; connection closed")
        except (OSError, ValueError) as error:
            if not self.connection.closed.is_set():
                report(f"collect: {name}: {error}; connection closed")
        except Exception as error:      # a bug: this guest goes, the rest stay
            report(f"collect: {name}: internal error {error!r}; connection closed")
        finally:
            self.connection.close()
            state = self.state
            if state is not None:
                try:
                    self._ack(force=True, quiet=True)
                    if state.link is self:
                        state.link = None
                        with contextlib.suppress(OSError):
                            self._write_guest(state)
                        state.store.release()
                finally:
                    state.store.lock.release()
            self.collector.forget(self)
            self.finished.set()

    # -- handshake ----------------------------------------------------------

    def _handshake(self) -> str:
        self.connection.set_timeout(HELLO_TIMEOUT_S)
        kind, _, payload = read_frame(self.connection.reader)
        if kind is not Kind.HELLO:
            raise FrameError(f"expected HELLO, got {kind.name}")
        hello = parse_control(kind, payload)
        version = checked(hello, "version", int)
        if version != PROTOCOL_VERSION:
            raise FrameError(f"protocol version {version} (this collector speaks "
                             f"{PROTOCOL_VERSION})")
        for name in ("hostname", "boot_id", "stream"):
            checked(hello, name, str, 255)
        state = self.collector.state_for(hello)
        previous = state.link
        if previous is not None:        # the guest reconnected: the old one goes
            previous.connection.close()
        if not state.store.lock.acquire(timeout=HELLO_TIMEOUT_S):
            raise FrameError("the previous connection of this guest does not end")
        self.state = state
        state.link = self
        state.stats = {"dropped": hello.get("dropped", {})}
        state.counts["connections"] += 1
        store = state.store
        # Resend the last frame when it may be partly written (records only).
        resume = store.last_seq if store.last_n is not None else store.last_seq + 1
        resume = max(resume, 1)
        self.connection.send(control(Kind.WELCOME, {"resume": resume,
                                                    "probes": FIRST_PROBES}))
        for _ in range(FIRST_PROBES):
            self._probe()
            kind, _, payload = read_frame(self.connection.reader)
            if kind is not Kind.PROBE_REPLY:
                raise FrameError(f"expected PROBE_REPLY, got {kind.name}")
            self._on_reply(payload)
        state.clock.flush()
        self.connection.set_timeout(None)
        label = f"guest {store.hostname!r:.80} ({store.folder})"
        first = checked(hello, "first_seq", int)
        if first > store.last_seq + 1:
            # Gone from the guest's backlog before we wrote them: said once.
            self._gap(state, first - 1, "dropped by the guest's full backlog")
        previous = hello.get("previous")
        if isinstance(previous, dict) and previous.get("stream") != hello["stream"]:
            self._previous_stream(hello, previous)
        self._write_guest(state, hello)
        # Said once the guest's folder is whole: a collector killed right
        # after this line leaves a folder with its guest.json.
        self.collector.report(
            f"collect: {label} connected from {self.connection.peer}, "
            f"resuming at item {resume}; clock offset "
            f"{round(state.clock.offset_at(time.monotonic_ns()))} ns "
            f"+- {state.clock.uncertainty_ns()} ns")
        return label

    def _probe(self) -> None:
        with self._probe_lock:
            probe_id = next(self._probe_ids)
            if len(self._probes) >= 64:         # unanswered: forget the oldest
                del self._probes[min(self._probes)]
            self._probes[probe_id] = time.monotonic_ns()
            # Sent under the lock: the time taken is the time it leaves.
            self.connection.send(control(Kind.PROBE, {"id": probe_id}))

    def _on_reply(self, payload: bytes) -> None:
        now = time.monotonic_ns()
        reply = parse_control(Kind.PROBE_REPLY, payload)
        with self._probe_lock:
            sent = self._probes.pop(checked(reply, "id", int), None)
        if sent is None:
            return
        assert self.state is not None
        point = self.state.clock.add(sent, checked(reply, "guest_ns", int), now)
        if point is not None:
            self.state.store.write_json("clock.jsonl", {
                "host_ns": point.host_ns, "offset_ns": round(point.offset_ns),
                "rtt_ns": point.rtt_ns, **self.state.clock.summary()})

    # -- frames -------------------------------------------------------------

    def _loop(self) -> None:
        assert self.state is not None
        threading.Thread(target=self._probe_loop, daemon=True,
                         name=f"probes {self.connection.peer}").start()
        threading.Thread(target=self._ack_loop, daemon=True,
                         name=f"acks {self.connection.peer}").start()
        next_write = time.monotonic() + PROBE_INTERVAL_S
        reader = self.connection.reader
        while True:
            kind, seq, payload = read_frame(reader)
            if kind in DATA:
                self._data(kind, seq, payload)
            elif kind is Kind.PROBE_REPLY:
                self._on_reply(payload)
            elif kind is Kind.STATS:
                self.state.stats = parse_control(kind, payload)
            else:
                raise FrameError(f"unexpected {kind.name} frame")
            now = time.monotonic()
            if now >= next_write:
                next_write = now + PROBE_INTERVAL_S
                self._write_guest(self.state)
            self._ack()

    def _ack_loop(self) -> None:
        """Acks what was written, within ACK_INTERVAL_S, when no frame comes
        after the last ones (the reader acks only as frames arrive: the
        guest kept its backlog, and a sender waiting on it, up to the next
        clock probe)."""
        while not self.connection.closed.wait(ACK_INTERVAL_S):
            try:
                self._ack()
            except OSError:
                return

    def _probe_loop(self) -> None:
        """A clock probe every PROBE_INTERVAL_S, idle or busy."""
        while not self.connection.closed.wait(PROBE_INTERVAL_S):
            try:
                self._probe()
            except OSError:
                return

    def _data(self, kind: Kind, seq: int, payload: bytes) -> None:
        state = self.state
        assert state is not None
        store = state.store
        skip = -1
        if seq < store.last_seq or (seq == store.last_seq and store.last_n is None):
            state.counts["duplicates"] += 1
            return
        if seq == store.last_seq:
            skip = store.last_n if store.last_n is not None else -1
        elif seq > store.last_seq + 1:
            self._gap(state, seq - 1, "dropped by the guest's full backlog")
        offset = state.clock.offset_at(time.monotonic_ns())
        if kind is Kind.RECORDS:
            data, count = batch_lines(payload, seq, offset, skip)
            store.write("records.jsonl", data)
            state.counts["records"] += max(0, count - skip - 1)
        elif kind is Kind.CONSOLE:
            lines = list(batch.decode_console(payload))
            store.write("console.jsonl", console_lines(lines, seq, offset, skip))
            state.counts["console"] += max(0, len(lines) - skip - 1)
        elif kind is Kind.METRICS:
            ts, text = batch.decode_metrics(payload)
            store.write_json("metrics.jsonl", {
                "seq": seq, "ts": ts, "host_ts": ts - round(offset),
                "samples": _samples(text)})
            state.metrics_text = text
            state.metrics_version += 1
            state.counts["metrics"] += 1
        else:
            ts, name, content = batch.decode_snapshot(payload)
            safe = store.write_snapshot(name, content)
            store.write_json("snapshots.jsonl", {
                "seq": seq, "ts": ts, "host_ts": ts - round(offset),
                "name": name, "file": f"snapshots/{safe}", "bytes": len(content)})
            state.counts["snapshots"] += 1
            self.collector.report(f"collect: {store.folder}: snapshot {safe}")
        store.last_seq = seq
        store.last_n = None         # the whole frame is written

    def _gap(self, state: GuestState, last: int, cause: str,
             extra: dict[str, Any] | None = None) -> None:
        """Items store.last_seq+1..last will never come: say so once (the
        line's `seq` makes the next collector run resume after them)."""
        store = state.store
        first = store.last_seq + 1
        state.counts["gap_frames"] += last - first + 1
        store.write_json("gaps.jsonl", {
            "seq": last, "first": first, "last": last, "frames": last - first + 1,
            "cause": cause, "guest_dropped": state.stats.get("dropped", {}),
            **(extra or {})})
        store.last_seq, store.last_n = last, None
        self.collector.report(f"collect: {store.folder}: items {first}..{last} "
                              f"never arrived ({cause})")

    def _previous_stream(self, hello: dict[str, Any], previous: dict[str, Any]
                         ) -> None:
        """The guest's previous daemon (same boot) framed items up to
        next_seq - 1 when it last said so: those not written were lost with
        it (kill -9, OOM). Said once, in that stream's gaps.jsonl."""
        stream = checked(previous, "stream", str, 255)
        next_seq = checked(previous, "next_seq", int)
        produced = previous.get("produced")
        if not isinstance(produced, dict) or len(produced) > 8:
            produced = {}
        old = self.collector.state_for({**hello, "stream": stream})
        if not old.store.lock.acquire(blocking=False):
            return                  # that daemon is connected: it lives
        try:
            if next_seq - 1 > old.store.last_seq:
                self._gap(old, next_seq - 1, "the guest's daemon ended before "
                          "sending them", {"guest_produced": produced})
        finally:
            if old.link is None:
                old.store.release()
            old.store.lock.release()

    def _ack(self, force: bool = False, quiet: bool = False) -> None:
        state = self.state
        if state is None:
            return
        with self._ack_lock:
            now = time.monotonic()
            seq = state.store.last_seq
            if seq == self._acked or (not force
                                      and now - self._last_ack < ACK_INTERVAL_S):
                return
            self._last_ack = now
            try:
                self.connection.send(control(Kind.ACK, {"seq": seq}))
                self._acked = seq
            except OSError:
                if not quiet:
                    raise

    def _write_guest(self, state: GuestState, hello: dict[str, Any] | None = None
                     ) -> None:
        store = state.store
        state.store.replace_json("guest.json", {
            "hostname": store.hostname, "boot_id": store.boot_id,
            "stream": store.stream, "folder": store.folder,
            "connected": state.link is not None,
            "last_seq": store.last_seq, "clock": state.clock.summary(),
            "received": state.counts, "guest_stats": state.stats,
            **({"hello": hello} if hello else {})})


def _samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value of an exposition text (lines, not parsed
    families: cheap, and what metrics.jsonl keeps)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

"""The guest's end of the channel: batch items, keep them, send them.

Producers (the trace session's sink, console followers, the metrics and
snapshot pollers) hand items to a Forwarder from any thread. Records and
console lines are batched (up to BATCH items or FLUSH_S seconds) into
frames in the Backlog; one thread keeps a connection to the collector:

    guest                                   collector
    HELLO {hostname, boot_id, stream, version, first_seq, next_seq}  ->
                                         <- WELCOME {resume, probes}
    PROBE_REPLY x probes (the first clock estimate, before any bulk data)
    data frames from `resume` on           <- ACK {seq} as they are written
                                           <- PROBE {id} now and then

A lost connection is retried with backoff; the next one resumes where the
collector says it stopped, so nothing is sent twice to one collector run
and nothing within the backlog is lost to a collector's death.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recorder_tracer.channel import batch
from recorder_tracer.channel.guest.backlog import DEFAULT_LIMIT, Backlog
from recorder_tracer.channel.transport import Connection, Endpoint, connect
from recorder_tracer.channel.wire import (
    PROTOCOL_VERSION,
    Closed,
    FrameError,
    Kind,
    control,
    field,
    parse_control,
    read_frame,
)
from recorder_tracer.decode.record import Record

BATCH = 4096
FLUSH_S = 0.05
SEND_CHUNK = 1 << 20
HANDSHAKE_TIMEOUT_S = 10.0
STATS_INTERVAL_S = 1.0
MAX_PROBES = 64
STATE_INTERVAL_S = 0.5
MAX_STATE = 1 << 16

Reporter = Callable[[str], None]


def read_state(path: Path | None, boot_id: str) -> dict[str, Any] | None:
    """A previous stream's last word (this boot only), or None."""
    if path is None:
        return None
    try:
        state = json.loads(path.read_text()[:MAX_STATE])
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("boot_id") != boot_id:
        return None
    return {key: state.get(key) for key in ("stream", "next_seq", "produced")}


def identity() -> dict[str, str]:
    """Who this guest is: hostname and boot id (a fresh boot, a new id)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            boot_id = file.read().strip()
    except OSError:
        boot_id = "unknown"
    return {"hostname": socket.gethostname(), "boot_id": boot_id}


class Forwarder:
    """Batches, backlog and the connection to one collector."""

    def __init__(self, url: str | Endpoint, backlog_bytes: int = DEFAULT_LIMIT,
                 report: Reporter = lambda message: None,
                 hello: dict[str, Any] | None = None,
                 state_path: str | Path | None = None) -> None:
        from recorder_tracer.channel.transport import parse_url
        self.endpoint = url if isinstance(url, Endpoint) else parse_url(url)
        self.backlog = Backlog(backlog_bytes)
        self.report = report
        self.hello = {**identity(), **(hello or {}),
                      "stream": uuid.uuid4().hex[:16], "version": PROTOCOL_VERSION}
        # What a previous daemon of this guest had framed when it last said
        # so (it may have died by kill -9 with frames unsent): the collector
        # names them as lost in that stream's gaps.jsonl.
        self.state_path = Path(state_path) if state_path else None
        previous = read_state(self.state_path, self.hello["boot_id"])
        if previous is not None:
            self.hello["previous"] = previous
        self.connected = threading.Event()
        self.connections = 0
        # deque.append is atomic: a producer takes no lock per item; whoever
        # takes a batch holds `_take` until it is in the backlog, so batches
        # enter it in the order their items came.
        self._records: deque[Record] = deque()
        self._lines: deque[batch.ConsoleLine] = deque()
        self._take = threading.Lock()
        self._stop = threading.Event()
        self._connection: Connection | None = None
        self._threads: list[threading.Thread] = []

    # -- producers (any thread) -------------------------------------------

    def add_record(self, record: Record) -> None:
        self._records.append(record)
        if len(self._records) >= BATCH:
            self._frame_records()

    def add_console(self, source: str, text: str, ts: int | None = None) -> None:
        self._lines.append(batch.ConsoleLine(
            time.monotonic_ns() if ts is None else ts, source, text))
        if len(self._lines) >= BATCH:
            self._frame_lines()

    def _frame_records(self) -> None:
        with self._take:
            pop = self._records.popleft
            records = [pop() for _ in range(min(len(self._records), BATCH))]
            if records:
                self.backlog.add(Kind.RECORDS, batch.encode_records(records),
                                 len(records))

    def _frame_lines(self) -> None:
        with self._take:
            pop = self._lines.popleft
            lines = [pop() for _ in range(min(len(self._lines), BATCH))]
            if lines:
                self.backlog.add(Kind.CONSOLE, batch.encode_console(lines),
                                 len(lines))

    def add_metrics(self, exposition: bytes) -> None:
        self.backlog.add(Kind.METRICS,
                         batch.encode_metrics(time.monotonic_ns(), exposition))

    def add_snapshot(self, name: str, content: bytes) -> None:
        self.backlog.add(Kind.SNAPSHOT,
                         batch.encode_snapshot(time.monotonic_ns(), name, content))

    def flush(self) -> None:
        """Frame what is batched now (records first: lines may quote them)."""
        while self._records:
            self._frame_records()
        while self._lines:
            self._frame_lines()

    # -- the connection ---------------------------------------------------

    def start(self) -> None:
        for target in (self._run, self._flush_loop):
            thread = threading.Thread(target=target, daemon=True,
                                      name=f"forward-{target.__name__}")
            thread.start()
            self._threads.append(thread)

    def _flush_loop(self) -> None:
        next_state = 0.0
        while not self._stop.wait(FLUSH_S):
            self.flush()
            if self.state_path is not None and time.monotonic() >= next_state:
                next_state = time.monotonic() + STATE_INTERVAL_S
                self.write_state()

    def write_state(self) -> None:
        """Say what this stream has framed so far (atomically; best effort)."""
        assert self.state_path is not None
        state = {"boot_id": self.hello["boot_id"], "stream": self.hello["stream"],
                 "next_seq": self.backlog.next_seq,
                 "produced": dict(self.backlog.produced)}
        temporary = self.state_path.with_name(f".{self.state_path.name}.tmp")
        with contextlib.suppress(OSError):
            self.state_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary.write_text(json.dumps(state))
            os.replace(temporary, self.state_path)

    def _run(self) -> None:
        delay = 0.1
        down_since: float | None = None
        while not self._stop.is_set():
            try:
                connection = connect(self.endpoint)
            except OSError as error:
                if down_since is None:
                    down_since = time.monotonic()
                    self.report(f"forward: cannot reach {self.endpoint}: "
                                f"{error.strerror or error}; retrying")
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.1
            try:
                self._session(connection)
            except (OSError, FrameError, Closed) as error:
                if not self._stop.is_set():
                    why = str(error) or "closed by the collector"
                    self.report(f"forward: connection to {self.endpoint} lost: {why}")
            finally:
                self.connected.clear()
                self._connection = None
                connection.close()
            down_since = time.monotonic()
            self._stop.wait(delay)

    def _session(self, connection: Connection) -> None:
        self._connection = connection
        connection.set_timeout(HANDSHAKE_TIMEOUT_S)
        connection.send(control(Kind.HELLO, {
            **self.hello, "first_seq": self.backlog.first_seq,
            "next_seq": self.backlog.next_seq,
            "dropped": self.backlog.dropped.as_json()}))
        kind, _, payload = read_frame(connection.reader)
        if kind is not Kind.WELCOME:
            raise FrameError(f"expected WELCOME, got {kind.name}")
        welcome = parse_control(kind, payload)
        resume = field(welcome, "resume", int)
        self.backlog.ack(resume - 1)
        for _ in range(min(field(welcome, "probes", int), MAX_PROBES)):
            kind, _, payload = read_frame(connection.reader)
            self._answer(connection, kind, payload)
        connection.set_timeout(None)
        self.connections += 1
        self.connected.set()
        self.report(f"forward: connected to {self.endpoint}, from item {resume}")
        reader = threading.Thread(target=self._read_loop, args=(connection,),
                                  daemon=True, name="forward-reader")
        reader.start()
        cursor = max(resume, self.backlog.first_seq)
        next_stats = 0.0
        while not self._stop.is_set() and not connection.closed.is_set():
            cursor, data = self.backlog.frames_from(cursor, SEND_CHUNK, timeout=0.2)
            if data:
                connection.send(data)
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + STATS_INTERVAL_S
                connection.send(control(Kind.STATS, self.stats()))
        reader.join(timeout=1)

    def _read_loop(self, connection: Connection) -> None:
        try:
            while True:
                kind, _, payload = read_frame(connection.reader)
                self._answer(connection, kind, payload)
        except (OSError, FrameError, Closed, ValueError):
            pass
        finally:
            connection.closed.set()
            self.backlog.wake()

    def _answer(self, connection: Connection, kind: Kind, payload: bytes) -> None:
        now = time.monotonic_ns()
        if kind is Kind.PROBE:
            probe = parse_control(kind, payload)
            connection.send(control(Kind.PROBE_REPLY, {
                "id": field(probe, "id", int), "guest_ns": now}))
        elif kind is Kind.ACK:
            self.backlog.ack(field(parse_control(kind, payload), "seq", int))
        else:
            raise FrameError(f"unexpected {kind.name} from the collector")

    def stats(self) -> dict[str, Any]:
        """What the collector is told: drops, the backlog's fill."""
        return {"dropped": self.backlog.dropped.as_json(),
                "backlog_bytes": self.backlog.held_bytes(),
                "next_seq": self.backlog.next_seq}

    def close(self, drain_s: float = 2.0) -> None:
        """Frame the last batches, try to deliver them, stop."""
        self.flush()
        deadline = time.monotonic() + drain_s
        while (self.connected.is_set() and time.monotonic() < deadline
               and self.backlog.acked < self.backlog.next_seq - 1):
            time.sleep(0.02)
        self._stop.set()
        self.backlog.wake()
        connection = self._connection
        if connection is not None:
            connection.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.state_path is not None:     # (the flush thread has ended)
            if self.backlog.acked >= self.backlog.next_seq - 1:
                self.state_path.unlink(missing_ok=True)     # nothing lost
            else:
                self.write_state()      # the next daemon reports the rest


"""One CPU's batch ring (kernel/batch_stream.py), copied out as messages.

BPF's ring buffer holds variable-size messages, each behind an 8-byte
header (its length, a busy and a discard bit). `MessageRing.take()` copies
out what is committed, up to the first message still being written, and
releases its space to BPF; `refill()` does the same into a backlog while
the previous take is being decoded, so BPF gets room every few chunks.

Memory: a message is a memoryview into the region it was copied with, so
one live message keeps its whole region alive. The bound counts what is
held: the regions' bytes plus MESSAGE_COST a message, both of the backlog
and of what take() handed out until `release()` says its read is done.
A read gives back each chunk's share as it decodes it (`done()`), so
refills go on during a long read. Held is at most `share` per ring (the
stream's BACKLOG_MAX over its rings), and in memory one partly decoded
region (<= TAKE_MAX) more; beyond, the ring is left to fill and BPF waits
(backpressure into the traced process's ring, losses counted as before).
"""

from __future__ import annotations

import struct

from recorder_tracer.kernel.stream import MappedRing

RING_HEADER = 8
BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
TAKE_MAX = 1 << 20      # bytes one copy takes at most
# A message's memoryview (184 bytes) and its list slot: for short messages
# (a %s argument's ~100 bytes) more than the message itself.
MESSAGE_COST = 200
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class MessageRing(MappedRing):
    """One CPU's BPF ring buffer of variable-size messages, with a backlog."""

    def __init__(self, cpu: int, size: int, share: int) -> None:
        super().__init__(cpu, size, f"batch_cpu{cpu}")
        self.backlog: list[memoryview] = []
        self.share = max(TAKE_MAX, share)
        self.held = 0           # bytes of the backlog and of what is taken
        self._taken = 0         # of those, handed to the read under way

    def take(self) -> list[memoryview]:
        """The backlog, then the committed messages up to the first still
        being written, copied out in one slice; their space is released.
        Counted as held until release()."""
        messages, self.backlog = self.backlog, []
        messages += self._copy()
        self._taken = self.held
        return messages

    def done(self, size: int) -> None:
        """`size` bytes of what take() returned are decoded and dropped."""
        self.held -= size
        self._taken -= size

    def release(self, carried: int = 0) -> None:
        """The read of what take() returned is done; `carried` bytes of it
        (copied out of its regions) wait for the next read."""
        self.held += carried - self._taken
        self._taken = 0

    def refill(self) -> None:
        """Copy what is committed to the backlog, while held < share."""
        self.backlog += self._copy()

    def _copy(self) -> list[memoryview]:
        consumer = self._consumer.value
        committed = _U64.unpack_from(self._data, 0)[0] - consumer
        self.caught_up = committed <= 0
        room = min(TAKE_MAX, self.share - self.held)
        if committed <= 0:
            return []
        # The messages that fit the room, told from their headers in the
        # mapping (committed ones stay as they are until we release them),
        # then copied out in one slice of exactly their bytes.
        start = self._page + (consumer & self._mask)
        data, unpack = self._data, _U32.unpack_from
        spans: list[tuple[int, int]] = []
        position = 0
        while position + RING_HEADER <= committed:
            (header,) = unpack(data, start + position)
            if header & BUSY_BIT:
                break
            length = header & ~(BUSY_BIT | DISCARD_BIT)
            end = (position + RING_HEADER + length + 7) & ~7
            kept = not header & DISCARD_BIT
            if min(end, committed) + MESSAGE_COST * (len(spans) + kept) > room:
                break       # the next copy has it
            if kept:
                spans.append((position + RING_HEADER, position + RING_HEADER + length))
            position = end
        position = min(position, committed)
        self.caught_up = position >= committed
        if not position:
            return []
        view = memoryview(data[start:start + position])
        self._consumer.value = consumer + position
        self.held += position + MESSAGE_COST * len(spans)
        return [view[begin:end] for begin, end in spans]

"""The strings of a batch chunk's %s arguments, kept until it is delivered.

kernel/bpf/batch.c sends a chunk's STRING messages after the chunk, and
kernel/batch_stream.py holds a chunk with %s arguments for one read, so
its strings are there when it goes out. A string kept over two reads came
after its chunk went out (a read cut between the two, or a chunk sent at
the session's end without waiting): nothing will ask for it, so it is
dropped and counted rather than kept for the rest of the session.
"""

from __future__ import annotations

from recorder_tracer.decode.entry import CapturedString

# pid, topic, shard, index of the entry in its shard
EntryKey = tuple[int, int, int, int]


class AwaitedStrings:
    """Strings by entry and argument, from this read and the one before."""

    def __init__(self) -> None:
        self._new: dict[EntryKey, dict[int, CapturedString]] = {}
        self._old: dict[EntryKey, dict[int, CapturedString]] = {}
        self.dropped = 0        # strings whose entry went out without them

    def keep(self, key: EntryKey, arg: int, text: CapturedString) -> None:
        self._new.setdefault(key, {})[arg] = text

    def pop(self, key: EntryKey) -> dict[int, CapturedString] | None:
        """The strings of one entry, now delivered (None: it had none)."""
        found, newer = self._old.pop(key, None), self._new.pop(key, None)
        if found is None or newer is None:      # its arguments may straddle
            return newer if found is None else found    # two reads
        return found | newer

    def age(self, final: bool = False) -> None:
        """A read is done: what it took may serve the next one (none after
        a `final` read); what the read before took and nobody asked for is
        dropped."""
        self.dropped += len(self) if final else _count(self._old)
        self._old, self._new = ({} if final else self._new), {}

    def __len__(self) -> int:
        return _count(self._new) + _count(self._old)


def _count(strings: dict[EntryKey, dict[int, CapturedString]]) -> int:
    return sum(len(args) for args in strings.values())

"""A counting bcc program for attach tests: every hit adds one, so counts
are exact and say which processes trapped."""

from __future__ import annotations

from recorder_tracer.kernel import arm

COUNTER = b"""
BPF_ARRAY(hits, u64, 1);

int hit(void *ctx)
{
    int zero = 0;
    u64 *count = hits.lookup(&zero);
    if (count)
        __sync_fetch_and_add(count, 1);
    return 0;
}
"""


class Counter:
    """The counting program, loaded by bcc as the harvest is."""

    def __init__(self) -> None:
        import bcc
        self.bpf = bcc.BPF(text=COUNTER)
        self.fd: int = arm.register_bcc_program(
            self.bpf, self.bpf.load_func(b"hit", bcc.BPF.KPROBE))
        self.hits = self.bpf[b"hits"]

    def take(self) -> int:
        """Hits since the last take."""
        count = int(self.hits[0].value)
        self.hits[self.hits.Key(0)] = self.hits.Leaf(0)
        return count

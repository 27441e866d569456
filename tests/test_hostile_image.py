"""A process image closed by one thread while another reads through it.

The follower's thread closes a process's image when it execs; the loop's
thread may be decoding that process's records at the same moment. If the
close lands between the read taking the descriptor number and its pread,
and the follower then opens another process's /proc/PID/mem (it arms the
next process), the number is reused: the pread returns the other
process's memory, shown as the first one's format or string. The race is
made certain here by stopping the read at its pread until the other
thread is done (or, once reads and closes exclude each other, until it
is seen blocked).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from hostile_helpers import nobody_popen
from timing import scaled

from recorder_tracer.target import memory
from recorder_tracer.target.memory import ProcessImage

pytestmark = pytest.mark.host

ADDRESS = 0x10000000000
# Maps a page at ADDRESS holding argv[1], says so, waits.
HOLDER = f"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                      ctypes.c_int, ctypes.c_int, ctypes.c_long]
# PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE
page = libc.mmap({ADDRESS}, 4096, 3, 0x02 | 0x20 | 0x100000, -1, 0)
assert page == {ADDRESS}, ctypes.get_errno()
ctypes.memmove(page, sys.argv[1].encode(), len(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
"""


class Holder:
    def __init__(self, text: str) -> None:
        self.process = nobody_popen(sys.executable, "-c", HOLDER, text,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)
        assert self.process.stdout.readline() == "ready\n"
        self.pid = self.process.pid

    def close(self) -> None:
        self.process.communicate("\n", timeout=scaled(10))


@pytest.fixture
def holders() -> Iterator[tuple[Holder, Holder]]:
    pair = (Holder("P-format"), Holder("Q-secret"))
    yield pair
    for holder in pair:
        holder.close()


def test_a_read_never_goes_to_a_descriptor_closed_and_reused_meanwhile(
        holders: tuple[Holder, Holder], monkeypatch: pytest.MonkeyPatch) -> None:
    traced, other = holders
    image = ProcessImage.of(traced.pid)
    assert image.read(ADDRESS, 8) == b"P-format"
    opened: list[ProcessImage] = []
    follower_done = threading.Event()

    def follower() -> None:     # P exec'd: close its image, arm the next
        image.close()
        opened.append(ProcessImage.of(other.pid))
        follower_done.set()

    real_pread = os.pread
    stopped: list[int] = []

    def pread_after_the_follower(fd: int, size: int, offset: int) -> bytes:
        if offset == ADDRESS and not stopped:
            stopped.append(fd)
            threading.Thread(target=follower, daemon=True).start()
            # Without exclusion the follower runs to its end; with it, it
            # waits for this read: seen as not done in time.
            follower_done.wait(timeout=scaled(0.5))
        return real_pread(fd, size, offset)

    monkeypatch.setattr(memory.os, "pread", pread_after_the_follower)
    try:
        data = image.read(ADDRESS, 8)
        assert follower_done.wait(timeout=scaled(10))
    finally:
        monkeypatch.undo()
        for other_image in opened:
            other_image.close()
    assert stopped, "the read never reached its pread"
    assert data == b"P-format"
    assert image.read(ADDRESS, 8) is None       # closed: anonymous memory

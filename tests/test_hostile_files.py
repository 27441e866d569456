"""Files a traced process names, opened or written by root: nobody plays
the attacker (symlinks to root-only files, FIFOs, devices, huge files,
planted share files, pre-created snapshot directories)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_helpers import as_nobody, nobody_popen, public_dir
from timing import scaled

from recorder_tracer.decode.usdt_args import symbol_resolver
from recorder_tracer.errors import TracerError
from recorder_tracer.postmortem.snapshot_file import (
    list_snapshots,
    read_snapshot,
    write_snapshot,
)
from recorder_tracer.target import shm
from recorder_tracer.target.memory import (
    ProcessImage,
    load_bias,
    load_segments,
    read_maps,
)
from recorder_tracer.target.notes import mapped_files

SECRET = b"root-only secret\n"
MAPPER = """
import mmap, sys
path = sys.argv[1]
with open(path, "rb") as file:
    view = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ)
print("mapped", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def public() -> Iterator[Path]:
    with public_dir() as path:
        (path / "secret").write_bytes(SECRET)
        (path / "secret").chmod(0o600)
        yield path


class NobodyMapping:
    """A process of nobody's mapping a file nobody wrote."""

    def __init__(self, path: Path, content: bytes = b"public text\n") -> None:
        write = f"open({str(path)!r}, 'wb').write({content!r})"
        assert as_nobody(sys.executable, "-c", write).returncode == 0
        self.path = path
        self.process = nobody_popen(sys.executable, "-c", MAPPER, os.fsdecode(path),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout.readline() == b"mapped\n"
        self.pid = self.process.pid
        self.mapping = next(m for m in read_maps(self.pid)
                            if os.fsencode(m.path) == os.fsencode(path))

    def replace(self, *command: str) -> None:
        """nobody swaps the mapped path for something else."""
        assert as_nobody("rm", os.fsdecode(self.path)).returncode == 0
        assert as_nobody(*command).returncode == 0

    def close(self) -> None:
        self.process.communicate(b"\n", timeout=scaled(10))


@pytest.fixture
def mapper(public: Path) -> Iterator[NobodyMapping]:
    mapping = NobodyMapping(public / "nobody" / "lib.so")
    yield mapping
    mapping.close()


def test_mapped_path_swapped_for_symlink_never_reads_the_target(
        mapper: NobodyMapping, public: Path) -> None:
    mapper.replace("ln", "-s", str(public / "secret"), str(mapper.path))
    live = ProcessImage(mapper.pid, [mapper.mapping])
    # Live: the mapped file itself, through /proc/PID/map_files.
    assert live._read_from_file(mapper.mapping.start, 12) == b"public text\n"
    gone = ProcessImage.offline(mapper.pid, [mapper.mapping])
    assert gone.read(mapper.mapping.start, 64) is None


def test_mapped_path_swapped_for_fifo_does_not_hang(mapper: NobodyMapping) -> None:
    mapper.replace("mkfifo", str(mapper.path))
    started = time.monotonic()
    gone = ProcessImage.offline(mapper.pid, [mapper.mapping])
    assert gone.read(mapper.mapping.start, 64) is None
    assert time.monotonic() - started < scaled(2)


def test_elf_readers_refuse_a_fifo_at_a_probe_path(mapper: NobodyMapping) -> None:
    """The USDT side reads a probe's file for its segments and symbols:
    a FIFO there must not hang root (each reader runs in a thread; a hung
    one is freed by opening the FIFO's other end)."""
    mapper.replace("mkfifo", str(mapper.path))
    path = str(mapper.path)
    readers = {"load_bias": lambda: load_bias(read_maps(mapper.pid), path),
               "load_segments": lambda: load_segments(path),
               "symbol_resolver": lambda: symbol_resolver(path)("main")}
    for name, reader in readers.items():
        results: list[object] = []
        thread = threading.Thread(
            target=lambda out=results, read=reader: out.append(read()), daemon=True)
        thread.start()
        thread.join(timeout=scaled(5))
        if thread.is_alive():
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(timeout=scaled(5))
            pytest.fail(f"{name} blocked on a FIFO")
        assert results == [None] if name != "load_segments" else results == [[]]


def test_deleted_mapping_reads_the_mapped_file_only(
        mapper: NobodyMapping, public: Path) -> None:
    # The kernel shows "<path> (deleted)"; a file of that very name is
    # nobody's to plant.
    assert as_nobody("rm", str(mapper.path)).returncode == 0
    mapping = next(m for m in read_maps(mapper.pid) if m.path.endswith("(deleted)"))
    as_nobody("ln", "-s", str(public / "secret"), mapping.path)
    as_nobody("ln", "-s", str(public / "secret"), str(mapper.path))
    live = ProcessImage(mapper.pid, [mapping])
    assert live._read_from_file(mapping.start, 12) == b"public text\n"
    assert ProcessImage.offline(mapper.pid, [mapping]).read(mapping.start, 12) is None


def test_non_utf8_file_name_in_maps_is_read_not_fatal(public: Path) -> None:
    name = os.fsencode(str(public / "nobody")) + b"/lib\xff\xfe.so"
    mapping = NobodyMapping(Path(os.fsdecode(name)))
    try:
        assert any(os.fsencode(m.path) == name for m in read_maps(mapping.pid))
        assert any(os.fsencode(f.path) == name for f in mapped_files(mapping.pid))
        image = ProcessImage(mapping.pid, [mapping.mapping])
        assert image._read_from_file(mapping.mapping.start, 6) == b"public"
    finally:
        mapping.close()


# -- share files ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "sparse", "symlink"])
def test_hostile_share_file_is_refused_quickly(public: Path, kind: str) -> None:
    path = public / "nobody" / "app.4242.recorder"
    command = {"fifo": ["mkfifo", str(path)],
               "dev-zero": ["ln", "-s", "/dev/zero", str(path)],
               "sparse": ["truncate", "-s", "64G", str(path)],
               "symlink": ["ln", "-s", str(public / "secret"), str(path)]}[kind]
    assert as_nobody(*command).returncode == 0
    started = time.monotonic()
    with pytest.raises(TracerError):
        shm.open_share(path)
    assert time.monotonic() - started < scaled(2)


def test_share_file_with_endless_shards_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "app.7.recorder"
    header = shm.BLOCK.pack(shm.BLOCK_MAGIC, shm.KIND_HEADER, 4096, 0).ljust(64, b"\0")
    header += shm.FILE_HEADER.pack(shm.SHARE_MAGIC, 1, 144, 7, 4096, 0, 0,
                                   b"app", b"/bin/app")
    shard = (shm.BLOCK.pack(shm.BLOCK_MAGIC, shm.KIND_SHARD, 64, 0).ljust(64, b"\0")
             + shm.SHARD_FIELDS.pack(0, 0, 0, 1, 0))
    with open(path, "wb") as file:
        file.write(header.ljust(4096, b"\0"))
        file.write(shard.ljust(64 + shm.TOPIC.size, b"\0")[:64] * 100_000)
    started = time.monotonic()
    with pytest.raises(TracerError, match="more than 4096 shards"):
        shm.open_share(path)
    assert time.monotonic() - started < scaled(5)


def test_dump_shm_pid_takes_the_file_the_process_maps(
        progs: Path, public: Path) -> None:
    directory = public / "nobody"
    process = nobody_popen(str(progs / "workload_ticks"), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True,
                           env={"RECORDER_SHARE": str(directory)})
    try:
        pid = int(process.stdout.readline().split()[1])
        real = directory / f"workload_ticks.{pid}.recorder"
        # nobody plants a copy that sorts first, then makes it say other things.
        planted = directory / f"a.{pid}.recorder"
        assert as_nobody("cp", str(real), str(planted)).returncode == 0
        assert shm.share_file_of(str(directory), pid) == real
    finally:
        process.communicate("exit\n", timeout=scaled(10))


# -- snapshot files ------------------------------------------------------------

SNAPSHOT = {"kind": "recorder-snapshot", "version": 1, "pid": 1, "comm": "x",
            "time_ns": 5, "records": []}


def test_snapshot_dir_created_by_nobody_is_refused(public: Path) -> None:
    directory = public / "nobody" / "snapshots"
    assert as_nobody("mkdir", "-m", "0777", str(directory)).returncode == 0
    as_nobody("ln", "-s", str(public / "secret"), str(directory / "x.snapshot.json"))
    with pytest.raises(TracerError, match="belongs to uid 65534"):
        write_snapshot(directory, "x.snapshot.json", SNAPSHOT)
    assert (public / "secret").read_bytes() == SECRET


def test_snapshot_dir_symlink_is_refused(public: Path) -> None:
    directory = public / "nobody" / "snapshots"
    assert as_nobody("ln", "-s", str(public), str(directory)).returncode == 0
    with pytest.raises(TracerError):
        write_snapshot(directory, "secret", SNAPSHOT)
    assert (public / "secret").read_bytes() == SECRET


def test_snapshot_dir_made_by_root_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "snapshots"
    path = write_snapshot(directory, "x.snapshot.json", SNAPSHOT)
    assert directory.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_snapshot(path)["pid"] == 1


def test_fifo_named_like_a_snapshot_does_not_hang_listing(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "a.1.000000000000001.snapshot.json")
    write_snapshot(tmp_path, "b.2.000000000000002.snapshot.json", SNAPSHOT)
    started = time.monotonic()
    found = list_snapshots(tmp_path)
    assert time.monotonic() - started < scaled(2)
    assert found[0].signal.startswith("<")
    assert len(found) == 2


@pytest.mark.parametrize("text", [
    '{"kind": "recorder-snapshot", "version": 1, "pid": 1, "comm": "x", '
    '"time_ns": 1, "records": [{"ts": "now", "pid": 1, "tid": 1, "comm": "x", '
    '"topic": "t", "where": "w", "message": "m", "cpu": 0}]}',
    '{"kind": "recorder-snapshot", "version": 1, "pid": 1, "comm": "x", '
    '"time_ns": 1e400, "records": []}',
    '{"kind": "recorder-snapshot", "version": 1, "pid": 1, "comm": "x", '
    '"time_ns": 1' + "0" * 5000 + ', "records": []}',
    "[" * 100_000 + "]" * 100_000,
    '{"kind": "recorder-snapshot", "version": 1, "pid": 1, "comm": "x", '
    '"time_ns": 1, "records": [], "exit": {"description": 5}}',
])
def test_crafted_snapshot_gives_one_line_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.snapshot.json"
    path.write_text(text)
    with pytest.raises(TracerError):
        read_snapshot(path)
    recorder = shutil.which("recorder", path=str(Path(sys.executable).parent))
    for extra in ([], ["--chrome", str(tmp_path / "t.json")]):
        result = subprocess.run([recorder, "show", str(path), *extra],
                                capture_output=True, text=True, timeout=scaled(30))
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    result = subprocess.run([recorder, "snapshots", "--snapshot-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=scaled(30))
    assert result.returncode == 0 and "Traceback" not in result.stderr


def test_remembered_maps_file_is_bounded(tmp_path: Path) -> None:
    # Reader of the daemon's .processes/<pid>.json: a FIFO or a huge file
    # there is refused, never waited on.
    from recorder_tracer.target.safe_open import read_untrusted
    os.mkfifo(tmp_path / "1.json")
    with pytest.raises(OSError):
        read_untrusted(tmp_path / "1.json", 1 << 20)
    with open(tmp_path / "2.json", "wb") as file:
        file.truncate(1 << 30)
    with pytest.raises(OSError):
        read_untrusted(tmp_path / "2.json", 1 << 20)

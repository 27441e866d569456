"""Tracing other programs' USDT probes: argument specs, selectors, and
`recorder trace --usdt` on Debian's python3.11 and on our own workload.

CPython 3.11 fires python:function__entry only while python:line (or a
trace function) is on: its dispatch reaches the entry probe through the
tracing path (CPython gh-98894). So the tests that count calls arm both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from timing import scaled

from recorder_tracer.decode.usdt_args import (
    MAX_ARGS,
    PT_REGS_OFFSETS,
    ArgFormat,
    ArgKind,
    decode_value,
    format_value,
    parse_argument,
    parse_arguments,
    symbol_resolver,
)
from recorder_tracer.errors import TracerError
from recorder_tracer.kernel.usdt import COUNTER_NAMES, USDT_SITE_UNKNOWN
from recorder_tracer.session.loop import TraceSession
from recorder_tracer.session.options import TraceOptions
from recorder_tracer.session.usdt import UsdtSelector
from recorder_tracer.target import notes
from recorder_tracer.target.memory import load_bias, read_maps

RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]
PYTHON = "/usr/bin/python3.11"
POSTGRES = "/usr/lib/postgresql/15/bin/postgres"
PYTHON_ON_PATH = os.path.realpath(shutil.which("python3.11") or "python3.11")
requires_python = pytest.mark.skipif(not Path(PYTHON).exists(),
                                     reason=f"{PYTHON} is not installed")

# --------------------------------------------------------------------------
# Argument specs


@pytest.mark.parametrize(("text", "expected"), [
    # text: (kind, size, signed, register, offset, symbol)
    ("-4@%eax", (ArgKind.REG, 4, True, "ax", 0, None)),
    ("8@%r12", (ArgKind.REG, 8, False, "r12", 0, None)),
    ("-4@%r15d", (ArgKind.REG, 4, True, "r15", 0, None)),
    ("1@%al", (ArgKind.REG, 1, False, "ax", 0, None)),
    ("1@%sil", (ArgKind.REG, 1, False, "si", 0, None)),
    ("2@%r9w", (ArgKind.REG, 2, False, "r9", 0, None)),
    ("8@-40(%rbp)", (ArgKind.DEREF, 8, False, "bp", -40, None)),
    ("-4@112(%rsp)", (ArgKind.DEREF, 4, True, "sp", 112, None)),
    ("4@(%r12)", (ArgKind.DEREF, 4, False, "r12", 0, None)),
    ("4@$5", (ArgKind.CONST, 4, False, None, 5, None)),
    ("-4@$-1", (ArgKind.CONST, 4, True, None, -1, None)),
    ("-4@$8192", (ArgKind.CONST, 4, True, None, 8192, None)),
    ("-4@NBuffers(%rip)", (ArgKind.ABS, 4, True, None, 0, "NBuffers")),
    ("-4@40+CheckpointStats(%rip)",
     (ArgKind.ABS, 4, True, None, 40, "CheckpointStats")),
    ("8@sym-8(%rip)", (ArgKind.ABS, 8, False, None, -8, "sym")),
    # Not supported: shown as unreadable, never guessed.
    ("8@(%rax,%rbx,8)", (ArgKind.NONE, 8, False, None, 0, None)),
    ("1@%ah", (ArgKind.NONE, 1, False, None, 0, None)),
    ("8@16(%rip)", (ArgKind.NONE, 8, False, None, 0, None)),
    ("3@%eax", (ArgKind.NONE, 8, False, None, 0, None)),
])
def test_argument_spec_parses_each_operand_form(
        text: str, expected: tuple[Any, ...]) -> None:
    argument = parse_argument(text)

    assert (argument.kind, argument.size, argument.signed, argument.register,
            argument.offset, argument.symbol) == expected


@pytest.mark.parametrize("path", [PYTHON, POSTGRES])
def test_every_argument_debian_ships_is_supported(path: str) -> None:
    if not Path(path).exists():
        pytest.skip(f"{path} is not installed")
    resolve = symbol_resolver(path)
    arguments = [argument for probe in notes.probes_in_file(path)
                 for argument in parse_arguments(probe.arguments)]

    assert [a.text for a in arguments if not a.supported] == []
    assert [a.symbol for a in arguments
            if a.symbol and resolve(a.symbol) is None] == []


def test_symbols_resolve_to_readelf_addresses() -> None:
    if not Path(POSTGRES).exists():
        pytest.skip(f"{POSTGRES} is not installed")
    text = subprocess.run(["readelf", "-W", "--dyn-syms", POSTGRES], check=True,
                          capture_output=True, text=True).stdout
    expected = int(re.search(r"([0-9a-f]{16})\s+\d+\s+OBJECT\s+GLOBAL\s+\S+\s+"
                             r"\d+\s+NBuffers$", text, re.M)[1], 16)

    assert symbol_resolver(POSTGRES)("NBuffers") == expected


def test_python_constants_match_the_bpf_header() -> None:
    header = (Path(__file__).resolve().parent.parent / "tracer" / "recorder_tracer"
              / "kernel" / "bpf"
              / "usdt.h").read_text()
    defines = dict(re.findall(r"#define (USDT_\w+) (\w+)", header))
    enums = {name: int(value) for name, value in
             re.findall(r"(USDT_(?:ARG|COUNTER)_\w+) = (\d+)", header)}

    assert int(defines["USDT_MAX_ARGS"]) == MAX_ARGS
    assert int(defines["USDT_SITE_UNKNOWN"], 0) == USDT_SITE_UNKNOWN
    assert {kind.name: kind.value for kind in ArgKind} == {
        name.removeprefix("USDT_ARG_"): value for name, value in enums.items()
        if name.startswith("USDT_ARG_")}
    assert [name.removeprefix("USDT_COUNTER_").lower() for name, value in
            sorted(enums.items(), key=lambda item: item[1])
            if name.startswith("USDT_COUNTER_") and name != "USDT_COUNTER_COUNT"] \
        == list(COUNTER_NAMES)


def test_pt_regs_offsets_match_the_running_kernel() -> None:
    btf = Path("/sys/kernel/btf/vmlinux")
    if not btf.exists():
        pytest.skip("the kernel has no BTF")
    text = subprocess.run(["bpftool", "btf", "dump", "file", str(btf), "format",
                           "raw"], check=True, capture_output=True,
                          text=True).stdout
    struct = text.split("STRUCT 'pt_regs' size=168", 1)[1].split("\n[", 1)[0]
    members = {name: int(bits) // 8 for name, bits in
               re.findall(r"'(\w+)' type_id=\d+ bits_offset=(\d+)", struct)}

    assert {name: members[name] for name in PT_REGS_OFFSETS} == PT_REGS_OFFSETS


@pytest.mark.parametrize(("text", "fmt", "raw", "string", "value", "shown"), [
    ("8@%rbp", ArgFormat.AUTO, 0x7F00, b"work\0", "work", '"work"'),
    ("8@%rbp", ArgFormat.AUTO, 0x7F00, b"\x01\x02\0", 0x7F00, "0x7f00"),
    ("8@%rbp", ArgFormat.AUTO, 0, b"", 0, "0x0"),
    ("8@%rbp", ArgFormat.STRING, 0x7F00, b"a \"q\"\0", 'a "q"', '"a \\"q\\""'),
    ("8@%rbp", ArgFormat.STRING, 0x7F00, None, None, "<unreadable>"),
    ("8@%rbp", ArgFormat.HEX, 255, None, 255, "0xff"),
    ("-4@%eax", ArgFormat.SIGNED, 2**64 - 3, None, -3, "-3"),
    ("4@%eax", ArgFormat.UNSIGNED, 2**32 - 1, None, 2**32 - 1, "4294967295"),
])
def test_decoded_values_and_how_messages_show_them(
        text: str, fmt: ArgFormat, raw: int, string: bytes | None,
        value: Any, shown: str) -> None:
    length = len(string) if string else -14     # -EFAULT when unreadable
    decoded = decode_value(parse_argument(text), fmt, raw, False, string, length)

    assert (decoded, format_value(decoded, fmt)) == (value, shown)


@pytest.mark.parametrize(("text", "expected"), [
    ("/usr/bin/python3.11:python:function__entry",
     ("/usr/bin/python3.11", "python", "function__entry", ())),
    ("python3.11:python:line", (PYTHON_ON_PATH, "python", "line", ())),
    ("python:gc__*", (None, "python", "gc__*", ())),
    ("python:function__entry:s,s,d",
     (None, "python", "function__entry",
      (ArgFormat.STRING, ArgFormat.STRING, ArgFormat.SIGNED))),
    ("/usr/bin/python3.11:python:audit:s,x",
     ("/usr/bin/python3.11", "python", "audit",
      (ArgFormat.STRING, ArgFormat.HEX))),
])
def test_selector_names_path_probe_and_formats(
        text: str, expected: tuple[Any, ...]) -> None:
    if not Path(PYTHON).exists():
        pytest.skip(f"{PYTHON} is not installed")
    selector = UsdtSelector.parse(text)

    assert (selector.path, selector.provider, selector.probe,
            selector.formats) == expected


@pytest.mark.parametrize("text", ["python", "python:", "/no/such:p:n",
                                  "python:line:s,q,d,s,s,s,s"])
def test_bad_selector_is_an_error(text: str) -> None:
    with pytest.raises(TracerError):
        UsdtSelector.parse(text)


def test_bad_usdt_selector_is_one_line_error() -> None:
    result = subprocess.run([*RECORDER, "trace", "-p", "1", "tick", "--usdt",
                             "python"], capture_output=True, text=True,
                            timeout=scaled(30))

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("recorder: --usdt python: expected "
                             "[PATH:]PROVIDER:PROBE[:FORMATS]\n")


# --------------------------------------------------------------------------
# Tracing


class PythonTarget:
    """python3.11 -c SCRIPT, which prints "ready" and reads stdin lines."""

    def __init__(self, script: str) -> None:
        self.process = subprocess.Popen([PYTHON, "-c", script],
                                        stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.pid = self.process.pid
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
        self.process.wait(timeout=scaled(10))


class Tracing:
    """`recorder trace --json ARGS` in the background, once it has armed."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([*RECORDER, "trace", "--json", *args],
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        banner = self.process.stderr.readline()
        assert banner.startswith("Tracing "), banner + self.process.stderr.read()

    def finish(self, interrupt: bool = True) -> tuple[list[dict[str, Any]],
                                                      dict[str, Any], str]:
        """Stop (Ctrl-C) or wait for the end: (records, summary, stderr)."""
        if interrupt:
            self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=scaled(20))
        assert self.process.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[0]["type"] == "header"
        lines = lines[1:]
        assert lines[-1]["type"] == "summary"
        return lines[:-1], lines[-1], err


def semaphores(pid: int) -> dict[str, int]:
    """The semaphore values of process `pid`'s python probes."""
    result = subprocess.run([*RECORDER, "probes", "--json", str(pid)],
                            capture_output=True, text=True, timeout=scaled(30),
                            check=True)
    return {row["probe"]: row["semaphore_value"]
            for row in json.loads(result.stdout) if row["provider"] == "python"}


def line_of(script: str, text: str) -> int:
    """The 1-based line of `script` that is `text`."""
    return script.splitlines().index(text) + 1


CALLS = """\
import sys
def tick_23(n):
    return n * 2
print("ready", flush=True)
sys.stdin.readline()
for i in range(23):
    tick_23(i)
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.bpf
@requires_python
def test_function_entry_records_name_file_and_line() -> None:
    target = PythonTarget(CALLS)
    try:
        tracing = Tracing("--usdt", f"{PYTHON}:python:function__entry",
                          "--usdt", f"{PYTHON}:python:line", "-p", str(target.pid))
        armed = semaphores(target.pid)
        target.send("go")
        assert target.readline() == "done"
        records, summary, _ = tracing.finish()
        disarmed = semaphores(target.pid)
    finally:
        target.close()

    def_line = line_of(CALLS, "def tick_23(n):")
    entries = [r for r in records
               if r["topic"] == "function__entry" and r["args"][1] == "tick_23"]
    assert len(entries) == 23
    assert {(r["provider"], r["pid"], r["tid"], r["comm"], r["where"],
             r["message"]) for r in entries} == {
        ("python", target.pid, target.pid, "python3.11", "python3.11",
         f'arg0="<string>" arg1="tick_23" arg2={def_line}')}
    assert all(r["args"] == ["<string>", "tick_23", def_line] for r in entries)
    body = [r["args"] for r in records
            if r["topic"] == "line" and r["args"][1] == "tick_23"]
    assert body == [["<string>", "tick_23", def_line + 1]] * 23
    assert summary["lost"] == 0 and summary["received"] == len(records)
    # The kernel counted the semaphores while attached, and back down after.
    assert (armed["function__entry"], armed["line"], armed["function__return"]) \
        == (1, 1, 0)
    assert set(disarmed.values()) == {0}


COLLECTIONS = """\
import gc, sys
gc.disable()
print("ready", flush=True)
sys.stdin.readline()
for i in range(23):
    gc.collect(1)
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.bpf
@requires_python
def test_stack_memory_and_register_arguments_decode() -> None:
    target = PythonTarget(COLLECTIONS)
    try:
        # gc__start's generation is at 112(%rsp), gc__done's count in %r12.
        tracing = Tracing("--usdt", "python:gc__*", "-p", str(target.pid))
        target.send("go")
        assert target.readline() == "done"
        records, summary, _ = tracing.finish()
    finally:
        target.close()

    assert [r["topic"] for r in records] == ["gc__start", "gc__done"] * 23
    assert [r["args"] for r in records[::2]] == [[1]] * 23
    assert all(isinstance(r["args"][0], int) and r["args"][0] >= 0
               for r in records[1::2])
    assert summary["lost"] == 0


AUDITS = """\
import sys
for i in range(23):
    sys.audit("recorder.tick", i)
"""


@pytest.mark.bpf
@requires_python
def test_command_is_traced_from_its_first_probe() -> None:
    tracing = Tracing("--usdt", f"{PYTHON}:python:audit:s,x",
                      "-c", f"{PYTHON} -c '{AUDITS}'")
    records, summary, err = tracing.finish(interrupt=False)

    names = [r["args"][0] for r in records]
    ticks = [r for r in records if r["args"][0] == "recorder.tick"]
    assert len(ticks) == 23
    assert all(isinstance(r["args"][1], int) for r in ticks)
    # Startup's audit events come first: armed at exec, before any code ran.
    assert names.count("cpython.run_command") == 1
    assert names.index("cpython.run_command") < names.index("recorder.tick")
    assert summary["lost"] == 0 and summary["received"] == len(records)
    assert "arguments are lost" not in err


@pytest.mark.bpf
def test_site_address_is_load_bias_plus_note_address(progs: Path) -> None:
    from helpers.tracer import Workload

    path = str(progs / "workload_ticks")   # a PIE: its load bias is not 0
    workload = Workload(progs)
    records: list[Any] = []
    try:
        session = TraceSession(TraceOptions(
            pids=[workload.pid], topics=False,
            usdt=[UsdtSelector.parse(f"{path}:recorder:tick:x")]), records.append)
        session.start()
        assert session.usdt is not None
        process = session.usdt.processes[workload.pid]
        addresses = set(process.by_address)
        bias = load_bias(read_maps(workload.pid), path)
        workload.record("tick", 23)
        session.close()
    finally:
        workload.close()

    # tick's sites: its RECORD and the one RECORDER_DEFINE adds.
    sites = [p for p in notes.probes_in_file(path) if p.name == "tick"]
    assert bias is not None and bias != 0
    assert len(sites) == 2
    assert addresses == {bias + probe.address for probe in sites}
    assert session.unknown_sites == 0
    # arg0 is the address of the entry just written: 23 distinct ring slots;
    # arg1 a copy of its args[0] (bpftrace-style tools see 6 arguments).
    assert [(r.provider, r.topic, len(r.args)) for r in records] == \
        [("recorder", "tick", 6)] * 23
    assert len({r.args[0] for r in records}) == 23
    assert [r.args[1] for r in records] == list(range(23))
    assert all(r.message.startswith(f"arg0={r.args[0]:#x} arg1=")
               for r in records)


@pytest.mark.bpf
@requires_python
def test_probe_the_process_lacks_is_one_line_error() -> None:
    target = PythonTarget('print("ready", flush=True); input()')
    try:
        result = subprocess.run([*RECORDER, "trace", "--usdt", "python:nosuch",
                                 "-p", str(target.pid)], capture_output=True,
                                text=True, timeout=scaled(30))
    finally:
        target.close()

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"recorder: no USDT probe python:nosuch in process "
                             f"{target.pid} (see `recorder probes`)\n")


class PostgresCluster:
    """A throwaway PostgreSQL cluster run by user postgres, on a socket only."""

    def __init__(self, shared_buffers_mb: int) -> None:
        import pwd
        import tempfile

        self.user = pwd.getpwnam("postgres")
        self.bin = Path(POSTGRES).parent
        self.base = Path(tempfile.mkdtemp(prefix="recorder-pg-"))
        os.chown(self.base, self.user.pw_uid, self.user.pw_gid)
        self.data = self.base / "data"
        self.run("initdb", "-D", str(self.data), "-A", "trust", "--no-sync")
        self.run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.base / "log"),
                 "-o", f"-k {self.base} -p 5423 -c listen_addresses= "
                       f"-c shared_buffers={shared_buffers_mb}MB", "start")
        self.postmaster = int((self.data / "postmaster.pid").read_text().split()[0])

    def run(self, program: str, *args: str) -> str:
        return subprocess.run([str(self.bin / program), *args], check=True,
                              capture_output=True, text=True, timeout=scaled(30),
                              user=self.user.pw_uid, group=self.user.pw_gid,
                              cwd=self.base).stdout

    def sql(self, statement: str) -> str:
        return self.run("psql", "-X", "-A", "-t", "-h", str(self.base), "-p", "5423",
                        "-c", statement, "postgres")

    def child(self, title: str) -> int:
        """The PID of the postmaster's child whose title is `title`."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.postmaster and cmdline.startswith(title.encode()):
                return int(entry.name)
        raise AssertionError(f"no {title!r} process")

    def close(self) -> None:
        import shutil as shell

        self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shell.rmtree(self.base)


@pytest.mark.bpf
def test_symbol_arguments_read_globals_of_a_pie() -> None:
    try:
        import pwd
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    if not Path(POSTGRES).exists():
        pytest.skip(f"{POSTGRES} is not installed")
    buffers = 23 * 1024 // 8       # shared_buffers=23MB in 8 kB pages
    cluster = PostgresCluster(shared_buffers_mb=23)
    try:
        # -4@NBuffers(%rip) and -4@40+CheckpointStats(%rip): globals of a PIE.
        tracing = Tracing("--usdt", f"{POSTGRES}:postgresql:buffer__sync__done",
                          "--usdt", f"{POSTGRES}:postgresql:checkpoint__done",
                          "-p", str(cluster.child("postgres: checkpointer")))
        assert cluster.sql("show shared_buffers").strip() == "23MB"
        cluster.sql("create table t as select 23 as x")   # dirty buffers to sync
        cluster.sql("checkpoint")
        records, summary, _ = tracing.finish()
    finally:
        cluster.close()

    assert [(r["provider"], r["topic"]) for r in records] == [
        ("postgresql", "buffer__sync__done"), ("postgresql", "checkpoint__done")]
    sync, checkpoint = (r["args"] for r in records)
    assert sync[0] == buffers and checkpoint[1] == buffers
    assert len(checkpoint) == 5 and all(isinstance(a, int) for a in checkpoint)
    assert summary["lost"] == 0


# --------------------------------------------------------------------------
# USDT probes beside recorder topics, in one loop and one output


@pytest.mark.bpf
def test_topics_and_usdt_probes_of_a_command_merge_in_time_order(
        progs: Path) -> None:
    path = str(progs / "workload_burst")
    # The same 23 hits, seen by both programs: recorder topic `burst` (the
    # entry, decoded) and USDT probe recorder:burst (arg0, its address).
    tracing = Tracing("-c", f"{path} 23 3", "burst",
                      "--usdt", f"{path}:recorder:burst:x")
    records, summary, err = tracing.finish(interrupt=False)

    # Each entry is stamped before its probe traps, the USDT hit at the
    # trap: merged by time, each topic record comes just before its hit.
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert [r["message"] for r in records[0::2]] == [
        f"burst {i} of 23" for i in range(23)]
    assert all(r["message"].startswith(f"arg0={r['args'][0]:#x} ")
               for r in records[1::2])
    assert len({r["args"][0] for r in records[1::2]}) == 23
    assert {(r["pid"], r["topic"], r["where"]) for r in records[1::2]} == {
        (records[0]["pid"], "burst", "workload_burst")}
    assert (summary["received"], summary["lost"]) == (46, 0)
    assert (f"recorder: process {records[0]['pid']} (workload_burst) exited: "
            "exit code 3") in err.splitlines()


@pytest.mark.bpf
def test_topics_and_usdt_probes_of_a_running_process(progs: Path) -> None:
    from helpers.tracer import Workload

    path = str(progs / "workload_ticks")
    workload = Workload(progs)
    try:
        tracing = Tracing("-p", str(workload.pid), "tick",
                          "--usdt", f"{path}:recorder:tock:x")
        for topic, count in [("tick", 5), ("tock", 3), ("tick", 18), ("tock", 4)]:
            workload.record(topic, count)
        records, summary, _ = tracing.finish()
    finally:
        workload.close()

    # Two programs, one output in time order: the topic's records decoded,
    # the USDT probe's with its argument (the entry's address).
    assert [r["topic"] for r in records] == \
        ["tick"] * 5 + ["tock"] * 3 + ["tick"] * 18 + ["tock"] * 4
    ticks = [r for r in records if r["topic"] == "tick"]
    assert [r["message"] for r in ticks] == [
        f"tick {i} of tick-string half {i * 0.5:.1f}" for i in [*range(5), *range(18)]]
    assert all(r["message"].startswith(f"arg0={r['args'][0]:#x} ")
               for r in records if r["topic"] == "tock")
    assert (summary["received"], summary["lost"]) == (30, 0)


@pytest.mark.bpf
def test_usdt_follows_processes_by_name(progs: Path) -> None:
    from helpers.tracer import Workload

    path = str(progs / "workload_ticks")
    tracing = Tracing("--comm", "workload_ticks", "--usdt",
                      f"{path}:recorder:tock:x")
    workload = Workload(progs)      # started after the tracer
    try:
        _wait_for_armed(workload.pid, "tock")
        workload.record("tock", 7)
        records, summary, err = tracing.finish()
        assert summary["lost"] == 0
    finally:
        workload.close()

    mine = [r for r in records if r["pid"] == workload.pid]
    assert [r["topic"] for r in mine] == ["tock"] * 7
    assert f"recorder: tracing new process {workload.pid} (workload_ticks)" in err


def _wait_for_armed(pid: int, probe: str, timeout: float = 10.0) -> None:
    """Wait until `pid`'s semaphore of recorder:`probe` is raised."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run([*RECORDER, "probes", "--json", str(pid)],
                                capture_output=True, text=True, timeout=scaled(30))
        rows = json.loads(result.stdout or "[]")
        if any(row["probe"] == probe and row["semaphore_value"] for row in rows):
            return
        time.sleep(0.1)
    raise AssertionError(f"recorder:{probe} never armed in {pid}")

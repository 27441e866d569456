"""The Python API (recorder._core): values, format checks, threads, fork,
RECORDER_TRACES, the logging bridge, spans and fatal signals.

Rings are read from outside the recording process where exactness matters:
its RECORDER_SHARE file (parsed by test_core_share) holds the raw entries,
and its memory the strings they point to.
"""

from __future__ import annotations

import doctest
import json
import logging
import math
import os
import re
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.share import ShareFile, parse, topic_entries
from helpers.tracer import PythonWorkload
from timing import scaled

import recorder
from recorder_tracer.target.memory import ProcessImage

WORKLOAD = Path(__file__).parent / "workloads" / "py_api.py"
sys.path.insert(0, str(WORKLOAD.parent))
from py_api import VALUES  # noqa: E402

# Fields of test_core_share.ENTRY: timestamp, sequence, tid, topic_id,
# arg_types, cpu, nargs, flags, format, where, args...
TIMESTAMP, TID, ARG_TYPES, NARGS, FLAGS, FORMAT, WHERE, ARGS = 0, 2, 4, 6, 7, 8, 9, 10
INT, DOUBLE, STRING, POINTER = range(4)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    env.update(extra)
    return env


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=scaled(60), env=clean_env(**env))


class SharedWorkload:
    """tests/workloads/py_api.py SCENARIO with its rings in a share file."""

    def __init__(self, scenario: str, directory: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKLOAD), scenario], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
            env=clean_env(RECORDER_SHARE=str(directory)))
        assert self.process.stdout is not None
        self.pid = int(self.process.stdout.readline().split()[1])
        (self.path,) = directory.glob(f"*.{self.pid}.recorder")

    def entries(self, topic: str) -> list[tuple[int, ...]]:
        share: ShareFile = parse(self.path)
        return topic_entries(share, topic)      # by timestamp

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=scaled(10))


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Callable[[str], SharedWorkload]]:
    started: list[SharedWorkload] = []

    def start(scenario: str) -> SharedWorkload:
        started.append(SharedWorkload(scenario, tmp_path))
        return started[-1]
    yield start
    for workload in started:
        workload.close()


def slot(value: int) -> int:
    return struct.unpack("<q", struct.pack("<Q", value & (2**64 - 1)))[0]


def double_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


# --------------------------------------------------------------------------
# Values and formats


def test_values_round_trip_through_the_ring_exactly(shared) -> None:
    workload = shared("values")
    entries = workload.entries("values")
    image = ProcessImage.of(workload.pid)
    assert [image.string(e[FORMAT]) for e in entries] == [f for f, _ in VALUES]
    assert all(image.string(e[WHERE]).endswith("py_api.py:34") for e in entries)
    ints, floats, from_int, text, pointer = entries

    assert ints[NARGS] == 5 and ints[ARG_TYPES] == 0
    assert ints[ARGS:ARGS + 5] == tuple(slot(v) for v in VALUES[0][1])

    assert floats[ARG_TYPES] == 0b01010101
    got = [struct.unpack("<d", struct.pack("<q", v))[0]
           for v in floats[ARGS:ARGS + 4]]
    assert got == list(VALUES[1][1])
    assert math.isinf(got[3])
    assert from_int[ARGS] == double_bits(7.0)

    assert text[ARG_TYPES] == 0b10101010
    strings = [image.read(address, 64).split(b"\0", 1)[0]
               for address in text[ARGS:ARGS + 4]]
    assert strings == ["héllo ☃ 𝄞".encode(), b"raw \xc3\xa9 bytes", b"None",
                       b"False"]

    assert pointer[ARG_TYPES] == 0b1111
    assert pointer[ARGS:ARGS + 2] == (0, 0xDEADBEEF)


@pytest.mark.parametrize(("format", "arguments", "error", "message"), [
    ("sent %d bytes", (), TypeError, "takes 1 argument, got 0"),
    ("sent %d bytes", (1, 2), TypeError, "takes 1 argument, got 2"),
    ("sent %d bytes", ("many",), TypeError, "argument 1 (%d) needs an int, not str"),
    ("sent %d bytes", (1.5,), TypeError, "needs an int, not float"),
    ("to %s", (42,), TypeError, "argument 1 (%s) needs a str, bytes or None, not int"),
    ("ratio %.2f", ("1",), TypeError, "needs a float or an int, not str"),
    ("at %p", (1.0,), TypeError, "needs an int or None, not float"),
    ("width %*d", ("3", 1), TypeError, "argument 1 (%*) needs an int"),
    ("bad %y", (1,), TypeError, "unsupported conversion '%y'"),
    ("count %n", (1,), TypeError, "unsupported conversion '%n'"),
    ("%d" * 13, tuple(range(13)), TypeError, "takes more than 12 arguments"),
    ("big %d", (2**64,), OverflowError, "does not fit in 64 bits"),
    ("small %d", (-(2**63) - 1,), OverflowError, "does not fit in 64 bits"),
    ("nul %s", ("a\0b",), ValueError, "contains a NUL character"),
    ("nul %s", (b"a\0b",), ValueError, "contains a NUL character"),
])
def test_a_format_that_does_not_match_its_arguments_raises(
        format: str, arguments: tuple, error: type, message: str) -> None:
    checked = recorder.Recorder("pyapi_checked")
    with pytest.raises(error, match=r"^recorder: ") as raised:
        checked.record(format, *arguments)
    assert message in str(raised.value)
    with pytest.raises(error):
        recorder.record("pyapi_checked", format, *arguments)


def test_matching_formats_record_and_dump(capfd) -> None:
    matched = recorder.Recorder("pyapi_matched", 8, "formats that match")
    matched.record("%5.1f%% of %-4s|%x %c %*d %%", 99.25, "disk", 255, 65, 4, 7)
    recorder.record("pyapi_matched", "no arguments")
    assert recorder.dump("pyapi_matched") == 2
    err = capfd.readouterr().err
    assert " 99.2% of disk|ff A    7 %\n" in err
    assert "pyapi_matched: no arguments" in err
    assert f"test_pyapi.py:{sys._getframe().f_lineno - 6}:" in err


def test_a_disabled_topic_records_and_checks_nothing(capfd) -> None:
    off = recorder.Recorder("pyapi_off", 8)
    recorder.trace_set("/pyapi_off")
    assert off.trace == -1
    off.record("checked only when on %d", "not an int")
    recorder.trace_set("pyapi_off=0")
    off.record("on %d", 1)
    assert recorder.dump("pyapi_off") == 1
    assert "on 1" in capfd.readouterr().err


def test_recorders_topics_and_trace_set() -> None:
    first = recorder.Recorder("pyapi_same", 16, "first")
    again = recorder.Recorder("pyapi_same", 99, "second")
    assert (again.id, again.size, again.description) == (first.id, 16, "first")
    assert repr(first) == "recorder.Recorder('pyapi_same', size=16)"
    names = recorder.topics()
    assert names[0] == "recorder_core" and "pyapi_same" in names
    with pytest.raises(ValueError, match="recorder: invalid topic regex"):
        recorder.trace_set("(")
    with pytest.raises(ValueError, match="recorder: bad topic name"):
        recorder.Recorder("")
    with pytest.raises(ValueError, match="recorder: size must be"):
        recorder.Recorder("pyapi_zero", 0)


# --------------------------------------------------------------------------
# Threads, fork, multiprocessing


def test_four_threads_keep_every_record(capfd) -> None:
    threaded = recorder.Recorder("pyapi_threads", 4096, "4 threads")
    start = threading.Barrier(4)

    def work(thread: int) -> None:
        start.wait()
        for index in range(500):
            threaded.record("thread %d record %d", thread, index)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert recorder.dump("pyapi_threads") == 2000
    seen = [tuple(int(word) for word in line.split()[-3::2])
            for line in capfd.readouterr().err.splitlines()
            if "pyapi_threads: thread" in line]
    assert sorted(seen) == [(t, i) for t in range(4) for i in range(500)]


FORK = """
import os, recorder
forked = recorder.Recorder("forked", 16)
forked.record("before fork in %d", os.getpid())
pid = os.fork()
if pid == 0:
    forked.record("in child %d", os.getpid())
    print(os.getpid(), flush=True)
    recorder.dump("forked")
    os._exit(0)
os.waitpid(pid, 0)
forked.record("after fork in %d", os.getpid())
recorder.dump("forked")
"""


def test_a_forked_child_records_into_its_own_copy() -> None:
    run = run_python(FORK)
    assert run.returncode == 0, run.stderr
    child = int(run.stdout)
    lines = [line.split(" ", 1)[1] for line in run.stderr.splitlines()]
    tids = [int(line.split("] ")[0].split()[1]) for line in lines]
    messages = [line.split("] ", 1)[1] for line in lines]
    # The child's dump: the history before fork, then its own record under
    # its own thread id (the core resets the id cache in the child); the
    # parent's dump never shows the child's record.
    assert messages == [f"forked: before fork in {tids[0]}",
                        f"forked: in child {child}",
                        f"forked: before fork in {tids[0]}",
                        f"forked: after fork in {tids[0]}"]
    assert tids[1] == child != tids[0]


MULTIPROCESSING = """
import functools, multiprocessing, os, sys, recorder

def work(topic, index):
    topic.record("task %d in %d", index, os.getpid())
    return recorder.dump(topic.name)

if __name__ == "__main__":
    topic = recorder.Recorder("mp_work", 32, "passed to workers by pickle")
    for method in ("fork", "spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            shown = pool.map(functools.partial(work, topic), range(8))
            print(method, sum(shown) >= 8, flush=True)
"""


def test_multiprocessing_workers_record(tmp_path: Path) -> None:
    script = tmp_path / "mp.py"
    script.write_text(MULTIPROCESSING)
    run = subprocess.run([sys.executable, str(script)], capture_output=True,
                         text=True, timeout=scaled(120), env=clean_env())
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["fork", "True", "spawn", "True",
                                  "forkserver", "True"]
    assert run.stderr.count("mp_work: task") >= 24


# --------------------------------------------------------------------------
# Printing, logging


TRACES = """
import recorder
recorder.Recorder("printed_late").record("printed %d", 1)
recorder.Recorder("quiet").record("quiet %d", 2)
recorder.trace_set("quiet")
recorder.record("quiet", "now printed %s", "too")
"""


def test_recorder_traces_prints_topics_made_after_import() -> None:
    run = run_python(TRACES, RECORDER_TRACES="printed_.*")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "printed_late: printed 1", "quiet: now printed too"]
    assert lines[0].startswith("<string>:3: [")


def test_logging_records_go_into_topics_named_after_loggers(capfd) -> None:
    log = logging.getLogger("pyapi.app")
    handler = recorder.LoggingHandler(size=8)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        log.warning("disk %d%% full on %s", 91, "/var")
        line = sys._getframe().f_lineno - 1
        logging.getLogger("pyapi.app.db").debug("query took %.1f ms", 2.5)
    finally:
        log.removeHandler(handler)
    log.info("not recorded: the handler is gone")
    assert recorder.dump("pyapi\\.app.*") == 2
    err = capfd.readouterr().err
    assert f"test_pyapi.py:{line}: [" in err
    assert "pyapi.app: WARNING disk 91% full on /var\n" in err
    assert "pyapi.app.db: DEBUG query took 2.5 ms\n" in err
    assert "pyapi.app" in recorder.topics()


def test_logging_keeps_the_calls_arguments_as_values(tmp_path: Path) -> None:
    from recorder_tracer.target import shm
    code = """if True:
        import logging, recorder
        log = logging.getLogger("kept")
        log.addHandler(recorder.LoggingHandler())
        log.warning("disk %d%% full on %s, %.1f GB left", 91, "/var", 2.5)
        log.error("odd %r", 23)
        log.error("no arguments: 100%")
        print("logged", flush=True)
        input()
    """
    # The share file lives as long as the process: read it meanwhile.
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               env=clean_env(RECORDER_SHARE=str(tmp_path)))
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline() == "logged\n"
        (path,) = tmp_path.glob("*.recorder")
        share = shm.open_share(str(path))
        records = [record for record in shm.share_records(share, 64)
                   if record.topic == "kept"]
    finally:
        process.communicate("\n", timeout=scaled(10))
    assert [(record.message, record.args) for record in records] == [
        ("WARNING disk 91% full on /var, 2.5 GB left", ["WARNING", 91, "/var", 2.5]),
        ("ERROR odd 23", ["ERROR", "odd 23"]),
        ("ERROR no arguments: 100%", ["ERROR", "no arguments: 100%"]),
    ]


# --------------------------------------------------------------------------
# Spans


def test_spans_record_begin_and_end_with_their_duration(shared) -> None:
    workload = shared("spans")
    image = ProcessImage.of(workload.pid)

    def spans(topic: str) -> list[tuple[int, ...]]:
        entries = workload.entries(topic)
        assert [e[FLAGS] for e in entries[:2]] == [recorder.SPAN_BEGIN,
                                                  recorder.SPAN_END]
        return entries

    begin, end = spans("slow")
    assert (begin[NARGS], image.string(begin[FORMAT])) == (0, "begin")
    assert (end[NARGS], end[ARG_TYPES], image.string(end[FORMAT])) == (
        1, INT, "end %llu ns")
    assert 50_000_000 <= end[ARGS] <= end[TIMESTAMP] - begin[TIMESTAMP]
    assert image.string(begin[WHERE]) == image.string(end[WHERE])
    assert image.string(begin[WHERE]).endswith("py_api.py:53")

    call = spans("traced_call")
    assert call[1][ARGS] >= 10_000_000
    assert image.string(call[0][WHERE]).endswith("py_api.py:37")

    # Three coroutines overlap under asyncio: three begins, then the ends,
    # each timed from its own begin.
    tasks = workload.entries("traced_task")
    assert [e[FLAGS] for e in tasks] == [recorder.SPAN_BEGIN] * 3 + [
        recorder.SPAN_END] * 3
    # At least its sleep, at most its end less the first begin (a fixed
    # 15 ms overshoot bound failed beside a VM run).
    first_begin = tasks[0][TIMESTAMP]
    assert [20_000_000 * (i + 1) <= end[ARGS] <= end[TIMESTAMP] - first_begin
            for i, end in enumerate(tasks[3:])] == [True] * 3

    _, failed = spans("failing")
    assert image.string(failed[FORMAT]) == "end %llu ns, raised %s"
    assert image.string(failed[ARGS + 1]) == "KeyError"


def test_span_and_traced_in_process(capfd) -> None:
    with recorder.span("pyapi_span") as entered:
        assert entered.name == "pyapi_span"

    @recorder.traced
    def twice(value: int) -> int:
        return 2 * value
    assert twice(21) == 42
    assert twice.__name__ == "twice"

    @recorder.traced(name="pyapi_generator")
    def count(limit: int) -> Iterator[int]:
        yield from range(limit)
    assert list(count(3)) == [0, 1, 2]
    assert recorder.dump("pyapi_span|.*twice|pyapi_generator") == 6
    err = capfd.readouterr().err
    assert "pyapi_span: begin" in err and "pyapi_span: end " in err
    assert "test_pyapi.test_span_and_traced_in_process.<locals>.twice: end" in err
    assert "pyapi_generator: begin" in err and "pyapi_generator: end " in err


# --------------------------------------------------------------------------
# Fatal signals


CRASH = """
import faulthandler, sys, recorder
if sys.argv[1] == "before":
    faulthandler.enable()
import recorder._core
recorder.record("crash", "last words %d", 42)
if sys.argv[1] == "after":
    faulthandler.enable()
faulthandler._sigsegv()
"""


@pytest.mark.parametrize("faulthandler_enabled", ["none", "before", "after"])
def test_a_fatal_signal_dumps_and_still_kills(faulthandler_enabled: str) -> None:
    run = subprocess.run([sys.executable, "-c", CRASH, faulthandler_enabled],
                         capture_output=True, text=True, timeout=scaled(60),
                         env=clean_env())
    assert run.returncode == -signal.SIGSEGV
    assert "recorder: received signal 11 (SEGV), dumping" in run.stderr
    assert "crash: last words 42" in run.stderr
    fatal = "Fatal Python error: Segmentation fault" in run.stderr
    assert fatal == (faulthandler_enabled != "none")


# --------------------------------------------------------------------------
# Tracers: bpftrace on the run-time probe, `recorder probes`, `recorder trace`

BPFTRACE_PROGRAM = Path(__file__).parent / "bpftrace" / "python_records.bt"


def uprobes_of(pid: int) -> int:
    """How many perf-event probes process `pid` (a bpftrace) has attached."""
    listing = subprocess.run(["bpftool", "perf", "list", "-j"], capture_output=True,
                             text=True, check=True).stdout
    return sum(entry.get("pid") == pid for entry in json.loads(listing or "[]"))


class Interrupted:
    """A tracer command, killed on the way out unless it ended first."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)

    def interrupt(self) -> tuple[str, str]:
        """Ctrl-C, as a user stops it; (stdout, stderr)."""
        self.process.send_signal(signal.SIGINT)
        return self.process.communicate(timeout=scaled(30))

    def __enter__(self) -> Interrupted:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.mark.bpf
def test_bpftrace_on_the_runtime_probe_sees_python_records() -> None:
    from helpers.tracer import wait_for

    from recorder_tracer.target.dynamic import open_memory, set_armed

    with PythonWorkload() as workload:
        workload.record("py_armed", 1)
        workload.record("py_unarmed", 1)
        topics = {t.name: t for t in ProcessImage.of(workload.pid).topics()}
        memory = open_memory(workload.pid)
        assert memory is not None
        assert set_armed(memory, topics["py_armed"], True)
        os.close(memory)
        with Interrupted(["bpftrace", "-p", str(workload.pid),
                          str(BPFTRACE_PROGRAM), "3"]) as bpftrace:
            wait_for(lambda: uprobes_of(bpftrace.process.pid) >= 1, timeout=scaled(60))
            workload.record("py_unarmed", 2)
            workload.record("py_armed", 3)
            # bpftrace exits at 3 records
            output, errors = bpftrace.process.communicate(timeout=scaled(30))
    records = [line.split(" ", 1)[1] for line in output.splitlines()
               if line.startswith("record ")]
    half = [double_bits(i / 2) & (2**64 - 1) for i in range(3)]
    assert records == [
        f"{topics['py_armed'].id} value %d of %s half %.1f {i} py_armed {half[i]:x}"
        for i in range(3)], errors


@pytest.mark.bpf
def test_recorder_probes_and_trace_show_a_python_program() -> None:
    from helpers.tracer import wait_for

    from recorder_tracer.target.dynamic import read_armed

    cli = str(Path(sys.executable).parent / "recorder")
    with PythonWorkload() as workload:
        workload.record("py_cli", 1)
        probes = subprocess.run([cli, "probes", str(workload.pid)], capture_output=True,
                                text=True, timeout=scaled(60), check=True).stdout
        assert re.search(rf"^{workload.pid} +_core\.cpython", probes, re.MULTILINE)
        assert "recorder:recorder_dynamic" in probes
        # Its run-time topic is listed too: "rt" for sites, unarmed (SEM 0).
        assert re.search(rf"^{workload.pid} +\S+ +recorder:py_cli +rt +0 ", probes,
                         re.MULTILINE), probes
        topic = next(t for t in ProcessImage.of(workload.pid).topics()
                     if t.name == "py_cli")
        # --latency: the armed flag says when the trap is in place.
        with Interrupted([cli, "trace", "-p", str(workload.pid), "--latency",
                          "py_cli"]) as trace:
            wait_for(lambda: read_armed(workload.pid, topic), timeout=scaled(60))
            workload.record("py_cli", 3)
            output, errors = trace.interrupt()
    rows = [line.split() for line in output.splitlines() if " py_cli " in line]
    assert [row[5:] for row in rows] == [
        ["..s/py_ticks.py:22", "value", str(i), "of", "py_cli", "half", f"{i / 2}"]
        for i in range(3)], errors
    assert {int(row[1]) for row in rows} == {workload.pid}


# --------------------------------------------------------------------------
# Docstrings


def test_docstring_examples_run() -> None:
    import recorder._core
    import recorder.bridge
    import recorder.spans

    for module in (recorder, recorder._core, recorder.spans, recorder.bridge):
        assert doctest.testmod(module).failed == 0, module.__name__
    # The extension's types: doctest does not look inside them by itself.
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner()
    for name, text in [("Recorder", recorder.Recorder.__doc__),
                       ("Recorder.record", recorder.Recorder.record.__doc__),
                       ("span", recorder.span.__doc__)]:
        test = parser.get_doctest(text, vars(recorder._core), name, None, 0)
        assert test.examples, name
        assert runner.run(test).failed == 0, name


ABORT = """
import os, recorder
recorder.record("aborting", "about to abort %s", "now")
os.abort()
"""


def test_abort_dumps_and_still_kills() -> None:
    run = run_python(ABORT)
    assert run.returncode == -signal.SIGABRT
    assert "recorder: received signal 6 (ABRT), dumping" in run.stderr
    assert "aborting: about to abort now" in run.stderr


def test_a_long_string_is_recorded_up_to_what_readers_show(capfd) -> None:
    long = recorder.Recorder("pyapi_long", 4)
    text = "é" * 5000                            # 10000 UTF-8 bytes
    long.record("long %s end", text)
    assert recorder.dump("pyapi_long") == 1
    line = next(line for line in capfd.readouterr().err.splitlines()
                if "pyapi_long:" in line)
    shown = line.split("pyapi_long: long ", 1)[1]
    assert shown == "é" * 127 + " end"          # 254 bytes: whole characters

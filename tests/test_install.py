"""Installed as a user installs it: the sdist and wheel of a clean clone,
the wheel in a fresh venv of Debian's Python (which sees Debian's bcc), run
from outside the checkout.

The build (sdist, then the wheel from the sdist, as `python -m build` does)
happens once per session; each test then uses the installed tracer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.tracer import RECORDS, Victim
from timing import scaled

# Packaging, not the kernel: the host runs these, the VM guest does not.
pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3"
# What a copy of a checkout without git leaves out (the VM's rsynced tree).
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "*.so",
                                     "__pycache__", ".pytest_cache", ".ruff_cache",
                                     ".vagrant")


@dataclass(frozen=True)
class Dist:
    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    venv: Path
    outside: Path       # a working directory outside the checkout

    @property
    def recorder(self) -> str:
        return str(self.venv / "bin" / "recorder")


def run(argv: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    """Run argv; a failure shows its output."""
    result = subprocess.run(argv, capture_output=True, text=True,
                            timeout=scaled(600), **options)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


def pip_install(venv: Path, *requirements: str) -> None:
    """pip install into `venv` (made --without-pip: this pip serves it)."""
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
         "install", "-q", *requirements])


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """sdist and wheel built from a clean clone (a copy where no git is)."""
    top = tmp_path_factory.mktemp("dist")
    source = top / "clone"
    if (REPO / ".git").exists() and shutil.which("git"):
        run(["git", "clone", "-q", str(REPO), str(source)])
    else:
        shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    run([sys.executable, "-m", "build", "-o", str(top / "out"), str(source)])
    [sdist] = (top / "out").glob("recorder-*.tar.gz")
    [wheel] = (top / "out").glob("recorder-*.whl")
    return Dist(sdist, wheel)


@pytest.fixture(scope="module")
def installed(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel with its tracer extra in a venv of Debian's Python."""
    top = tmp_path_factory.mktemp("installed")
    venv = top / "venv"
    run([DEBIAN_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages",
         str(venv)])
    pip_install(venv, f"{dist.wheel}[tracer]")
    outside = top / "work"
    outside.mkdir()
    return Installed(venv, outside)


def test_wheel_carries_what_the_tracer_compiles_and_no_c_source(dist: Dist) -> None:
    names = set(zipfile.ZipFile(dist.wheel).namelist())
    for program in ("harvest", "snapshot", "usdt"):
        assert f"recorder_tracer/kernel/bpf/{program}.c" in names
        assert f"recorder_tracer/kernel/bpf/{program}.h" in names
    for header in os.listdir(REPO / "probes/include/recorder"):
        assert f"recorder_tracer/kernel/include/recorder/{header}" in names
    assert not [name for name in names if name.startswith("recorder/")
                and name.endswith(".c")]
    license_files = [name for name in names if name.endswith("/licenses/LICENSE")]
    assert len(license_files) == 1
    metadata = zipfile.ZipFile(dist.wheel).read(
        license_files[0].replace("licenses/LICENSE", "METADATA")).decode()
    assert "License-Expression: MIT" in metadata
    # Every dependency belongs to an extra: `pip install recorder` needs none.
    requires = [line for line in metadata.splitlines()
                if line.startswith("Requires-Dist:")]
    assert requires and all("extra ==" in line for line in requires)


def test_sdist_holds_the_tests_and_what_they_build(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in ("LICENSE", "Makefile", "README.md", "docs/cli.md",
                   "tests/conftest.py", "tests/helpers/tracer.py", "tests/timing.py",
                   "tests/progs/smoke.c", "probes/src", "probes/PROBES.md",
                   "probes/abi/librecorder.map", "probes/abi/compat.c",
                   "vagrant/provision.sh", "packaging/recorder-daemon.service",
                   "pyapi/recorder/_core.c", "demo/recorder_demo.c"):
        assert needed in names, needed
    assert not [name for name in names if name.endswith((".so", ".pyc"))]


def test_sdist_builds_and_its_tests_run(dist: Dist, tmp_path: Path) -> None:
    """The unpacked sdist builds the core and the programs the contract's
    tests run, and those tests pass there."""
    with tarfile.open(dist.sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    [tree] = tmp_path.iterdir()
    run(["make", "-s", "-j2", "build/progs/core_layout", "build/progs/core_usdt"],
        cwd=tree)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p",
                             "no:cacheprovider", "tests/test_contract.py"],
                            cwd=tree, capture_output=True, text=True,
                            timeout=scaled(300))
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout


def test_plain_install_records_with_no_third_party_package(
        dist: Dist, tmp_path: Path) -> None:
    """`pip install recorder` (no extra, no index): the instrumentation
    works alone, and the CLI says which extra it needs."""
    venv = tmp_path / "venv"
    run([DEBIAN_PYTHON, "-m", "venv", "--without-pip", str(venv)])
    pip_install(venv, "--no-index", str(dist.wheel))
    script = ("import sys, recorder\n"
              "recorder.record('app', 'n=%d', 23)\n"
              "third = {'click', 'rich', 'prometheus_client',"
              " 'matplotlib'} & set(sys.modules)\n"
              "print(sorted(third))\n")
    result = run([str(venv / "bin" / "python"), "-c", script], cwd=tmp_path)
    assert result.stdout == "[]\n"
    cli = subprocess.run([str(venv / "bin" / "recorder"), "probes"],
                         capture_output=True, text=True, timeout=scaled(60))
    assert cli.returncode == 1
    assert cli.stderr == ("recorder: the tracer's dependencies are missing: "
                          "pip install 'recorder[tracer]'\n")


@pytest.mark.bpf
def test_installed_tracer_traces_a_program(installed: Installed, progs: Path) -> None:
    where = run([str(installed.venv / "bin" / "python"), "-c",
                 "import recorder_tracer; print(recorder_tracer.__file__)"],
                cwd=installed.outside)
    assert where.stdout.startswith(str(installed.venv))
    # --latency: smoke records 10 into a ring of 8 in one burst; the batch
    # harvest would deliver the last 8 and count 2 lost.
    result = run([installed.recorder, "trace", "--json", "--no-snapshots",
                  "--latency", "-c", str(progs / "smoke"), "smoke:other"],
                 cwd=installed.outside)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    records = [line for line in lines if line["type"] == "record"]
    assert [r["topic"] for r in records] == ["smoke"] * 10 + ["other"] * 3
    assert records[0]["message"].startswith("i=0 half=0.0 name=hello")
    assert lines[-1]["type"] == "summary" and lines[-1]["lost"] == 0


@pytest.fixture
def victim(progs: Path) -> Iterator[Victim]:
    victim = Victim(progs)
    yield victim
    if victim.process.poll() is None:
        victim.process.kill()
        victim.process.wait()


@pytest.mark.bpf
def test_installed_tracer_takes_a_crash_snapshot(
        installed: Installed, victim: Victim, tmp_path: Path) -> None:
    snapshots = tmp_path / "snapshots"
    tracing = subprocess.Popen(
        [installed.recorder, "trace", "--json", "-p", str(victim.pid),
         "--snapshot-dir", str(snapshots), "--snapshot-records", "23", "victim"],
        cwd=installed.outside, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    try:
        assert tracing.stderr is not None
        banner = tracing.stderr.readline()
        assert banner.startswith("Tracing "), banner + tracing.stderr.read()
        victim.record()
        victim.send("segv")
        assert victim.process.wait(timeout=scaled(10)) == -11
        deadline = time.monotonic() + scaled(10)
        while not list(snapshots.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if tracing.poll() is None:
            tracing.send_signal(2)
        tracing.communicate(timeout=scaled(20))
    listed = json.loads(run([installed.recorder, "snapshots", "--json",
                             "--snapshot-dir", str(snapshots)],
                            cwd=installed.outside).stdout)
    assert [(item["pid"], item["records"]) for item in listed] == [(victim.pid, 23)]
    shown = json.loads(run([installed.recorder, "show", "--json", listed[0]["path"]],
                           cwd=installed.outside).stdout)
    assert [r["message"] for r in shown["records"]] == [
        f"victim {i}" for i in range(RECORDS - 23, RECORDS)]


@pytest.mark.bpf
def test_installed_tracer_reads_usdt_probes(installed: Installed) -> None:
    script = "import sys; sys.audit('recorder.tick', 23)"
    result = run([installed.recorder, "trace", "--json", "--no-snapshots",
                  "--usdt", "/usr/bin/python3.11:python:audit:s,x",
                  "-c", f"/usr/bin/python3.11 -c \"{script}\""],
                 cwd=installed.outside)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    ticks = [line for line in lines if line["type"] == "record"
             and line["args"][0] == "recorder.tick"]
    assert len(ticks) == 1 and ticks[0]["provider"] == "python"

"""packaging/: the daemon's unit is hardened and enough, `make install`
lays the tracer out where root finds it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.prometheus import fetch, free_port, stop
from helpers.tracer import Workload, wait_for
from timing import scaled

# Packaging, not the kernel: the host runs these, the VM guest does not.
pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "packaging" / "recorder-daemon.service"
MAX_EXPOSURE = 5.5


def unit_setting(name: str) -> str:
    """The value of `name=` in the unit (the last one, as systemd reads)."""
    values = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.MULTILINE)
    assert values, name
    return values[-1]


def test_unit_exposure_is_at_most_5_5() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    result = subprocess.run([analyze, "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=scaled(60))
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def bounding_set_drops() -> str:
    """capsh --drop's list: every capability the unit's bounding set lacks."""
    keep = {cap.lower() for cap in unit_setting("CapabilityBoundingSet").split()}
    printed = subprocess.run(["capsh", "--print"], capture_output=True, text=True,
                             check=True).stdout
    bounding = re.search(r"^Bounding set =(.*)$", printed, re.MULTILINE)
    assert bounding
    have = bounding.group(1).split(",")
    assert keep <= set(have), keep - set(have)
    return ",".join(cap for cap in have if cap not in keep)


@pytest.mark.bpf
def test_daemon_works_within_the_units_capabilities(progs: Path,
                                                   tmp_path: Path) -> None:
    """The daemon arms, counts and serves with only the unit's bounding set
    and no new privileges."""
    if shutil.which("capsh") is None:
        pytest.skip("capsh (libcap2-bin) is not installed")
    workload = Workload(progs)
    port = free_port()
    daemon_argv = [sys.executable, "-m", "recorder_tracer.cli", "daemon", "-p",
                   str(workload.pid), "--listen", f"127.0.0.1:{port}",
                   "--snapshot-dir", str(tmp_path / "snapshots"), "tick"]
    daemon = subprocess.Popen(
        ["capsh", f"--drop={bounding_set_drops()}", "--", "-c",
         'exec setpriv --no-new-privs "$0" "$@"', *daemon_argv],
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: fetch(f"http://127.0.0.1:{port}/metrics"), scaled(30))
        workload.record("tick", 23)
        exposition = fetch(f"http://127.0.0.1:{port}/metrics") or ""
        assert (f'recorder_records_total{{comm="workload_ticks",pid="{workload.pid}",'
                f'topic="tick"}} 23.0') in exposition
        status = Path(f"/proc/{daemon.pid}/status").read_text()
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE)
        assert "CapBnd:\t" + "0" * 16 not in status
    finally:
        daemon.send_signal(signal.SIGTERM)
        stop(daemon)
        workload.close()
    assert daemon.returncode == 0, daemon.stderr.read() if daemon.stderr else ""


@pytest.mark.bpf
def test_make_install_puts_cli_unit_config_and_docs_in_place(
        progs: Path, tmp_path: Path) -> None:
    """`make install-tracer` with every directory moved under tmp_path:
    the CLI runs through its link, from a venv of Debian's Python."""
    prefix, home, etc = tmp_path / "usr", tmp_path / "opt", tmp_path / "etc"
    (etc / "recorder").mkdir(parents=True)
    (etc / "recorder" / "daemon.toml").write_text("all = true\n")   # the admin's
    result = subprocess.run(
        ["make", "-s", "install-tracer", f"PREFIX={prefix}", f"TRACER_HOME={home}",
         f"SYSCONFDIR={etc}"], cwd=REPO, capture_output=True, text=True,
        timeout=scaled(600))
    assert result.returncode == 0, result.stdout + result.stderr
    link = prefix / "bin" / "recorder"
    assert os.readlink(link) == str(home / "venv" / "bin" / "recorder")
    version = subprocess.run([str(link), "--version"], capture_output=True,
                             text=True, timeout=scaled(60), cwd=tmp_path)
    assert re.fullmatch(r"recorder \S+\n", version.stdout), version.stderr
    # --latency: smoke records 10 into a ring of 8 in one burst (in batches,
    # the last 8 arrive and 2 are counted lost).
    traced = subprocess.run([str(link), "trace", "--no-snapshots", "--json",
                             "--latency", "-c",
                             str(progs / "smoke"), "smoke"], capture_output=True,
                            text=True, timeout=scaled(120), cwd=tmp_path)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.count('"type": "record"') == 10
    unit = (prefix / "lib/systemd/system/recorder-daemon.service").read_text()
    assert f"ExecStart={link} daemon --config {etc}/recorder/daemon.toml" in unit
    assert (etc / "recorder" / "daemon.toml").read_text() == "all = true\n"
    docs = prefix / "share/doc/recorder"
    assert {"README.md", "cli.md", "LICENSE", "daemon.toml.example"} <= {
        path.name for path in docs.iterdir()}

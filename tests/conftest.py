"""Shared fixtures: built programs, and the rule for BPF tests.

A test marked `bpf` needs root and a working bcc. Where either is missing it
is skipped, except under CI=true, where a skipped BPF test is a failure: CI
runs as root on a machine with BPF, so a skip there hides a broken setup.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
PROGS = BUILD / "progs"


@functools.cache
def bpf_unavailable_reason() -> str | None:
    """Why BPF tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "BPF tests need root"
    try:
        import bcc  # noqa: F401
    except ImportError as error:
        return f"bcc is not importable ({error}); run vagrant/provision.sh"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel has no BTF"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    # `vm` tests open vsock sockets: only inside the test VM, which says so
    # (vagrant's vm-test sets RECORDER_IN_VM=1); never on a host.
    if (item.get_closest_marker("vm") is not None
            and os.environ.get("RECORDER_IN_VM") != "1"):
        pytest.skip("runs only inside the test VM (RECORDER_IN_VM=1)")
    # `vm_host` marks the guest-to-host channel pair: the guest's half (also
    # `vm`) runs in the VM; this side's half checks what the collector got.
    if (item.get_closest_marker("vm_host") is not None
            and item.get_closest_marker("vm") is None
            and not os.environ.get("RECORDER_VM_CHANNEL_OUT")):
        pytest.skip("checks a VM's channel: only in vm-test "
                    "(RECORDER_VM_CHANNEL_OUT)")
    if item.get_closest_marker("bpf") is None:
        return
    reason = bpf_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"BPF test cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def progs() -> Path:
    """Directory of the compiled test programs (built by `make test`)."""
    if not PROGS.is_dir():
        pytest.fail("build/progs is missing: run `make` first (make test does)")
    return PROGS


@pytest.fixture
def workloads(progs: Path) -> Iterator[Any]:
    """Starts tests/progs/workload_ticks processes (each call one more);
    the test's end kills those still running. (test_trace.py and
    test_metrics.py end theirs with their `exit` command instead.)"""
    from helpers.tracer import Workload

    started: list[Workload] = []

    def start() -> Workload:
        workload = Workload(progs)
        started.append(workload)
        return workload

    yield start
    for workload in started:
        if workload.process.poll() is None:
            workload.process.kill()
        workload.process.wait()


@pytest.fixture(scope="session", autouse=True)
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`recorder trace` captures crash snapshots by default: the suite's go
    to a directory of its own (RECORDER_SNAPSHOT_DIR, inherited by the
    commands tests start), never to /var/lib/recorder/snapshots."""
    path = tmp_path_factory.mktemp("snapshots")
    os.environ["RECORDER_SNAPSHOT_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def daemon_pin_dir() -> Iterator[str]:
    """`recorder daemon` pins what outlives it: the suite's daemons pin
    under a directory of their own (RECORDER_PIN_DIR), never the default
    /sys/fs/bpf/recorder, and nothing is left behind."""
    path = f"/sys/fs/bpf/recorder-suite-{os.getpid()}"
    os.environ["RECORDER_PIN_DIR"] = path
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo) -> Generator[None, object, None]:
    """Under CI=true a BPF test skipped from its own body or fixtures (a
    kernel feature missing, say) fails too: such a test asserts what the
    kernel lacks instead (helpers.tracer.uprobe_multi_links_here)."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("CI") == "true"
            and not hasattr(report, "wasxfail")
            and item.get_closest_marker("bpf") is not None
            and item.get_closest_marker("vm") is None
            and item.get_closest_marker("vm_host") is None):
        report.outcome = "failed"
        report.longrepr = f"a BPF test skipped under CI=true: {report.longrepr}"

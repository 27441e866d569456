"""The Prometheus exposition: promtool accepts it, bucket bounds are exact,
`--by` chooses the label sets, recorder_build_info names the version; a real
Prometheus scrapes a daemon run with `--by comm`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.prometheus import fetch, free_port, prometheus_scraping, query, stop
from helpers.tracer import Workload, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from timing import scaled

from recorder_tracer import __version__
from recorder_tracer.kernel.harvest import HIST_BUCKETS, SiteStats
from recorder_tracer.metrics.aggregates import TopicMetrics
from recorder_tracer.output.prometheus import RecorderCollector, Snapshot

RECORDER = [sys.executable, "-m", "recorder_tracer.cli"]


def stats(count: int, spans: bool = False) -> SiteStats:
    values = [0] * HIST_BUCKETS
    values[12] = count                  # 2048..4095 (ns for a span)
    intervals = [0] * HIST_BUCKETS
    intervals[20] = count
    return SiteStats(count=count, valued=count, sum=3000 * count, min=3000,
                     max=3000, spans=spans, values=values, intervals=intervals,
                     interval_sum=count * 600_000)


ROWS = [TopicMetrics("net", 11, "server", stats(23)),
        TopicMetrics("net", 12, "server", stats(29)),
        TopicMetrics("handle", 11, "server", stats(7, spans=True))]


def exposition(by: str) -> str:
    registry = CollectorRegistry()
    registry.register(RecorderCollector(lambda: Snapshot(list(ROWS)), by))
    return generate_latest(registry).decode()


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing (Debian's prometheus): run provision.sh")
    return subprocess.run([promtool, "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=scaled(60))


@pytest.mark.parametrize("by", ["pid", "comm", "topic"])
def test_promtool_accepts_the_exposition(by: str) -> None:
    result = promtool_check(exposition(by))
    assert result.returncode == 0, result.stdout + result.stderr


def test_bucket_bounds_are_exact_decimals() -> None:
    text = exposition("pid")
    bounds = set(re.findall(r'le="([^"]+)"', text))
    assert "4.095e-06" in bounds and "4095.0" in bounds and "+Inf" in bounds
    for bound in bounds - {"+Inf"}:
        # 2^i - 1 (ns for times): the shortest decimal, no rounding noise.
        value = float(bound)
        assert bound == repr(value)
        assert (round(value * 1e9) + 1).bit_count() == 1 or (
            round(value) + 1).bit_count() == 1, bound
        assert not re.search(r"0000\d|9999\d", bound), bound


def test_by_chooses_the_label_sets() -> None:
    per_pid = exposition("pid")
    assert 'recorder_records_total{comm="server",pid="11",topic="net"} 23.0' in per_pid
    per_comm = exposition("comm")
    assert 'recorder_records_total{comm="server",topic="net"} 52.0' in per_comm
    assert 'pid="' not in per_comm
    per_topic = exposition("topic")
    assert 'recorder_records_total{topic="net"} 52.0' in per_topic
    assert 'comm="' not in per_topic
    assert (f'recorder_build_info{{python="{sys.version.split()[0]}",'
            f'version="{__version__}"}} 1.0') in per_topic


@pytest.mark.bpf
def test_prometheus_scrapes_series_per_comm(progs: Path, tmp_path: Path) -> None:
    """Two processes of one name: one series per topic, summed, no pid."""
    first, second = Workload(progs), Workload(progs)
    daemon_port = free_port()
    daemon = subprocess.Popen(
        [*RECORDER, "daemon", "-p", str(first.pid), "-p", str(second.pid), "--by",
         "comm", "--listen", f"127.0.0.1:{daemon_port}", "--no-snapshots", "tick"],
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: fetch(f"http://127.0.0.1:{daemon_port}/metrics"), scaled(30))
        first.record("tick", 23)
        second.record("tick", 29)
        live = fetch(f"http://127.0.0.1:{daemon_port}/metrics") or ""
        assert 'recorder_records_total{comm="workload_ticks",topic="tick"} 52.0' in live
        checked = promtool_check(live)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        with prometheus_scraping(daemon_port, tmp_path) as prometheus_port:
            totals = wait_for(lambda: query(prometheus_port, "recorder_records_total"),
                              scaled(60))
            assert totals == {"tick": 52.0}
            assert query(prometheus_port,
                         'count(recorder_records_total{pid!=""})') == {}
            info = wait_for(lambda: query(prometheus_port, "recorder_build_info"),
                            scaled(30))
            assert info == {"": 1.0}
    finally:
        stop(daemon)
        first.close()
        second.close()
    assert daemon.returncode == 0, daemon.stderr.read() if daemon.stderr else ""

"""Local HTTP and a real Prometheus: a free loopback port, fetching a page,
a Prometheus server scraping one target, its instant queries."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from timing import scaled


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str) -> str | None:
    """The page at `url`, or None while nothing answers there."""
    try:
        with urllib.request.urlopen(url, timeout=scaled(2)) as response:
            return response.read().decode()
    except OSError:
        return None


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=scaled(15))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(port: int, promql: str) -> dict[str, float]:
    """Prometheus's answer to an instant query, by the `topic` label."""
    text = fetch(f"http://127.0.0.1:{port}/api/v1/query?"
                 + urllib.parse.urlencode({"query": promql}))
    if text is None:
        return {}
    answer = json.loads(text)
    return {item["metric"].get("topic", ""): float(item["value"][1])
            for item in answer["data"]["result"]}


@contextmanager
def prometheus_scraping(target_port: int, folder: Path) -> Iterator[int]:
    """Debian's prometheus scraping 127.0.0.1:`target_port` every second,
    its data in `folder`; yields the port its query API listens on."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("Debian's prometheus is missing: run vagrant/provision.sh")
    port = free_port()
    (folder / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: recorder\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n")
    server = subprocess.Popen(
        [prometheus, f"--config.file={folder / 'prometheus.yml'}",
         f"--storage.tsdb.path={folder / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        stop(server)

"""Running the core's test programs: without the caller's RECORDER_* variables."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from timing import scaled


def run(
    program: Path, *args: str, env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `program` with `env` added to an environment free of RECORDER_*."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    return subprocess.run(
        [str(program), *args],
        capture_output=True,
        text=True,
        env=clean | (env or {}),
        timeout=scaled(30) if timeout is None else timeout,
    )

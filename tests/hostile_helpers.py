"""Playing the attacker: commands run as user nobody, in directories nobody
may use (pytest's own temporary directories are root's, mode 0700)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*command: str, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run `command` as nobody; output captured as text."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    return subprocess.run([*AS_NOBODY, *command], check=False, **kwargs)


def nobody_popen(*command: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*AS_NOBODY, *command], **kwargs)


@contextmanager
def public_dir() -> Iterator[Path]:
    """A fresh directory in /tmp that anyone may enter (0755, root's), with
    a subdirectory `nobody` that nobody owns."""
    path = Path(tempfile.mkdtemp(prefix="recorder-hostile-"))
    try:
        path.chmod(0o755)
        owned = path / "nobody"
        owned.mkdir()
        os.chown(owned, NOBODY, NOBODY)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def is_root_only(path: Path) -> bool:
    mode = path.stat().st_mode
    return path.stat().st_uid == 0 and not mode & (stat.S_IRWXG | stat.S_IRWXO)

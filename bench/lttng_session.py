"""An LTTng snapshot session for the benchmark, and the session daemon under it.

The session daemon is started only when none answers, and then stopped by its
own PID (from its pid file) when the session ends; a daemon that was already
running is left alone. Failures never raise: the session reports why it is
unavailable and the benchmark goes on without LTTng.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PROVIDER = "recorder_bench"
ENABLED_EVENT = f"{PROVIDER}:on"    # `recorder_bench:off` stays disabled


class LttngError(RuntimeError):
    """An lttng command failed; the message is its output."""


def lttng(*arguments: str) -> str:
    """Run the `lttng` client, return its output or raise LttngError."""
    result = subprocess.run(["lttng", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise LttngError(f"lttng {' '.join(arguments)}: {output}")
    return result.stdout


def sessiond_answers() -> bool:
    """True if a session daemon serves this user (`lttng list` reaches one)."""
    return subprocess.run(["lttng", "list"], capture_output=True).returncode == 0


def pid_file() -> Path:
    """Where this user's session daemon writes its PID."""
    if os.geteuid() == 0:
        return Path("/var/run/lttng/lttng-sessiond.pid")
    home = os.environ.get("LTTNG_HOME") or os.path.expanduser("~")
    return Path(home) / ".lttng" / "lttng-sessiond.pid"


def is_sessiond(pid: int) -> bool:
    """True while `pid` is a live (not zombie) lttng-sessiond."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return comm == "lttng-sessiond" and state != "Z"


def start_sessiond() -> int:
    """Start a session daemon (user space only) and return its PID."""
    result = subprocess.run(
        ["lttng-sessiond", "--daemonize", "--no-kernel"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise LttngError(f"lttng-sessiond: {result.stderr.strip()}")
    pid = int(pid_file().read_text().strip())
    if not is_sessiond(pid):
        raise LttngError(f"lttng-sessiond: pid file names {pid}, not the daemon")
    return pid


def stop_sessiond(pid: int, timeout: float = 5.0) -> None:
    """Stop the session daemon we started, by its PID: TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_sessiond(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while is_sessiond(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


@dataclass
class Session:
    """A started snapshot session, or the reason there is none."""

    name: str
    error: str = ""
    started_sessiond: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return not self.error

    def set_up(self) -> None:
        """Start a session daemon if none answers, then create, enable and
        start the session; raise LttngError or OSError on failure."""
        if not sessiond_answers():
            self.started_sessiond = start_sessiond()
            self.notes.append(f"started lttng-sessiond pid {self.started_sessiond}")
        lttng("create", self.name, "--snapshot")
        lttng("enable-event", "--userspace", f"--session={self.name}",
              ENABLED_EVENT)
        lttng("start", self.name)

    def exists(self) -> bool:
        """True while a session daemon answers and still holds the session."""
        listing = subprocess.run(["lttng", "list", self.name], capture_output=True)
        return listing.returncode == 0

    def revive(self) -> bool:
        """Set the session up again if it vanished: a daemon that another
        user of this machine started may be stopped under us. True if it
        was set up again, False if it exists (the failure is elsewhere) or
        cannot be set up."""
        if not self.available or self.exists():
            return False
        try:
            self.set_up()
        except (LttngError, OSError, ValueError) as error:
            self.error = f"the session vanished and could not be set up again: {error}"
            return False
        self.notes.append("the session daemon went away; session set up again")
        return True

    def snapshot_events(self) -> str:
        """Take a snapshot and describe what it holds: proof the enabled
        tracepoint really recorded. The snapshot is deleted afterwards."""
        directory = Path(tempfile.mkdtemp(prefix="recorder-bench-snapshot-"))
        try:
            lttng("snapshot", "record", f"--session={self.name}", str(directory))
            size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
            text = f"{size // 1024} KiB"
            if shutil.which("babeltrace"):
                listing = subprocess.run(
                    ["babeltrace", str(directory)], capture_output=True, text=True
                )
                events = listing.stdout.count(ENABLED_EVENT)
                text = f"{events} {ENABLED_EVENT} events, {text}"
            return text
        except LttngError as error:
            return f"snapshot failed: {error}"
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def snapshot_session(skip: str = "") -> Iterator[Session]:
    """Yield a started snapshot session with ENABLED_EVENT enabled, or,
    given a reason to `skip`, an unavailable session that says so.

    Applications started inside the block register with the daemon and
    record that event into per-CPU overwrite rings (snapshot mode: nothing
    is written to disk unless a snapshot is taken). On exit the session is
    destroyed and a daemon started here is stopped.
    """
    session = Session(name=f"recorder-bench-{os.getpid()}", error=skip)
    if not skip and (shutil.which("lttng") is None
                     or shutil.which("lttng-sessiond") is None):
        session.error = "lttng-tools is not installed"
    if session.error:
        yield session
        return
    try:
        session.set_up()
    except (LttngError, OSError, ValueError) as error:
        session.error = str(error)
    try:
        yield session
    finally:
        if session.exists():
            try:
                lttng("destroy", session.name)
            except LttngError as error:
                session.notes.append(str(error))
        if session.started_sessiond is not None:
            stop_sessiond(session.started_sessiond)
            session.notes.append(
                f"stopped lttng-sessiond pid {session.started_sessiond}"
            )

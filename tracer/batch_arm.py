"""Arm a process for the batch harvest: which topics, from which index.

The session's side of tracer/batch.py: with a spec and a process image it
chooses the topics to harvest, tells BPF the names the spec arms (so topics
registered later are found from their first record), and starts a command
stopped at its exec so that nothing it records escapes.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable

from recorder_tracer import notes
from recorder_tracer.batch import BatchHarvester
from recorder_tracer.errors import TracerError
from recorder_tracer.memory import ProcessImage, Topic, load_bias, read_maps
from recorder_tracer.spec import TopicSpec
from recorder_tracer.usdt_args import symbol_resolver

REGISTRY_SYMBOL = "recorder_registry"


def arm_image(harvester: BatchHarvester, pid: int, image: ProcessImage,
              spec: TopicSpec, from_start: bool = False) -> list[Topic] | None:
    """Harvest the topics of `image` that `spec` arms; returns the topics
    found in its registry, or None when it has no registry (yet). Called
    again for an armed process, it only publishes new names."""
    topics = image.topics()
    if not topics and image.find_registry() is None:
        return None
    harvester.arm_names([topic.name for topic in topics if spec.armed(topic.name)])
    if pid not in harvester.armed:
        wanted = [topic for topic in topics if spec.armed(topic.name)]
        if not harvester.arm(pid, image, wanted, from_start=from_start):
            return None
    return topics


def arm_at_exec(harvester: BatchHarvester, pid: int, executable: str,
                spec: TopicSpec) -> bool:
    """Arm a process stopped at its exec, before its core initialised:
    BPF finds its topics by name from the registry symbol of a statically
    linked core. False when the core is in a library not mapped yet."""
    resolve = symbol_resolver(executable)
    address = resolve(REGISTRY_SYMBOL)
    if address is None:
        return False
    try:
        bias = load_bias(read_maps(pid), executable)
        probes = notes.probes_in_file(executable)
    except (OSError, notes.NotesError):
        return False
    if bias is None:
        return False
    harvester.arm_names([probe.name for probe in probes
                         if probe.provider == notes.RECORDER_PROVIDER
                         and spec.armed(probe.name)])
    harvester.arm_registry(pid, bias + address)
    return True


def start_stopped(command: list[str], stderr: int | None,
                  on_stopped: Callable[[int, str], None]) -> int:
    """Fork `command` stopped at its exec (ptrace), run `on_stopped(pid,
    executable)`, then let it go. Its executable is mapped, nothing of it
    has run."""
    from recorder_tracer.usdt import _PTRACE_DETACH, _PTRACE_TRACEME, _ptrace_function
    path = shutil.which(command[0])
    if path is None:
        raise TracerError(f"command not found: {command[0]}")
    ptrace = _ptrace_function()
    pid = os.fork()
    if pid == 0:
        try:
            if stderr is not None:
                os.dup2(stderr, 2)
            if ptrace(_PTRACE_TRACEME, 0, None, None) == 0:
                os.execv(path, command)
        finally:
            os._exit(127)
    _, status = os.waitpid(pid, 0)
    if not (os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP):
        raise TracerError(f"cannot run {command[0]}")
    try:
        on_stopped(pid, os.path.realpath(path))
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        ptrace(_PTRACE_DETACH, pid, None, None)
        os.waitpid(pid, 0)
        raise
    ptrace(_PTRACE_DETACH, pid, None, None)
    return pid

"""Click options shared by the commands that choose processes.

`recorder trace`, `metrics`, `top` and `daemon` pick processes the same way:
-p PID (repeatable), --comm NAME (now and later), --all (every process with
a recorder core, now and later) and -c COMMAND (start it, watch it from its
first record).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from typing import Any

import click

from recorder_tracer.errors import TracerError
from recorder_tracer.terminal import escape_controls

F = Callable[..., Any]


def report(message: str) -> None:
    """One line on stderr: `recorder: message`. Messages carry names a
    process chose (its comm, its files): their control characters are
    escaped, and a newline cannot forge a second line."""
    click.echo(f"recorder: {escape_controls(message)}", err=True)


def target_options(verb: str, command: bool = True) -> Callable[[F], F]:
    """Decorate a command with -p/--pid, --comm, --all (and -c/--command).
    `verb` starts each help line ("Trace", "Watch")."""
    def decorate(function: F) -> F:
        options = [
            click.option("-p", "--pid", "pids", multiple=True, type=int,
                         help=f"{verb} this process (repeatable)."),
            click.option("--comm", "comms", multiple=True,
                         help=f"{verb} processes with this name, now and later."),
            click.option("--all", "all_processes", is_flag=True,
                         help=f"{verb} every process with a recorder core (with "
                              "--usdt: with the probes), now and later."
                         if verb == "Trace" else
                         f"{verb} every process with a recorder core, now and later."),
        ]
        if command:
            options.append(click.option(
                "-c", "--command", help=f"Start this command and {verb.lower()} it."))
        for option in reversed(options):
            function = option(function)
        return function
    return decorate


def parse_command(command: str | None) -> list[str] | None:
    """-c's argv, or a click usage error for an empty or unbalanced one."""
    if command is None:
        return None
    try:
        argv = shlex.split(command)
    except ValueError as error:
        raise click.UsageError(f"-c {command!r}: {error}") from None
    if not argv:
        raise click.UsageError("-c needs a command")
    return argv


def require_targets(pids: tuple[int, ...], comms: tuple[str, ...],
                    all_processes: bool, command: str | None = None) -> None:
    """A usage error unless some process is chosen."""
    if not (pids or comms or all_processes or command):
        raise click.UsageError("choose processes: -p PID, --comm, --all or -c")


def require_root(command: str) -> None:
    """One line and exit status 1 (a TracerError) unless running as root."""
    if os.geteuid() != 0:
        raise TracerError(f"`recorder {command}` must run as root (BPF, uprobes "
                          "and other processes' memory need it): use sudo")


def check_spec_matched(session: Any) -> None:
    """At the end of a run: a TracerError (exit status 1) for each item of
    the spec that selects topics but matched none of the traced processes'
    (a mistyped topic), after the output is complete."""
    if not session.options.topics:
        return
    spec = session.options.spec
    wanted = [item for item in spec.items if item.value > 0]
    topics = getattr(session, "recorder", None)     # the recorder-topic source
    names = sorted(topics.seen_topics) if topics is not None else []
    unmatched = [item.text for item in wanted
                 if not any(item.matches(name) for name in names)]
    if unmatched:
        raise TracerError(
            f"spec {' '.join(map(repr, unmatched))} matched no topic of the traced "
            "processes (`recorder probes PID` lists them)")

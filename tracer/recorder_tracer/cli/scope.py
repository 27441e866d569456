"""`recorder scope`: named values of a live process, drawn as they record."""

from __future__ import annotations

import os
import shutil
import sys
import time

import click

from recorder_tracer.errors import TracerError

SCOPE_EPILOG = """\b
Examples:
  recorder scope -p 1234                  # every named value, live
  recorder scope -p 1234 'x.*'            # the channels x.* only
  recorder scope -p 1234 --once           # one screen, then exit
  recorder scope -p 1234 --duration 5 --png wave.png   # and a picture
  recorder scope -p 1234 --json           # the samples as JSON lines
  (1234 started as: RECORDER_TRACES='wave=x_value,y_value' ./app,
   which names args[0] and args[1] of topic wave x_value and y_value)
"""


@click.command(epilog=SCOPE_EPILOG)
@click.option("-p", "--pid", type=int, required=True,
              help="The process to watch (root, or its own user).")
@click.argument("patterns", nargs=-1)
@click.option("--interval", type=click.FloatRange(0.01, 60), default=0.2,
              show_default=True, help="Seconds between two reads of the rings.")
@click.option("--window", type=click.FloatRange(0.001), default=10.0,
              show_default=True, help="Seconds of samples the chart spans.")
@click.option("--duration", type=click.FloatRange(0), default=None,
              help="Stop after this many seconds (default: Ctrl-C or exit).")
@click.option("--rows", type=click.IntRange(2, 40), default=5, show_default=True,
              help="Rows of each channel's band.")
@click.option("--once", is_flag=True, help="Read once, draw one screen, exit.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False),
              help="At the end, plot every sample into this PNG.")
@click.option("--json", "as_json", is_flag=True,
              help="Print samples as JSON lines instead of drawing.")
def scope(pid: int, patterns: tuple[str, ...], interval: float, window: float,
          duration: float | None, rows: int, once: bool, png_path: str | None,
          as_json: bool) -> None:
    """Draw the values a process names as channels over time.

    A process names arguments of a topic as channels with
    RECORDER_TRACES="topic=name1,name2" (the seed library's syntax):
    args[0] of each record is name1, args[1] name2. PATTERNS (regular
    expressions matching whole names) choose channels; default all. Values
    are read from the process's rings through /proc/PID/mem: no probe is
    armed, and records overwritten between two reads count as lost.
    """
    from recorder_tracer.output.scope import Scope
    from recorder_tracer.target.channels import (
        ChannelReader,
        read_channels,
        select_channels,
    )
    from recorder_tracer.target.memory import ProcessImage

    if not os.path.isdir(f"/proc/{pid}"):
        raise TracerError(f"no process {pid}")
    image = ProcessImage.of(pid)
    if image.find_registry() is None:
        raise TracerError(f"process {pid} has no recorder core (or cannot be read)")
    named = read_channels(image)
    if not named:
        raise TracerError(f"process {pid} names no channels: start it with "
                          "RECORDER_TRACES='topic=name1,name2'")
    channels = select_channels(named, list(patterns))
    if not channels:
        raise TracerError(f"no channel matches {' '.join(patterns)} (named: "
                          f"{', '.join(c.name for c in named)})")
    reader = ChannelReader(image, channels)
    view = Scope([channel.name for channel in channels])
    live = sys.stdout.isatty() and not as_json and not once
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while True:
            samples = reader.poll()
            view.add(samples)
            if as_json:
                click.echo(view.json_lines(samples), nl=False)
            elif live:
                width = shutil.get_terminal_size().columns
                click.echo("\x1b[H\x1b[J" + view.render(width, rows, window,
                                                        reader.lost), nl=False)
            if once or not os.path.isdir(f"/proc/{pid}"):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    if not live and not as_json:
        click.echo(view.render(shutil.get_terminal_size().columns, rows, window,
                               reader.lost), nl=False)
    if png_path:
        view.write_png(png_path, f"recorder scope: process {pid}")

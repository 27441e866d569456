"""recorder scope: channels named by RECORDER_TRACES, drawn live and to a PNG.

tests/progs/scope_wave records `wave` "x=%d y=%.1f" with x from 0 to 22 and
y = 2x, then x = 23, y = 46.5 for as long as it runs: the screen and the
picture must show those values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.tracer import wait_for
from timing import scaled

from recorder_tracer.target.channels import ChannelReader, read_channels
from recorder_tracer.target.memory import ProcessImage

CLI = [sys.executable, "-m", "recorder_tracer.cli"]


def start_wave(progs: Path, traces: str | None,
               share: Path | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECORDER_")}
    if traces:
        env["RECORDER_TRACES"] = traces
    if share:
        # Named channels are also exported to a channels file, as the seed
        # does: in the test's directory rather than /tmp/recorder_share.
        env["RECORDER_SHARE"] = str(share)
    wave = subprocess.Popen([str(progs / "scope_wave"), "23"], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert wave.stdout is not None and wave.stdout.readline() == "ready\n"
    return wave


@pytest.fixture
def wave(progs: Path, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    process = start_wave(progs, "wave=x_value,y_value", tmp_path)
    yield process
    process.kill()
    process.wait()


def scope(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "scope", *args], capture_output=True, text=True,
                          timeout=scaled(60))


def test_channels_named_in_recorder_traces_are_found_and_sampled(
    wave: subprocess.Popen[str],
) -> None:
    image = ProcessImage.of(wave.pid)
    channels = read_channels(image)
    assert [(c.name, c.topic, c.index) for c in channels] == [
        ("x_value", "wave", 0), ("y_value", "wave", 1)]
    reader = ChannelReader(image, channels)
    first = reader.poll()
    xs = [s.value for s in first if s.channel == "x_value"]
    assert xs[:23] == [float(x) for x in range(23)]     # the whole ring, once
    ys = [s.value for s in first if s.channel == "y_value"]
    assert ys[:23] == [2.0 * x for x in range(23)]
    later = wait_for(lambda: reader.poll(), scaled(10))
    assert {(s.channel, s.value) for s in later} == {("x_value", 23.0),
                                                    ("y_value", 46.5)}
    assert min(s.timestamp for s in later) > max(s.timestamp for s in first)


def test_scope_screen_in_tmux_shows_the_recorded_values(
    wave: subprocess.Popen[str],
) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: run vagrant/provision.sh")
    name = f"recorder-scope-{uuid.uuid4().hex[:8]}"
    command = (f"stty cols 100 rows 30; exec {sys.executable} -m recorder_tracer.cli "
               f"scope -p {wave.pid} --interval 0.1")
    assert subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "100",
                           "-y", "30", command], timeout=scaled(10)).returncode == 0

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", name],
                              capture_output=True, text=True,
                              timeout=scaled(10)).stdout
    try:
        wait_for(lambda: "x_value  last 23  min 0  max 23" in screen()
                 and "y_value  last 46.5  min 0  max 46.5" in screen(), scaled(30))
        lines = screen().splitlines()
        top = next(i for i, line in enumerate(lines) if line.startswith("y_value"))
        # The band's top row is labelled with the max and holds the newest
        # samples at its right end.
        assert lines[top + 1].split("|")[0].strip() == "46.5"
        assert lines[top + 1].rstrip().endswith("*")
        assert lines[top + 5].split("|")[0].strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], timeout=scaled(10))


def test_scope_png_plots_the_channel(wave: subprocess.Popen[str],
                                     tmp_path: Path) -> None:
    from matplotlib import image as mpimg
    from PIL import Image
    png = tmp_path / "wave.png"
    result = scope("-p", str(wave.pid), "y.*", "--duration", "0.3", "--png", str(png))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("y_value  last 46.5  min 0  max 46.5")
    assert "x_value" not in result.stdout
    with Image.open(png) as picture:
        assert picture.format == "PNG"
        assert picture.info["Description"] == "y_value=46.5"
    pixels = mpimg.imread(str(png))
    assert pixels.shape[:2] == (280, 800)           # one channel's figure
    # The line's colour (matplotlib's first, #1f77b4) is drawn.
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    line = (abs(red - 0x1f / 255) < 0.05) & (abs(green - 0x77 / 255) < 0.05) & (
        abs(blue - 0xb4 / 255) < 0.05)
    assert line.sum() > 500


def test_scope_json_prints_each_sample(wave: subprocess.Popen[str]) -> None:
    result = scope("-p", str(wave.pid), "x_value", "--json", "--duration", "0.2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('{"channel": "x_value", "ts": ')
    assert lines[-1].endswith('"value": 23.0}')


def test_scope_of_a_process_naming_no_channels_is_one_line_error(
    progs: Path,
) -> None:
    plain = start_wave(progs, None)
    try:
        result = scope("-p", str(plain.pid), "--once")
    finally:
        plain.kill()
        plain.wait()
    assert result.returncode == 1
    assert result.stderr == (f"recorder: process {plain.pid} names no channels: start "
                             "it with RECORDER_TRACES='topic=name1,name2'\n")


def test_scope_pattern_matching_nothing_names_the_channels(
    wave: subprocess.Popen[str],
) -> None:
    result = scope("-p", str(wave.pid), "z.*", "--once")
    assert result.returncode == 1
    assert result.stderr == ("recorder: no channel matches z.* (named: x_value, "
                             "y_value)\n")

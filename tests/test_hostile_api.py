"""The Python API refuses values C would silently change."""

from __future__ import annotations

import pytest

import recorder


@pytest.mark.parametrize("size", [2**32 + 3, -1, 0, 2**24 + 1])
def test_recorder_size_out_of_range_is_refused_not_wrapped(size: int) -> None:
    with pytest.raises(ValueError, match=r"size must be 1\.\.16777216"):
        recorder.Recorder(f"hostile_size_{abs(size)}", size=size)


def test_recorder_size_too_big_for_c_is_refused() -> None:
    with pytest.raises(OverflowError):
        recorder.Recorder("hostile_size_huge", size=2**70)


def test_trace_set_with_nul_is_refused_not_cut() -> None:
    topic = recorder.Recorder("hostile_nul_topic")
    with pytest.raises(ValueError, match="contains a NUL"):
        recorder.trace_set("hostile_nul_topic=5\0hostile_nul_topic=7")
    assert topic.trace == 0


def test_dump_on_signals_mask_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="signal masks"):
        recorder.dump_on_signals(2**33)

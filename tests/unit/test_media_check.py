"""The decoder check's arithmetic: the size a resolution stands for, encoder tolerance, the note."""

from __future__ import annotations

import pytest

from batchgen.files.media import Expectation, MediaInfo, frame_size


def info(width: int, height: int, seconds: float = 5.0) -> MediaInfo:
    return MediaInfo(codec="h264", width=width, height=height, duration_s=seconds, frames=5)


@pytest.mark.parametrize(
    ("aspect", "resolution", "size"),
    [
        ("16:9", "720p", (1280, 720)),
        ("9:16", "720p", (720, 1280)),
        ("4:3", "720p", (960, 720)),
        ("3:4", "720p", (720, 960)),
        ("1:1", "720p", (720, 720)),
        ("21:9", "720p", (1680, 720)),
        ("16:9", "1080p", (1920, 1080)),
        ("9:16", "1080p", (1080, 1920)),
        ("21:9", "1080p", (2520, 1080)),
        ("16:9", "bogus", None),
        ("5:0", "720p", None),
    ],
)
def test_the_size_a_resolution_stands_for(
    aspect: str, resolution: str, size: tuple[int, int] | None
) -> None:
    assert frame_size(aspect, resolution) == size


SIZE_NOTE = "frame {}x{} is not {} ({}) as asked"


@pytest.mark.parametrize(
    ("got", "aspect", "resolution", "noted"),
    [
        ((1920, 1080), "16:9", "1080p", None),
        ((1920, 1088), "16:9", "1080p", None),  # macroblock padding kept
        ((1080, 1920), "9:16", "1080p", None),
        ((1088, 1920), "9:16", "1080p", None),
        ((1280, 720), "16:9", "720p", None),
        ((720, 1280), "9:16", "720p", None),
        ((2528, 1088), "21:9", "1080p", None),
        ((1080, 1080), "1:1", "1080p", None),
        ((1088, 1088), "1:1", "1080p", None),
        ((1280, 720), "16:9", "1080p", SIZE_NOTE.format(1280, 720, "1080p", "1920x1080")),
        ((64, 36), "16:9", "720p", SIZE_NOTE.format(64, 36, "720p", "1280x720")),
        ((36, 64), "9:16", "1080p", SIZE_NOTE.format(36, 64, "1080p", "1080x1920")),
        ((1920, 1080), "16:9", "720p", SIZE_NOTE.format(1920, 1080, "720p", "1280x720")),
        ((1280, 736), "16:9", "720p", SIZE_NOTE.format(1280, 736, "720p", "1280x720")),
        # the other orientation is the wrong aspect ratio: said once, not twice
        ((1920, 1080), "9:16", "1080p", "frame 1920x1080 is not 9:16 as asked"),
        ((64, 36), "16:9", "", None),  # no resolution asked: the size is not checked
        ((64, 36), "16:9", "8k", "resolution '8k' not understood"),
    ],
)
def test_the_frame_size_is_compared_with_encoder_tolerance(
    got: tuple[int, int], aspect: str, resolution: str, noted: str | None
) -> None:
    expect = Expectation(aspect_ratio=aspect, duration_s=5.0, resolution=resolution)
    assert expect.mismatch(info(*got)) == noted


def test_size_and_duration_are_both_said() -> None:
    expect = Expectation(aspect_ratio="16:9", duration_s=10.0, resolution="720p")
    assert expect.mismatch(info(64, 36, 5.0)) == (
        "frame 64x36 is not 720p (1280x720) as asked; duration 5.00 s, 10 s was asked"
    )

"""Open a video file with a real decoder (PyAV / FFmpeg), say what it holds, and
compare that with what was asked (``Expectation``).

The pixel size a resolution stands for (``frame_size``) is not documented by the API;
batchgen assumes the usual convention, which the simulator serves too: the short side
is the resolution's line count (720p: 720, 1080p: 1080) and the long side follows the
aspect ratio, rounded to an even number (720p 16:9: 1280x720, 1080p 9:16: 1080x1920,
1080p 21:9: 2520x1080). Encoders code whole 16-pixel macroblocks and some keep the
padding, so each side may also arrive rounded to a multiple of 16 (1088 lines for
1080p).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import av

from batchgen.errors import BatchgenError

MP4_SIGNATURE_OFFSET = 4
MP4_SIGNATURE = b"ftyp"


class MediaError(BatchgenError):
    """A file that is not a video we can read, or does not decode."""


@dataclass(frozen=True, slots=True)
class MediaInfo:
    codec: str
    width: int
    height: int
    duration_s: float
    frames: int

    @property
    def aspect(self) -> float:
        return self.width / self.height


def frame_size(aspect_ratio: str, resolution: str) -> tuple[int, int] | None:
    """Width x height of ``resolution`` (``"720p"``) at ``aspect_ratio`` (``"9:16"``).

    None when either is not understood (a model with other names for its sizes).
    """
    ratio = _ratio(aspect_ratio)
    lines = re.fullmatch(r"\s*(\d{2,5})[pP]\s*", resolution)
    if ratio is None or lines is None:
        return None
    short = int(lines.group(1))
    long = 2 * round(short * max(ratio, 1 / ratio) / 2)
    return (long, short) if ratio >= 1 else (short, long)


def side_fits(got: int, asked: int) -> bool:
    """``got`` pixels is ``asked`` as an encoder may store it: rounded to even or to 16."""
    even = {asked + asked % 2, asked - asked % 2}
    return got == asked or got in even or got in {-(-asked // 16) * 16, asked // 16 * 16}


@dataclass(frozen=True, slots=True)
class Expectation:
    """What was asked: ``aspect_ratio`` like ``"16:9"``, ``resolution`` like ``"720p"``
    and ``duration_s``; ``""`` / 0 = any."""

    aspect_ratio: str = ""
    duration_s: float = 0.0
    resolution: str = ""
    #: relative aspect error allowed: small frames are rounded to even sizes
    aspect_tolerance: float = 0.08
    duration_tolerance_s: float = 0.5
    duration_tolerance_rel: float = 0.10

    def mismatch(self, info: MediaInfo) -> str | None:
        """A human sentence for every way ``info`` differs from what was asked, or None."""
        problems: list[str] = []
        if self.aspect_ratio:
            asked = _ratio(self.aspect_ratio)
            if asked is None:
                problems.append(f"aspect ratio {self.aspect_ratio!r} not understood")
            elif info.height <= 0 or abs(info.aspect / asked - 1) > self.aspect_tolerance:
                problems.append(
                    f"frame {info.width}x{info.height} is not {self.aspect_ratio} as asked"
                )
        if self.resolution and not problems:
            size = frame_size(self.aspect_ratio or f"{info.width}:{info.height}", self.resolution)
            if size is None:
                problems.append(f"resolution {self.resolution!r} not understood")
            elif not (side_fits(info.width, size[0]) and side_fits(info.height, size[1])):
                problems.append(
                    f"frame {info.width}x{info.height} is not {self.resolution} "
                    f"({size[0]}x{size[1]}) as asked"
                )
        if self.duration_s > 0:
            allowed = max(self.duration_tolerance_s, self.duration_tolerance_rel * self.duration_s)
            if abs(info.duration_s - self.duration_s) > allowed:
                problems.append(
                    f"duration {info.duration_s:.2f} s, {self.duration_s:g} s was asked"
                )
        return "; ".join(problems) or None


def looks_like_mp4(head: bytes) -> bool:
    return head[MP4_SIGNATURE_OFFSET : MP4_SIGNATURE_OFFSET + 4] == MP4_SIGNATURE


def probe(path: Path, *, decode: bool = True) -> MediaInfo:
    """Container facts, and (with ``decode``) proof that every frame decodes."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            frames = 0
            if decode:
                for _ in container.decode(stream):
                    frames += 1
            else:
                frames = int(stream.frames or 0)
            if container.duration is not None:
                duration = float(container.duration) / 1_000_000
            elif stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = 0.0
            return MediaInfo(
                codec=stream.codec_context.name,
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                duration_s=duration,
                frames=frames,
            )
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: cannot decode: {exc}") from exc


def _ratio(text: str) -> float | None:
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*[:x/]\s*(\d+(?:\.\d+)?)\s*$", text)
    if not match or float(match.group(1)) == 0 or float(match.group(2)) == 0:
        return None
    return float(match.group(1)) / float(match.group(2))

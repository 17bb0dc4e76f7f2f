"""Open a video file with a real decoder (PyAV / FFmpeg) and say what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

MP4_SIGNATURE_OFFSET = 4
MP4_SIGNATURE = b"ftyp"


class MediaError(Exception):
    pass


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

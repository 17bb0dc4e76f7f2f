"""Poster frames for the report: the first picture of each video, as a small JPEG.

Decoded with PyAV (the decoder the download check already uses) and encoded with
FFmpeg's MJPEG encoder, so no imaging library is needed. A poster is named by the
video's sha256 and kept in a ``.posters`` folder beside the video: a report rewritten
every few seconds during a run extracts each poster once, and a replaced video (new
checksum) gets a new one. Where that folder cannot be written, the poster is inlined
as a ``data:`` URI instead.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av

log = logging.getLogger(__name__)

POSTER_DIR = ".posters"
MAX_WIDTH = 320

PosterMode = Literal["file", "inline", "none"]


def poster_path(video: Path, checksum: str) -> Path:
    return video.parent / POSTER_DIR / f"{checksum[:32]}.jpg"


def extract_jpeg(video: Path, *, max_width: int = MAX_WIDTH) -> bytes:
    """The first decodable frame of ``video``, scaled to ``max_width`` at most, as JPEG."""
    with av.open(str(video)) as container:
        if not container.streams.video:
            raise ValueError(f"{video}: no video stream")
        stream = container.streams.video[0]
        frame = next(iter(container.decode(stream)), None)
    if frame is None:
        raise ValueError(f"{video}: no frame decodes")
    width = min(max_width, frame.width)
    height = max(2, round(frame.height * width / frame.width / 2) * 2)
    width = max(2, width // 2 * 2)
    small = frame.reformat(width=width, height=height, format="yuvj420p")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    packets = [*encoder.encode(small), *encoder.encode(None)]
    return b"".join(bytes(p) for p in packets)


def poster_for(
    video: Path, checksum: str | None, *, mode: PosterMode = "file"
) -> Path | str | None:
    """A poster for ``video``: the JPEG's path (``file``), a ``data:`` URI (``inline``,
    or ``file`` where the folder is read-only), or None (no video, or it cannot decode).
    """
    if mode == "none" or not video.is_file():
        return None
    digest = checksum or _sha256(video)
    target = poster_path(video, digest)
    if mode == "file" and target.is_file():
        return target
    try:
        data = extract_jpeg(video)
    except (av.FFmpegError, ValueError, OSError) as exc:
        log.warning("no poster for %s: %s", video, exc)
        return None
    if mode == "file":
        try:
            _write(target, data)
            return target
        except OSError as exc:
            log.info("poster for %s inlined (%s)", video, exc)
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def _write(target: Path, data: bytes) -> None:
    # A cache file, rebuilt when lost: a rename keeps readers from half a JPEG, no fsync.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


__all__ = ["POSTER_DIR", "PosterMode", "extract_jpeg", "poster_for", "poster_path"]

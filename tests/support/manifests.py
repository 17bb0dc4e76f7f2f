"""Small helpers for the manifest and expansion tests."""

from __future__ import annotations

import json
import struct
import textwrap
import zlib
from pathlib import Path

from batchgen.errors import Problem, UsageError
from batchgen.manifest.loader import LoadedManifest, Overrides, load_manifest


def write(folder: Path, text: str, name: str = "m.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(folder: Path, text: str, **overrides: object) -> LoadedManifest:
    return load_manifest(write(folder, text), overrides=Overrides(**overrides))  # type: ignore[arg-type]


def problems(folder: Path, text: str, **overrides: object) -> list[Problem]:
    try:
        load(folder, text, **overrides)
    except UsageError as exc:
        return exc.problems
    raise AssertionError("the manifest loaded without problems")


def png(width: int = 4, height: int = 3, color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    raw = b"".join(b"\x00" + bytes(color) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 32 + b"\xff\xd9"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 28


def write_manifest(
    folder: Path,
    subjects: list[str],
    *,
    name: str = "sweep",
    ratios: tuple[str, ...] = ("16:9", "9:16"),
    extra: str = "",
    file: str = "sweep.yaml",
) -> Path:
    """A manifest of ``subjects`` x ``ratios`` jobs (5 s at 720p)."""
    text = (
        f"name: {name}\n"
        "out_dir: out\n"
        'filename: "{index:03d}-{subject}"\n'
        "defaults:\n"
        '  prompt: "a {subject} in a meadow"\n'
        "  resolution: 720p\n"
        '  duration: "5"\n'
        "matrix:\n"
        f"  subject: {json.dumps(subjects)}\n"
        f"  aspect_ratio: {json.dumps(list(ratios))}\n" + extra
    )
    path = folder / file
    path.write_text(text, encoding="utf-8")
    return path


SWEEP = """
defaults: {prompt: "a {subject} in {style}", resolution: 720p}
matrix:
  subject: [cat, dog]
  style: [ink, oil, clay]
  aspect_ratio: ["16:9", "9:16"]
repeat: 2
"""


GOOD = 'defaults: {prompt: "a {subject}"}\nmatrix:\n  subject: [fox, heron]\n'

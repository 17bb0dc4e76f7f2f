"""The partial file of one download: what lets a cut download resume, even in another process.

``batchgen.files.download`` streams into ``Partial.part`` and keeps the response's
validators (ETag, Last-Modified) and total size beside it; ``hash_prefix`` re-hashes
what is already on disk, ``content_range`` reads a 206 answer's range.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass
class Partial:
    """A download in progress: ``.{name}.part``, its validators in ``.{name}.part.meta``,
    and the sha256 of the bytes hashed so far."""

    part: Path
    meta: Path
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None
    hasher: Any = None
    hashed: int = 0

    def size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def if_range(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def save_meta(self) -> None:
        meta = {"etag": self.etag, "last_modified": self.last_modified, "total": self.total}
        self.meta.write_text(json.dumps(meta), encoding="utf-8")

    def discard(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.etag = self.last_modified = None
        self.total = None
        self.hasher, self.hashed = None, 0


def hash_prefix(path: Path, length: int | None) -> tuple[Any, int]:
    """sha256 of the first ``length`` bytes of ``path`` (all when None), and the count."""
    hasher = hashlib.sha256()
    done = 0
    if length == 0:
        return hasher, 0
    with open(path, "rb") as fh:
        while length is None or done < length:
            want = CHUNK if length is None else min(CHUNK, length - done)
            block = fh.read(want)
            if not block:
                break
            hasher.update(block)
            done += len(block)
    return hasher, done


def content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``Content-Range: bytes start-end/total`` as numbers (None where absent or ``*``)."""
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total and total != "*" else None,
    )

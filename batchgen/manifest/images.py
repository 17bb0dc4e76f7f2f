"""Local source images: checked when the manifest loads, inlined when a job is sent.

A manifest names images by URL (sent as they are) or by a local path (relative to the
manifest's folder). A local image is checked at load time (it exists, it is a JPEG,
PNG or WebP by its first bytes, it is at most ``MAX_IMAGE_BYTES``) and stored in the
job's input as a *reference* ``file:<path>#sha256=<hex>``: the state database never
holds image bytes, and the job key uses the hash, not the path, so moving or renaming
an image changes no key while editing it does.

Just before the POST, ``materialize`` turns each reference into a ``data:`` URI, after
checking that the file still has the bytes it had when the batch was planned: a job is
never sent with a different image than the one it was planned (and keyed) with.

A manifest may map a local folder to a public base URL (``images:``); images under that
folder are then sent as ``<base URL>/<path inside the folder>`` instead of inline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from batchgen.errors import InputError, Problem, UsageError
from batchgen.manifest.safefile import FileRefused, open_regular, read_regular

MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: the largest request body ``batchgen sim`` takes; the API documents no limit, so a
#: larger body is warned about (validate, plan) and named when refused (413), not refused
REQUEST_BODY_LIMIT = 8 * 1024 * 1024
#: the request's JSON around its images: model, prompt and the other inputs
BODY_OVERHEAD = 2 * 1024
FILE_PREFIX = "file:"
_SHA_MARK = "#sha256="


class ImageError(InputError):
    """A local image that cannot be used; ``fix`` says what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True, slots=True)
class LocalImage:
    path: Path  # absolute
    sha256: str
    mime: str
    size: int


def sniff(head: bytes) -> str | None:
    """The MIME type of an image from its first bytes: JPEG, PNG or WebP, else None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def is_remote(ref: str) -> bool:
    """True for what the API takes as it is: http(s) and data: URLs."""
    return ref.startswith(("http://", "https://", "data:"))


def check_image(path: Path, *, max_bytes: int = MAX_IMAGE_BYTES) -> LocalImage:
    """Check a local image and hash it; ``ImageError`` says what is wrong and how to fix it."""
    try:
        with open_regular(path, "image") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= max_bytes:
                data = f.read(max_bytes + 1)
                size = len(data)
    except FileRefused as exc:
        raise ImageError(str(exc), exc.fix) from None
    except OSError as exc:
        raise ImageError(
            f"image {path} cannot be read: {exc.strerror or exc}", "check it"
        ) from None
    if size > max_bytes:
        raise ImageError(
            f"image {path} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:.0f} MB limit",
            "shrink or recompress it, or host it and give its https:// URL",
        )
    mime = sniff(data[:16])
    if mime is None:
        raise ImageError(
            f"image {path} is not a JPEG, PNG or WebP file (judged by its content)",
            "convert it to JPEG, PNG or WebP",
        )
    return LocalImage(path=path, sha256=hashlib.sha256(data).hexdigest(), mime=mime, size=size)


def data_uri_length(size: int, mime: str) -> int:
    """The length of the ``data:`` URI of an image of ``size`` bytes (base64: 4/3)."""
    return len(f"data:{mime};base64,") + 4 * ((size + 2) // 3)


def body_warning(
    images: list[tuple[str, LocalImage]], *, limit: int = REQUEST_BODY_LIMIT
) -> str | None:
    """A warning when a job sending these local images inline gets a request body over
    ``limit`` (``images``: the path as written, the checked image), else None."""
    body = BODY_OVERHEAD + sum(data_uri_length(i.size, i.mime) + 3 for _w, i in images)
    if body <= limit:
        return None
    names = ", ".join(f"{w} ({i.size / 1e6:.1f} MB)" for w, i in images)
    return (
        f"a job with the image {names} sends a request of about {body / 1e6:.1f} MB "
        f"(local images go inline as base64, 4/3 of their size), over the "
        f"{limit / 1e6:.1f} MB a server may take (batchgen sim answers 413 and the job "
        "fails, uncharged): shrink the image, or host it and give its https:// URL "
        "(or map its folder under images:)"
    )


def too_large_message(message: str, stored: dict[str, Any], sent: dict[str, Any]) -> str:
    """The failure message of a request refused as too large (413), naming the local
    images that made it so and the size of what was sent."""
    body = len(json.dumps(sent, separators=(",", ":")))
    urls = stored.get("image_urls")
    refs = [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
    local = [p[0] for u in refs if (p := parse_reference(u))]
    if not local:
        return f"{message} (request body {body / 1e6:.1f} MB)"
    return (
        f"{message}: the request body was {body / 1e6:.1f} MB because the image "
        f"{', '.join(local)} goes inline as base64; shrink it, or host it and give its "
        "https:// URL (or map its folder under images:)"
    )


def reference(written: str, sha256: str) -> str:
    """The stored form of a local image: the path as written plus the hash of its bytes."""
    return f"{FILE_PREFIX}{written}{_SHA_MARK}{sha256}"


def parse_reference(ref: str) -> tuple[str, str] | None:
    """``(path as written, sha256)`` of a stored local reference, else None."""
    if not ref.startswith(FILE_PREFIX) or _SHA_MARK not in ref:
        return None
    path, _, sha = ref[len(FILE_PREFIX) :].rpartition(_SHA_MARK)
    return path, sha


def key_form(ref: str) -> str:
    """What the job key sees of an image: local bytes by hash, anything else as written."""
    parsed = parse_reference(ref)
    return f"sha256:{parsed[1]}" if parsed else ref


def resolve(written: str, base_dir: Path | None) -> Path:
    path = Path(written).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def public_url(written: str, base_dir: Path, mapping: dict[str, str]) -> str | None:
    """The public URL of a local image when ``mapping`` (folder -> base URL) covers it."""
    target = resolve(written, base_dir).resolve()
    best: tuple[int, str] | None = None
    for folder, base in mapping.items():
        try:  # ValueError: not under this folder (or a NUL in its name)
            root = resolve(folder, base_dir).resolve()
            inner = target.relative_to(root)
        except ValueError:
            continue
        if best is None or len(root.parts) > best[0]:
            best = (len(root.parts), base.rstrip("/") + "/" + PurePosixPath(inner).as_posix())
    return best[1] if best else None


def materialize(input_: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """The stored input -> what is POSTed: local image references become data: URIs.

    Raises ``UsageError`` when a referenced image is gone, no longer an image, or has
    other bytes than when the batch was planned (the engine then fails that job).
    """
    urls = input_.get("image_urls")
    if not isinstance(urls, list) or not any(
        isinstance(u, str) and u.startswith(FILE_PREFIX) for u in urls
    ):
        return input_
    out = dict(input_)
    out["image_urls"] = [_inline(u, base_dir) if isinstance(u, str) else u for u in urls]
    return out


def _inline(ref: str, base_dir: Path | None) -> str:
    parsed = parse_reference(ref)
    if parsed is None:
        return ref
    written, sha = parsed
    path = resolve(written, base_dir)
    # Read once and check the very bytes that are sent; no cache, so an image edited in
    # place is always noticed (one POST at a time makes the re-read cheap).
    try:
        data = read_regular(path, "image", MAX_IMAGE_BYTES)
    except FileRefused as exc:
        message = "image vanished since the batch was planned" if exc.missing else str(exc)
        raise UsageError([Problem(str(path), message, fix="put the original back")]) from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise UsageError(
            [
                Problem(
                    str(path),
                    "image changed since the batch was planned (its bytes differ), "
                    "so this job would not get the image it was planned with",
                    fix="restore the original, or run the manifest again to plan new jobs",
                )
            ]
        )
    mime = sniff(data[:16]) or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

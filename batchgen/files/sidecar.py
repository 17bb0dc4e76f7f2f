"""The JSON file beside each video: what was asked, what it cost, what arrived.

``clip.mp4`` gets ``clip.mp4.json``, written atomically (temp file in the same folder,
fsync, rename, fsync of the folder), keys sorted, indented by 2, so re-running a
download rewrites the same bytes for the same facts.

Only documented fields are accepted (``FIELDS``); anything else is a programming error
and raises ``ValueError``. That is how an API key can never reach a sidecar: there is
no field for headers or credentials, and any string that looks like a Runbase key
(``sk-...``) is replaced by ``[redacted]`` as a last line of defence.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from batchgen.redact import redact_text

#: the fields a sidecar may hold, and what each means
FIELDS: dict[str, str] = {
    "batch": "batch name",
    "model": "model id, e.g. bytedance/seedance-1-pro",
    "key": "job key (stable across runs)",
    "index": "job index in the batch",
    "variant": "repeat number of the combination",
    "prompt": "the prompt as sent",
    "input": "the model input as planned (local images as references)",
    "axes": "axis / variable labels of the job",
    "run_id": "Runbase run id",
    "attempts": "submissions made for the job",
    "cost_usd": "what the run cost, in USD",
    "cost_micro_usd": "what the run cost, in micro-USD",
    "timings": "timestamps: submitted_at, run_created_at, run_completed_at, downloaded_at",
    "file": "the video's path relative to the output folder",
    "sha256": "sha256 of the video file",
    "size": "video size in bytes",
    "media": "what the decoder found: codec, width, height, duration_s, frames",
    "media_note": "a mismatch between what was asked and what arrived, if any",
    "note": "free text",
}


def sidecar_path(video_path: Path) -> Path:
    video_path = Path(video_path)
    return video_path.with_name(video_path.name + ".json")


def write_sidecar(video_path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``<video>.json`` atomically; returns its path. See ``FIELDS`` for ``data``."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"sidecar: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}"
        )
    text = json.dumps(scrub(dict(data)), sort_keys=True, indent=2, ensure_ascii=False, default=str)
    target = sidecar_path(video_path)
    atomic_write_text(target, text + "\n")
    return target


def read_sidecar(video_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(sidecar_path(video_path).read_text(encoding="utf-8"))
    return data


def atomic_write_text(target: Path, text: str, *, shared: bool = False) -> None:
    """Replace ``target`` with ``text`` so a reader sees the old file or the new, never half.

    ``shared``: several processes may write ``target`` at once (a summary or metrics
    file that a run refused by the lock also writes), so each uses its own temp name.
    """
    with atomic_writer(target, shared=shared) as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_writer(
    target: Path, *, shared: bool = False, newline: str | None = None
) -> Iterator[TextIO]:
    """A text file that replaces ``target`` (fsync, rename, fsync of the folder) when the
    block ends without an error; on an error ``target`` is untouched and the temp is gone."""
    # One writer per file (the batch lock): a fixed temp name means a crash leftover is
    # simply overwritten by the next write instead of piling up.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp" if shared else f".{target.name}.tmp")
    try:
        if tmp.is_symlink():  # our temp name: a link there is never written through
            tmp.unlink()
        with open(tmp, "w", encoding="utf-8", newline=newline) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def scrub(value: Any) -> Any:
    """``value`` with every key-like string redacted and every URL password masked
    (``batchgen.redact.mask_urls_in``), dicts and lists walked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {str(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value

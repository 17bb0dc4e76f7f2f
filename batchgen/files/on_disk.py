"""Are the videos of succeeded jobs still on disk, as recorded? (Before a run says "done".)

A job is ``succeeded`` once its files were fetched, checked and recorded. Someone may
delete or overwrite them later, or point ``--out`` at an empty folder. ``run``,
``resume`` and ``retry`` therefore look at every succeeded job's files before they hand
over to the engine, and send the damaged ones back to ``downloading``: the engine
then fetches them again the usual way (one GET of the run for fresh URLs, streamed,
checked, atomic), or fails them with ``output_lost`` when the run is gone.

What is compared: each file's size with the ``size`` in its sidecar (whose ``sha256``
must be the one the database recorded), so the check costs one ``stat`` and one small
read per file; with ``verify`` also the file's sha256 with the recorded one. A file
whose sidecar is missing is fetched "again" too: the download keeps a video that still
has the recorded checksum and only rewrites the sidecar.

The scan is blocking file-system work: ``find_damaged`` runs in a worker thread and
reads the jobs a page at a time, so a batch of a million jobs never sits in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from batchgen.events import Observer, TransitionEvent
from batchgen.files.sidecar import read_sidecar
from batchgen.states import JobState
from batchgen.store.schema import Batch, Job, transition

log = logging.getLogger(__name__)

PAGE = 2000
LOGGED = 20  # damaged jobs named one by one in the log; the rest are counted


@dataclass(frozen=True, slots=True)
class Damage:
    job_id: int
    idx: int
    reason: str  # "001-fox.mp4 is missing", ...


async def send_back_damaged(
    db: Engine,
    batch: Batch,
    out_dir: Path,
    *,
    verify: bool,
    now: float,
    observers: Sequence[Observer] = (),
    stop: Callable[[], bool] = lambda: False,
) -> list[int]:
    """``find_damaged`` in a worker thread (the loop stays free for signals), then
    ``mark_for_repair``; returns the ids of the jobs sent back to ``downloading``."""
    assert batch.id is not None
    damaged = await asyncio.to_thread(find_damaged, db, batch.id, out_dir, verify=verify, stop=stop)
    return mark_for_repair(db, damaged, now=now, batch=batch.name, observers=observers)


def find_damaged(
    db: Engine,
    batch_id: int,
    out_dir: Path,
    *,
    verify: bool,
    stop: Callable[[], bool] = lambda: False,
) -> list[Damage]:
    """Every succeeded job of the batch whose files are not in ``out_dir`` as recorded
    (those found so far once ``stop()`` is true: a signal ends a long scan)."""
    damaged: list[Damage] = []
    after = 0
    while not stop():
        with db.connect() as conn:
            rows = conn.execute(
                select(Job.id, Job.idx, Job.output_paths_json, Job.checksums_json)
                .where(
                    Job.batch_id == batch_id,
                    Job.state == JobState.SUCCEEDED.value,
                    col(Job.id) > after,
                )
                .order_by(col(Job.id))
                .limit(PAGE)
            ).all()
            conn.rollback()
        for job_id, idx, paths_json, sums_json in rows:
            reason = file_problem(out_dir, _strings(paths_json), _strings(sums_json), verify)
            if reason is not None:
                damaged.append(Damage(int(job_id), int(idx), reason))
        if len(rows) < PAGE:
            break
        after = int(rows[-1][0])
    return damaged


def file_problem(root: Path, paths: list[str], sums: list[str], verify: bool) -> str | None:
    """Why the recorded files ``paths`` (relative to ``root``) are not as recorded, or None."""
    if not paths:
        return "no file recorded"
    for i, rel in enumerate(paths):
        video = root / rel
        try:
            st = video.stat()
        except FileNotFoundError:
            return f"{rel} is missing"
        except OSError as exc:
            return f"{rel} cannot be read ({exc.strerror or exc})"
        if not stat.S_ISREG(st.st_mode):
            return f"{rel} is not a file"
        want = sums[i] if i < len(sums) else None
        try:
            side = read_sidecar(video)
        except (OSError, ValueError):
            return f"{rel}: its sidecar is missing or unreadable"
        if want and side.get("sha256") != want:
            return f"{rel}: its sidecar does not match the record"
        if side.get("size") != st.st_size:
            return f"{rel} has {st.st_size} bytes, {side.get('size')} recorded"
        if verify and want and _sha256(video) != want:
            return f"{rel}: sha256 differs from the record"
    return None


def mark_for_repair(
    db: Engine,
    damaged: list[Damage],
    *,
    now: float,
    batch: str = "",
    observers: Sequence[Observer] = (),
) -> list[int]:
    """Send the damaged jobs back to ``downloading`` (their runs are paid: never resubmitted)
    and tell the observers (the log file sees every transition).

    Returns the ids moved; a job another process changed meanwhile is left alone.
    """
    moved: list[int] = []
    events: list[TransitionEvent] = []
    for start in range(0, len(damaged), PAGE):
        chunk = {d.job_id: d for d in damaged[start : start + PAGE]}
        with Session(db, expire_on_commit=False) as s:
            jobs = s.exec(select(Job).where(col(Job.id).in_(list(chunk)))).all()
            for job in jobs:
                assert job.id is not None
                if job.state != JobState.SUCCEEDED.value:
                    continue
                detail = f"output check: {chunk[job.id].reason}"
                if len(moved) < LOGGED:
                    log.warning("job #%d: %s; fetching it again", job.idx, detail)
                transition(s, job, JobState.DOWNLOADING, at=now, detail=detail)
                moved.append(job.id)
                events.append(
                    TransitionEvent(
                        at=now,
                        batch=batch,
                        job_key=job.key,
                        job_idx=job.idx,
                        from_state=JobState.SUCCEEDED.value,
                        to_state=JobState.DOWNLOADING.value,
                        run_id=job.run_id,
                        detail=detail,
                    )
                )
            s.commit()
    if len(moved) > LOGGED:
        log.warning(
            "%d more succeeded jobs lack their files: fetching them again", len(moved) - LOGGED
        )
    for ev in events:
        for obs in observers:
            try:
                obs.transition(ev)
            except Exception:
                log.exception("observer %r failed", obs)
    return moved


def repaired(db: Engine, job_ids: list[int]) -> int:
    """How many of ``job_ids`` are succeeded again."""
    n = 0
    for start in range(0, len(job_ids), PAGE):
        with Session(db) as s:
            n += len(
                s.exec(
                    select(Job.id).where(
                        col(Job.id).in_(job_ids[start : start + PAGE]),
                        Job.state == JobState.SUCCEEDED.value,
                    )
                ).all()
            )
    return n


def _strings(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


__all__ = [
    "Damage",
    "file_problem",
    "find_damaged",
    "mark_for_repair",
    "repaired",
    "send_back_damaged",
]

"""Read-only queries behind ``batchgen report``, ``batchgen export`` and the database
part of ``batchgen plan``.

One streaming ``SELECT`` per call, read through the pool's DB-API connection: in
autocommit mode a single statement is its own consistent snapshot (WAL), and no
``BEGIN IMMEDIATE`` is taken, so a report written while ``batchgen run`` works on
the batch never holds the write lock the engine needs. On PostgreSQL the same SQL runs
in one read-only transaction through a server-side cursor (``store.dbapi.stream``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import col, select

from batchgen.redact import mask_urls_deep, mask_urls_in
from batchgen.states import JobState
from batchgen.store.dbapi import qmark, stream
from batchgen.store.schema import Batch, Job

_FETCH = 500
#: keys per read-only lookup in ``lookup_states`` (well under SQLite's 32766 parameters)
LOOKUP_CHUNK = 500

_COLUMNS = (
    "id, key, idx, variant, listed, input_json, axes_json, state, run_id, attempts, "
    "estimate_micro_usd, cost_micro_usd, submitted_at, run_created_at, run_completed_at, "
    "finished_at, output_paths_json, checksums_json, last_error, error_code, media_note"
)


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job as the report and the export see it (decoded, detached from the DB)."""

    id: int
    key: str
    idx: int
    variant: int
    listed: bool
    input: dict[str, Any]
    axes: dict[str, str]
    state: str
    run_id: str | None
    attempts: int
    estimate_micro_usd: int
    cost_micro_usd: int
    submitted_at: float | None
    run_created_at: str | None
    run_completed_at: str | None
    finished_at: float | None
    output_paths: list[str]
    checksums: list[str]
    last_error: str | None
    error_code: str | None
    media_note: str | None


def iter_job_rows(db: Engine, batch_id: int) -> Iterator[JobRow]:
    """Every job of the batch in ``idx`` order, streamed.

    Like ``store.jobs.counts``, a job the manifest no longer lists is left out while
    it is still queued (it will never run); once it ran, it stays in the picture.
    """
    conn = db.raw_connection()
    try:
        yield from map(
            _row,
            stream(
                conn.driver_connection,
                f"SELECT {_COLUMNS} FROM job WHERE batch_id = ? AND (listed OR state != ?) "
                "ORDER BY idx, id",
                (batch_id, JobState.QUEUED.value),
                size=_FETCH,
            ),
        )
    finally:
        conn.close()


def get_batch_row(db: Engine, batch_id: int) -> Batch:
    """The batch row, read the same lock-free way."""
    conn = db.raw_connection()
    try:
        cur = qmark(conn.driver_connection).execute(
            "SELECT id, name, model, manifest_path, manifest_sha256, out_dir, "
            "filename_template, settings_json, run_date, canceled, abandon, created_at, "
            "updated_at FROM batch WHERE id = ?",
            (batch_id,),
        )
        r = cur.fetchone()
        cur.close()
    finally:
        conn.close()
    if r is None:
        raise LookupError(f"no batch with id {batch_id}")
    return Batch(
        id=r[0],
        name=r[1],
        model=r[2],
        manifest_path=r[3],
        manifest_sha256=r[4],
        out_dir=r[5],
        filename_template=r[6],
        settings_json=r[7],
        run_date=r[8],
        canceled=bool(r[9]),
        abandon=bool(r[10]),
        created_at=r[11],
        updated_at=r[12],
    )


# ------------------------------------------------------------------ plan


def lookup_states(db: Engine, batch_id: int, keys: Sequence[str]) -> dict[str, str]:
    """``key -> state`` for those of ``keys`` the batch already holds."""
    found: dict[str, str] = {}
    with db.connect() as conn:
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start : start + LOOKUP_CHUNK]
            rows = conn.execute(
                select(Job.key, Job.state).where(Job.batch_id == batch_id, col(Job.key).in_(chunk))
            )
            found.update((str(k), str(s)) for k, s in rows)
        conn.rollback()
    return found


def job_total(db: Engine, batch_id: int) -> int:
    with db.connect() as conn:
        n = conn.execute(select(func.count()).where(Job.batch_id == batch_id)).scalar_one()
        conn.rollback()
    return int(n)


def batch_id_named(db: Engine, name: str) -> int | None:
    with db.connect() as conn:
        row = conn.execute(select(Batch.id).where(Batch.name == name)).first()
        conn.rollback()
    return None if row is None else int(row[0] or 0)


def _row(r: tuple[Any, ...]) -> JobRow:
    return JobRow(
        id=int(r[0]),
        key=str(r[1]),
        idx=int(r[2]),
        variant=int(r[3] or 0),
        listed=bool(r[4]),
        # an image URL's password is what the API needs, never what a reader sees
        input=mask_urls_deep(_obj(r[5])),
        axes={str(k): mask_urls_in(_label(v)) for k, v in _obj(r[6]).items()},
        state=str(r[7]),
        run_id=r[8],
        attempts=int(r[9] or 0),
        estimate_micro_usd=int(r[10] or 0),
        cost_micro_usd=int(r[11] or 0),
        submitted_at=r[12],
        run_created_at=r[13],
        run_completed_at=r[14],
        finished_at=r[15],
        output_paths=[str(p) for p in _list(r[16])],
        checksums=[str(c) for c in _list(r[17])],
        last_error=None if r[18] is None else mask_urls_in(str(r[18])),
        error_code=r[19],
        media_note=r[20],
    )


def _obj(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _list(text: str | None) -> list[Any]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


__all__ = [
    "JobRow",
    "batch_id_named",
    "get_batch_row",
    "iter_job_rows",
    "job_total",
    "lookup_states",
]

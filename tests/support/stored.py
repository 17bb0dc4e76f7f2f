"""Reading and moving a stored batch's jobs straight in the state DB, as the engine would."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from batchgen.manifest.loader import load_manifest
from batchgen.states import JobState
from batchgen.store import batches
from batchgen.store import jobs as store
from batchgen.store.charges import LedgerEntry
from batchgen.store.schema import Job, open_db
from tests.support.manifests import write_manifest


def rows(db_path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    out = [dict(r) for r in conn.execute("SELECT * FROM job ORDER BY idx, id")]
    conn.close()
    return out


def by_subject(db_path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (json.loads(r["axes_json"])["subject"], json.loads(r["input_json"])["aspect_ratio"]): r
        for r in rows(db_path)
    }


def finish(db: Engine, job_id: int, state: JobState = JobState.SUCCEEDED) -> None:
    """Take a stored job through a paid run, as the engine would."""
    with Session(db, expire_on_commit=False) as s:
        job = s.get(Job, job_id)
    assert job is not None
    path = [JobState.SUBMITTING, JobState.RUNNING]
    if state == JobState.SUCCEEDED:
        path += [JobState.DOWNLOADING, JobState.SUCCEEDED]
    elif state == JobState.FAILED:
        path += [JobState.FAILED]
    for new in path:
        fields: dict[str, Any] = {}
        rows: list[LedgerEntry] = []
        if new == JobState.SUBMITTING:
            fields = {"attempts": 1, "idem_key": f"idem-{job_id}"}
        elif new == JobState.RUNNING:
            fields = {"run_id": f"run-{job_id}", "cost_micro_usd": 242_000}
            rows = [LedgerEntry("charge", 242_000, f"run-{job_id}")]
        elif new == JobState.SUCCEEDED:
            fields = {"output_paths_json": json.dumps([f"{job_id}.mp4"])}
        elif new == JobState.FAILED:
            fields = {"last_error": "the model refused", "error_code": "model_error"}
        moved = store.move(db, job, new, ledger_rows=rows, **fields)
        assert moved is not None
        job = moved


def stored_batch(tmp_path: Path, subjects: list[str]) -> Path:
    """A state database holding the batch ``sweep`` with one job done and one failed."""
    db_path = tmp_path / "state.db"
    db = open_db(db_path)
    batches.sync_batch(db, load_manifest(write_manifest(tmp_path, subjects)))
    stored = by_subject(db_path)
    finish(db, stored[(subjects[0], "16:9")]["id"])
    finish(db, stored[(subjects[0], "9:16")]["id"], JobState.FAILED)
    db.dispose()  # the last connection closing folds the WAL back in
    return db_path


SUBJECTS = [f"s{i:03d}" for i in range(400)]  # x 2 ratios: 800 jobs, several pages


def stored(folder: Path) -> Path:
    db_path = folder / "state.db"
    db = open_db(db_path)
    batches.sync_batch(db, load_manifest(write_manifest(folder, SUBJECTS)))
    db.dispose()  # the last connection closing folds the WAL back in
    assert not db_path.with_name("state.db-wal").exists()
    return db_path


def files(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.name.startswith("state.db")
    }

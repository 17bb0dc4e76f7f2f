"""The PostgreSQL store's rows as the plain records the engine reads, and the one
refusal of its own (``BudgetReached``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchgen.states import JobState
from batchgen.store.pg.queries import JSON_COLUMNS
from batchgen.store.records import BatchRecord, BudgetReached, JobRecord

__all__ = ["BudgetReached", "batch_record", "change_params", "job_record"]

Row = Mapping[str, Any]


def job_record(row: Row) -> JobRecord:
    """A stored ``job`` row as the plain record the engine reads."""
    return JobRecord(
        id=row["id"],
        batch_id=row["batch_id"],
        key=row["key"],
        idx=row["idx"],
        variant=row["variant"],
        input=json.loads(row["input_json"]),
        axes=json.loads(row["axes_json"] or "{}"),
        listed=bool(row["listed"]),
        state=JobState(row["state"]),
        run_id=row["run_id"],
        attempts=row["attempts"],
        errors=row["errors"],
        idem_key=row["idem_key"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        error_code=row["error_code"],
        estimate_micro_usd=row["estimate_micro_usd"],
        cost_micro_usd=row["cost_micro_usd"],
        submitted_at=row["submitted_at"],
        run_created_at=row["run_created_at"],
        run_completed_at=row["run_completed_at"],
        finished_at=row["finished_at"],
        output_paths=tuple(json.loads(row["output_paths_json"] or "[]")),
        checksums=tuple(json.loads(row["checksums_json"] or "[]")),
        media_note=row["media_note"],
        updated_at=row["updated_at"],
        key_fingerprint=row.get("key_fingerprint"),
    )


def batch_record(row: Row) -> BatchRecord:
    return BatchRecord(
        id=row["id"],
        name=row["name"],
        model=row["model"],
        manifest_path=row["manifest_path"],
        manifest_sha256=row["manifest_sha256"],
        out_dir=row["out_dir"],
        filename_template=row["filename_template"],
        settings=json.loads(row["settings_json"] or "{}"),
        run_date=row["run_date"],
        canceled=bool(row["canceled"]),
        abandon=bool(row["abandon"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def change_params(changes: Mapping[str, Any]) -> dict[str, Any]:
    """A move's changes as statement parameters (tuples of names become JSON text)."""
    return {k: json.dumps(list(v)) if k in JSON_COLUMNS else v for k, v in changes.items()}

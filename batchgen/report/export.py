"""``batchgen export``: one row per job, as CSV or JSON lines, for other tools.

Both formats carry the same fields (``FIELDS``). JSON lines keep native types (lists,
objects, numbers, null) and every value exact. CSV flattens: lists and objects become
JSON text, null an empty cell, and every input field and axis also gets its own column
(``input.NAME``, ``axis.NAME``), so a spreadsheet can sort and filter by them. A CSV
cell a spreadsheet would run as a formula (it starts with ``= + - @``, a tab, a
carriage return, a line feed or NUL) gets a ``'`` in front, as OWASP's "CSV Injection"
page advises. The jobs are streamed from the database (twice for CSV: once to learn
the columns).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

from sqlalchemy import Engine

from batchgen.clock import api_duration, iso_utc
from batchgen.files.sidecar import atomic_writer
from batchgen.store.reports import JobRow, get_batch_row, iter_job_rows

Format = Literal["csv", "jsonl"]

#: every record's fields, in column order, and what each means
FIELDS: dict[str, str] = {
    "batch": "batch name",
    "out_dir": "the batch's output folder (output_paths are relative to it)",
    "idx": "job index in the batch (expansion order)",
    "key": "job key (stable content hash)",
    "variant": "repeat number of the combination",
    "listed": "whether the manifest still lists the job",
    "state": "queued, submitting, in_doubt, running, downloading, succeeded, failed, canceled",
    "run_id": "Runbase run id of the latest attempt",
    "attempts": "submissions made",
    "cost_usd": "what the run cost (0 after a refund)",
    "cost_micro_usd": "the same, in micro-USD as the API reports it",
    "estimate_micro_usd": "the price-table estimate reserved before submitting",
    "submitted_at": "when batchgen submitted it (ISO 8601, UTC)",
    "run_created_at": "the API's createdAt",
    "run_completed_at": "the API's completedAt",
    "finished_at": "when the job reached its final state here (ISO 8601, UTC)",
    "generation_s": "createdAt -> completedAt in seconds",
    "output_paths": "output files, relative to out_dir",
    "checksums": "sha256 of each output file",
    "error": "the last error message",
    "error_code": "the API error code (or download_failed)",
    "media_note": "a mismatch the decoder found between what was asked and what arrived",
    "prompt": "the prompt",
    "input": "the model input as stored (local images as references)",
    "axes": "axis / template variable -> value label",
}


def _iso(t: float | None) -> str | None:
    return None if t is None else iso_utc(t)


def record(job: JobRow, *, batch: str, out_dir: str) -> dict[str, Any]:
    prompt = job.input.get("prompt")
    return {
        "batch": batch,
        "out_dir": out_dir,
        "idx": job.idx,
        "key": job.key,
        "variant": job.variant,
        "listed": job.listed,
        "state": job.state,
        "run_id": job.run_id,
        "attempts": job.attempts,
        "cost_usd": job.cost_micro_usd / 1_000_000,
        "cost_micro_usd": job.cost_micro_usd,
        "estimate_micro_usd": job.estimate_micro_usd,
        "submitted_at": _iso(job.submitted_at),
        "run_created_at": job.run_created_at,
        "run_completed_at": job.run_completed_at,
        "finished_at": _iso(job.finished_at),
        "generation_s": api_duration(job.run_created_at, job.run_completed_at),
        "output_paths": job.output_paths,
        "checksums": job.checksums,
        "error": job.last_error,
        "error_code": job.error_code,
        "media_note": job.media_note,
        "prompt": prompt if isinstance(prompt, str) else None,
        "input": job.input,
        "axes": job.axes,
    }


def iter_records(db: Engine, batch_id: int) -> Iterator[dict[str, Any]]:
    """One record per job (see ``FIELDS``), in index order, streamed."""
    batch = get_batch_row(db, batch_id)
    for job in iter_job_rows(db, batch_id):
        yield record(job, batch=batch.name, out_dir=batch.out_dir)


#: a cell starting with one of these is a formula to a spreadsheet (OWASP "CSV
#: Injection": = + - @ tab carriage return; OWASP ASVS 1.2.10 adds NUL; line feed too)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\0")


def neutralize(text: str) -> str:
    """A CSV cell a spreadsheet shows as text: ``'`` before a formula's first character
    (the csv module then quotes the cell and doubles its quotes, RFC 4180)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return neutralize(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return neutralize(str(value))


def _csv_columns(db: Engine, batch_id: int) -> list[str]:
    inputs: dict[str, None] = {}
    axes: dict[str, None] = {}
    for job in iter_job_rows(db, batch_id):
        inputs.update(dict.fromkeys(job.input))
        axes.update(dict.fromkeys(job.axes))
    return [*FIELDS, *(f"input.{k}" for k in inputs), *(f"axis.{k}" for k in axes)]


def write_export(db: Engine, batch_id: int, fmt: Format, stream: TextIO) -> int:
    """Write every job of the batch to ``stream``; returns the number of rows."""
    n = 0
    if fmt == "jsonl":
        for rec in iter_records(db, batch_id):
            stream.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
        return n
    columns = _csv_columns(db, batch_id)
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\r\n")
    # header cells name the manifest's inputs and axes: neutralised like any cell
    writer.writerow({name: neutralize(name) for name in columns})
    for rec in iter_records(db, batch_id):
        row = {name: _cell(rec[name]) for name in FIELDS}
        row.update({f"input.{k}": _cell(v) for k, v in rec["input"].items()})
        row.update({f"axis.{k}": _cell(v) for k, v in rec["axes"].items()})
        writer.writerow(row)
        n += 1
    return n


def export_to_file(db: Engine, batch_id: int, fmt: Format, out: Path) -> int:
    """Like ``write_export``, into ``out`` atomically (a reader never sees half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # newline="": the csv module writes its own line ends
    with atomic_writer(out, newline="") as fh:
        return write_export(db, batch_id, fmt, fh)


__all__ = [
    "FIELDS",
    "FORMULA_START",
    "Format",
    "export_to_file",
    "iter_records",
    "neutralize",
    "record",
    "write_export",
]

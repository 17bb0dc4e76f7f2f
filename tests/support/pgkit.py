"""Setting up and looking at a PostgreSQL store's rows without going through the store:
the PostgreSQL side of the contract suite's ``Kit`` (``test_store_contract.py``) and of
the lease tests."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.rows import dict_row

from batchgen.states import JobState
from batchgen.store.interface import JobStore
from batchgen.store.pg.rows import job_record
from batchgen.store.pg.store import PostgresStore
from batchgen.store.records import JobRecord


def sql(url: str, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run one statement on its own connection (another process, as far as the store
    can tell); its rows as dicts."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        cur = conn.execute(text.encode(), params or {})
        return cur.fetchall() if cur.description else []


class PostgresKit:
    """A store on a real PostgreSQL schema of the test's own (``postgres_url``)."""

    def __init__(self, url: str, store: PostgresStore) -> None:
        self.url = url
        self.store: JobStore = store

    def add_batch(self, name: str = "b", model: str = "m") -> int:
        rows = sql(
            self.url,
            "INSERT INTO batch (name, model, manifest_path, manifest_sha256, out_dir, "
            "filename_template, created_at, updated_at) VALUES (%(name)s, %(model)s, '', '', "
            "'out', '{index}', 0, 0) RETURNING id",
            {"name": name, "model": model},
        )
        return int(rows[0]["id"])

    def add_job(self, batch_id: int, idx: int, **fields: Any) -> JobRecord:
        values: dict[str, Any] = {
            "batch_id": batch_id, "idx": idx, "key": fields.pop("key", f"k{idx}"),
            "input_json": json.dumps(fields.pop("input", {"prompt": f"p{idx}"})),
            "state": fields.pop("state", JobState.QUEUED).value, "updated_at": 0.0, **fields,
        }  # fmt: skip
        names = ", ".join(values)
        marks = ", ".join(f"%({n})s" for n in values)
        rows = sql(self.url, f"INSERT INTO job ({names}) VALUES ({marks}) RETURNING *", values)
        return job_record(rows[0])

    def set_state(self, job_id: int, state: JobState) -> None:
        sql(self.url, "UPDATE job SET state = %(s)s WHERE id = %(id)s",
            {"s": state.value, "id": job_id})  # fmt: skip

    def stored(self, job_id: int) -> JobRecord:
        return job_record(sql(self.url, "SELECT * FROM job WHERE id = %(id)s", {"id": job_id})[0])

    def events(self, job_id: int) -> list[tuple[JobState, JobState]]:
        rows = sql(self.url, "SELECT * FROM event WHERE job_id = %(id)s ORDER BY id",
                   {"id": job_id})  # fmt: skip
        return [(JobState(r["from_state"]), JobState(r["to_state"])) for r in rows]

    def ledger(self, job_id: int) -> list[tuple[str, int, str | None, int, str | None]]:
        rows = sql(self.url, "SELECT * FROM charge WHERE job_id = %(id)s ORDER BY id",
                   {"id": job_id})  # fmt: skip
        return [
            (r["kind"], r["amount_micro_usd"], r["run_id"], r["attempt"], r["idem_key"])
            for r in rows
        ]

"""A state write that fails (the disk is full) stops the run at once with exit 75 and one
clear line; once space is freed, ``resume`` finishes without paying again. A paid run
whose id could not be recorded is named, and its job stays ``submitting`` (in doubt on
resume, found again with its idempotency key), never queued.

Disk full without mounting anything: SQLite's ``PRAGMA max_page_count`` pinned at the
database's current size makes the next write that needs a page fail with SQLITE_FULL
("database or disk is full"), exactly as a full disk does.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

import batchgen.run.runner as runner
from batchgen.errors import ExitCode
from batchgen.events import TransitionEvent
from batchgen.run.runner import arun_batch
from batchgen.sim import Simulator
from batchgen.states import JobState
from batchgen.store import jobs as store
from tests.support.engine import KEY, bid, make_batch, prompts
from tests.support.runs import FAST, Watcher, opts

N = 30
PRICE = 484_000  # the simulator's price of the default input (1080p, 5 s)


class DiskFills(Watcher):
    """Pins the database at its size once ``after`` runs were recorded."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.full = False

    def transition(self, ev: TransitionEvent) -> None:
        super().transition(ev)
        running = sum(t.to_state == JobState.RUNNING.value for t in self.transitions)
        if running >= self.after:
            self.full = True


def fill_disk_when(watcher: DiskFills, monkeypatch: pytest.MonkeyPatch) -> None:
    real = runner.open_db  # type: ignore[attr-defined]

    def open_db(path: Path, **kw: Any) -> Engine:
        db = real(path, **kw)

        @event.listens_for(db, "begin")
        def pin(conn: Any) -> None:
            if watcher.full:
                raw = conn.connection.driver_connection
                pages = raw.execute("PRAGMA page_count").fetchone()[0]
                raw.execute(f"PRAGMA max_page_count = {pages}")

        return db

    monkeypatch.setattr(runner, "open_db", open_db)


async def test_a_full_disk_stops_with_75_at_once_and_resume_pays_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path = tmp_path / "s.db"
    db, batch = make_batch(db_path, prompts(N), tmp_path / "out")
    log_file = tmp_path / "run.jsonl"
    async with Simulator(FAST) as sim:
        with monkeypatch.context() as mp:
            filler = DiskFills(after=2)
            fill_disk_when(filler, mp)
            summary = await arun_batch(
                db_path, api_key=KEY, batch=batch.name,
                options=opts(sim.base_url, log_file=log_file), observers=[filler],
            )  # fmt: skip
        assert summary.exit_code == ExitCode.INTERRUPTED, summary.reason
        assert "database or disk is full" in summary.reason and "\n" not in summary.reason
        assert "batchgen resume" in summary.reason and str(db_path) in summary.reason
        counts = store.counts(db, bid(batch))
        assert counts["succeeded"] < N and counts["queued"] > 0  # stopped at once
        assert counts["submitting"] <= 1
        every = list(store.iter_jobs(db, bid(batch), states=list(JobState)))
        recorded = sum(1 for j in every if j.run_id)
        created = sim.stats()["runs_created"]
        assert created - recorded == counts["submitting"]  # a paid run is recorded or named
        if counts["submitting"]:
            assert "was created (and paid) but is not recorded" in summary.reason
        lines = [json.loads(x) for x in log_file.read_text().splitlines()]
        assert lines[-1]["event"] == "finished" and lines[-1]["exit_code"] == 75
        assert [x for x in lines if x["event"] == "error"] != []

        # space freed: resume finishes, and the service charged each job once
        summary = await arun_batch(
            db_path, api_key=KEY, batch=batch.name, options=opts(sim.base_url)
        )
        st = sim.stats()
    assert summary.exit_code == 0, summary.reason
    assert st["runs_created"] == N and st["charged_micro_usd"] == N * PRICE
    assert store.counts(db, bid(batch))["succeeded"] == N


def disk_full_error() -> OperationalError:
    """A real SQLITE_FULL from SQLite, as SQLAlchemy raises it."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("PRAGMA max_page_count = 2")
    try:
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.OperationalError as exc:
        assert exc.sqlite_errorname == "SQLITE_FULL"
        return OperationalError("UPDATE job ...", {}, exc)
    raise AssertionError("SQLite did not refuse the write")


async def test_a_paid_run_whose_id_cannot_be_recorded_is_named_and_stays_in_doubt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path = tmp_path / "s.db"
    db, batch = make_batch(db_path, prompts(3), tmp_path / "out")
    real_move = store.move

    def move(engine: Any, job: Any, new: JobState, **kw: Any) -> Any:
        if new is JobState.RUNNING:
            raise disk_full_error()
        return real_move(engine, job, new, **kw)

    async with Simulator(FAST) as sim:
        with monkeypatch.context() as mp:
            mp.setattr(store, "move", move)
            summary = await arun_batch(
                db_path, api_key=KEY, batch=batch.name,
                options=opts(sim.base_url, concurrency=1, log_file=tmp_path / "l.jsonl"),
            )  # fmt: skip
        assert sim.stats()["runs_created"] == 1
        run_id = next(iter(sim.state.book.runs))
        assert summary.exit_code == 75, summary.reason
        assert run_id in summary.reason and "database or disk is full" in summary.reason
        assert run_id in (tmp_path / "l.jsonl").read_text()
        counts = store.counts(db, bid(batch))
        assert counts["submitting"] == 1 and counts["queued"] == 2  # never moved to queued

        summary = await arun_batch(
            db_path, api_key=KEY, batch=batch.name, options=opts(sim.base_url)
        )
        st = sim.stats()
    assert summary.exit_code == 0 and summary.in_doubt == 1
    assert st["runs_created"] == 3 and st["idempotent_replays"] == 1

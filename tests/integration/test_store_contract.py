"""The ``JobStore`` contract, run against every implementation (SQLite file, memory,
PostgreSQL).

What the engine relies on: check-and-set moves (a stale move changes nothing and
returns None), the transition table enforced, ledger rows written with their move
(or on their own when the move lost its race), the same sums, queued jobs paged in
``(idx, id)`` order, recovery of jobs left submitting, first-in-first-out writes, a
write that lands although its caller was cancelled, and ``aclose`` draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session, col, select

from batchgen.errors import IllegalTransition, StateError
from batchgen.states import JobState
from batchgen.store import jobs as job_sql
from batchgen.store.interface import JobStore
from batchgen.store.memory import InMemoryStore
from batchgen.store.pg.store import PostgresStore
from batchgen.store.records import BatchFlags, JobRecord, LedgerEntry, RunTimes
from batchgen.store.schema import Batch, Charge, Event, Job, open_db
from batchgen.store.sqlite_store import SqliteStore, job_record
from tests.support.pgkit import PostgresKit

Q, S, D, R, DL, OK, F, C = (
    JobState.QUEUED,
    JobState.SUBMITTING,
    JobState.IN_DOUBT,
    JobState.RUNNING,
    JobState.DOWNLOADING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELED,
)
T0 = 1_700_000_000.0


class Kit:
    """A store and the few things a test needs beside it: set up rows, play another
    process, and look at what was stored without going through the store."""

    store: JobStore

    def add_batch(self, name: str = "b", model: str = "m") -> int:
        raise NotImplementedError

    def add_job(self, batch_id: int, idx: int, **fields: Any) -> JobRecord:
        raise NotImplementedError

    def set_state(self, job_id: int, state: JobState) -> None:
        raise NotImplementedError

    def stored(self, job_id: int) -> JobRecord:
        raise NotImplementedError

    def events(self, job_id: int) -> list[tuple[JobState, JobState]]:
        raise NotImplementedError

    def ledger(self, job_id: int) -> list[tuple[str, int, str | None, int, str | None]]:
        """(kind, amount, run id, attempt, idempotency key) in the order written."""
        raise NotImplementedError


class MemoryKit(Kit):
    def __init__(self) -> None:
        self.mem = InMemoryStore()
        self.store = self.mem

    def add_batch(self, name: str = "b", model: str = "m") -> int:
        return self.mem.add_batch(name, model).id

    def add_job(self, batch_id: int, idx: int, **fields: Any) -> JobRecord:
        fields.setdefault("input", {"prompt": f"p{idx}"})
        return self.mem.add_job(batch_id, fields.pop("key", f"k{idx}"), idx, **fields)

    def set_state(self, job_id: int, state: JobState) -> None:
        self.mem.set_state(job_id, state)

    def stored(self, job_id: int) -> JobRecord:
        return self.mem.jobs[job_id]

    def events(self, job_id: int) -> list[tuple[JobState, JobState]]:
        return [(e.from_state, e.to_state) for e in self.mem.events if e.job_id == job_id]

    def ledger(self, job_id: int) -> list[tuple[str, int, str | None, int, str | None]]:
        return [
            (r.kind, r.amount_micro_usd, r.run_id, r.attempt, r.idem_key)
            for r in self.mem.ledger
            if r.job_id == job_id
        ]


class SqliteKit(Kit):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = open_db(path)
        self.store = SqliteStore(self.db)

    def _session(self) -> Session:
        return Session(self.db, expire_on_commit=False)

    def add_batch(self, name: str = "b", model: str = "m") -> int:
        with self._session() as s:
            batch = Batch(
                name=name, model=model, manifest_path="", manifest_sha256="", out_dir="out",
                filename_template="{index}",
            )  # fmt: skip
            s.add(batch)
            s.commit()
            assert batch.id is not None
            return batch.id

    def add_job(self, batch_id: int, idx: int, **fields: Any) -> JobRecord:
        state = fields.pop("state", Q)
        inp = fields.pop("input", {"prompt": f"p{idx}"})
        key = fields.pop("key", f"k{idx}")
        with self._session() as s:
            row = Job(
                batch_id=batch_id, key=key, idx=idx, input_json=json.dumps(inp),
                state=state.value, **fields,
            )  # fmt: skip
            s.add(row)
            s.commit()
            return job_record(row)

    def set_state(self, job_id: int, state: JobState) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute("UPDATE job SET state = ? WHERE id = ?", (state.value, job_id))

    def stored(self, job_id: int) -> JobRecord:
        with self._session() as s:
            row = s.get(Job, job_id)
            assert row is not None
            return job_record(row)

    def events(self, job_id: int) -> list[tuple[JobState, JobState]]:
        with self._session() as s:
            rows = s.exec(select(Event).where(Event.job_id == job_id).order_by(col(Event.id)))
            return [(JobState(e.from_state), JobState(e.to_state)) for e in rows]

    def ledger(self, job_id: int) -> list[tuple[str, int, str | None, int, str | None]]:
        with self._session() as s:
            rows = s.exec(select(Charge).where(Charge.job_id == job_id).order_by(col(Charge.id)))
            return [(c.kind, c.amount_micro_usd, c.run_id, c.attempt, c.idem_key) for c in rows]


class PgKit(PostgresKit, Kit):
    pass


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Kit]:
    made: Kit
    if request.param == "memory":
        made = MemoryKit()
    elif request.param == "sqlite":
        made = SqliteKit(tmp_path / "state.db")
    else:  # a real server, started on the first postgres case (tests/conftest.py)
        url = request.getfixturevalue("postgres_url")
        made = PgKit(url, await PostgresStore.open(url))
    yield made
    await made.store.aclose()


# ------------------------------------------------------------------ paging and loading


async def test_page_queued_is_listed_queued_jobs_in_idx_order_after_the_cursor(kit: Kit) -> None:
    b = kit.add_batch()
    other = kit.add_batch("other")
    for idx in (3, 0, 2, 5, 1):
        kit.add_job(b, idx)
    kit.add_job(b, 4, listed=False)
    kit.add_job(b, 6, state=R, run_id="r6")
    kit.add_job(other, -1)
    first = await kit.store.page_queued(b, limit=2)
    assert [j.idx for j in first] == [0, 1]
    rest = await kit.store.page_queued(b, after=(first[-1].idx, first[-1].id), limit=10)
    assert [j.idx for j in rest] == [2, 3, 5]
    assert all(j.state is Q and j.batch_id == b for j in first + rest)


async def test_page_queued_orders_equal_idx_by_id(kit: Kit) -> None:
    b = kit.add_batch()
    one, two = kit.add_job(b, 7, key="a"), kit.add_job(b, 7, key="b")
    page = await kit.store.page_queued(b, after=(7, min(one.id, two.id)), limit=5)
    assert [j.id for j in page] == [max(one.id, two.id)]


async def test_load_active_returns_jobs_being_worked_in_idx_order(kit: Kit) -> None:
    b = kit.add_batch()
    kit.add_job(b, 0)
    kit.add_job(b, 4, state=DL, run_id="r4")
    kit.add_job(b, 1, state=S, idem_key="k1")
    kit.add_job(b, 3, state=R, run_id="r3")
    kit.add_job(b, 2, state=D, idem_key="k2")
    kit.add_job(b, 5, state=OK)
    active = await kit.store.load_active(b)
    assert [(j.idx, j.state) for j in active] == [(1, S), (2, D), (3, R), (4, DL)]


async def test_records_carry_the_stored_fields(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0, input={"prompt": "a fox"}, estimate_micro_usd=500, variant=2)
    (got,) = await kit.store.page_queued(b, limit=1)
    assert got == job
    assert got.input == {"prompt": "a fox"} and got.variant == 2
    assert got.estimate_micro_usd == 500


async def test_recover_submitting_puts_jobs_in_doubt_with_a_possible_charge(kit: Kit) -> None:
    b = kit.add_batch()
    left = kit.add_job(b, 0, state=S, idem_key="key0", attempts=2, estimate_micro_usd=700)
    kit.add_job(b, 1, state=R, run_id="r1")
    assert (await kit.store.totals(b)).possible == 700  # found submitting: counted already
    recovered = await kit.store.recover_submitting(b, now=T0)
    assert [(j.id, j.state, j.idem_key) for j in recovered] == [(left.id, D, "key0")]
    assert kit.stored(left.id).state is D
    assert kit.events(left.id) == [(S, D)]
    assert kit.ledger(left.id) == [("possible", 700, None, 2, "key0")]
    assert (await kit.store.totals(b)).possible == 700  # the same charge, counted once
    assert await kit.store.possible_for_key(left.id, "key0") == (700, T0)
    (possible,) = await kit.store.possible_jobs(b)
    assert (possible.idx, possible.possible_micro_usd, possible.paid_runs) == (0, 700, 0)
    assert await kit.store.recover_submitting(b, now=T0 + 1) == []


# ------------------------------------------------------------------ moves


async def test_move_sets_state_and_fields_and_writes_one_event(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0)
    moved = await kit.store.move(
        job, S, at=T0, detail={"attempt": 1}, attempts=1, idem_key="ik", estimate_micro_usd=9
    )
    assert moved is not None
    assert (moved.state, moved.attempts, moved.idem_key, moved.estimate_micro_usd) == (
        S, 1, "ik", 9,
    )  # fmt: skip
    assert moved.updated_at == T0
    assert kit.stored(job.id) == moved
    assert kit.events(job.id) == [(Q, S)]


async def test_a_stale_move_changes_nothing_and_returns_none(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0)
    kit.set_state(job.id, C)  # `batchgen cancel` from another process
    charge = [LedgerEntry("charge", 100, "r1")]
    assert await kit.store.move(job, S, at=T0, ledger=charge, attempts=1) is None
    assert kit.stored(job.id).state is C
    assert kit.stored(job.id).attempts == 0
    assert kit.events(job.id) == []
    assert kit.ledger(job.id) == []


async def test_an_illegal_transition_raises_and_changes_nothing(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0)
    with pytest.raises(IllegalTransition):
        await kit.store.move(job, OK, at=T0, ledger=[LedgerEntry("charge", 5, "r")])
    assert kit.stored(job.id).state is Q
    assert kit.events(job.id) == [] and kit.ledger(job.id) == []
    # the store is still usable after a refused move
    assert await kit.store.move(job, S, at=T0) is not None


async def test_a_field_a_move_may_not_set_is_refused(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0)
    with pytest.raises(TypeError, match="key"):
        await kit.store.move(job, S, at=T0, **{"key": "other"})  # type: ignore[arg-type]
    assert kit.stored(job.id).state is Q


async def test_ledger_rows_land_with_the_move_under_the_old_attempt_and_key(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0, state=R, run_id="r1", attempts=1, idem_key="k-1")
    refund = [LedgerEntry("refund", 300, "r1", "run failed")]
    kit_charge = [LedgerEntry("charge", 300, "r1")]
    await kit.store.record_ledger(job, kit_charge, at=T0)
    assert await kit.store.run_paid(job.id, "r1")
    moved = await kit.store.move(job, Q, at=T0 + 1, ledger=refund, run_id=None, idem_key=None)
    assert moved is not None and moved.run_id is None
    assert kit.ledger(job.id) == [
        ("charge", 300, "r1", 1, "k-1"),
        ("refund", 300, "r1", 1, "k-1"),
    ]
    assert await kit.store.run_net(job.id, "r1") == 0
    assert not await kit.store.run_paid(job.id, "r1")
    totals = await kit.store.totals(b)
    assert (totals.charged, totals.refunded, totals.spent) == (300, 300, 0)


async def test_money_learnt_by_a_move_that_lost_its_race_is_kept(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0, state=S, attempts=1, idem_key="k")
    kit.set_state(job.id, C)
    charge = [LedgerEntry("charge", 250, "r9")]
    assert await kit.store.record_run_id(job, at=T0, run_id="r9", cost_micro_usd=250) is None
    await kit.store.record_ledger(job, charge, at=T0)
    assert kit.ledger(job.id) == [("charge", 250, "r9", 1, "k")]
    assert (await kit.store.totals(b)).spent == 250


async def test_the_usual_moves_take_a_job_from_queued_to_succeeded(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0)
    s = await kit.store.record_intent(job, at=T0, attempt=1, idem_key="ik", estimate_micro_usd=80)
    assert s is not None and s.state is S
    charge = [LedgerEntry("charge", 75, "run-1")]
    r = await kit.store.record_run_id(
        s, at=T0 + 1, run_id="run-1", cost_micro_usd=75, ledger=charge
    )
    assert r is not None and (r.state, r.run_id, r.submitted_at) == (R, "run-1", T0 + 1)
    dl = await kit.store.record_poll(r, at=T0 + 2, created_at="c", completed_at="d")
    assert dl is not None and (dl.run_created_at, dl.run_completed_at) == ("c", "d")
    ok = await kit.store.record_download(
        dl, at=T0 + 3, output_paths=["0.mp4"], checksums=["abc"], media_note=None
    )
    assert ok is not None and ok.state is OK and ok.finished_at == T0 + 3
    assert kit.stored(job.id).output_paths == ("0.mp4",)
    assert kit.stored(job.id).checksums == ("abc",)
    assert kit.events(job.id) == [(Q, S), (S, R), (R, DL), (DL, OK)]
    assert (await kit.store.totals(b)).spent == 75
    durations = await kit.store.recent_durations("m")
    assert durations == [RunTimes({"prompt": "p0"}, "c", "d")]


async def test_mark_failed_and_requeue(kit: Kit) -> None:
    b = kit.add_batch()
    one, two = kit.add_job(b, 0, state=S), kit.add_job(b, 1, state=S)
    failed = await kit.store.mark_failed(one, at=T0, error="bad input", code="input")
    assert failed is not None
    assert (failed.state, failed.last_error, failed.error_code, failed.finished_at) == (
        F, "bad input", "input", T0,
    )  # fmt: skip
    again = await kit.store.requeue(two, at=T0, errors=1, next_attempt_at=T0 + 5)
    assert again is not None and (again.state, again.errors, again.next_attempt_at) == (
        Q, 1, T0 + 5,
    )  # fmt: skip
    (f,) = await kit.store.failures(b)
    assert (f.idx, f.error, f.code) == (0, "bad input", "input")


# ------------------------------------------------------------------ reading


async def test_counts_every_state_and_skips_unlisted_queued_jobs(kit: Kit) -> None:
    b = kit.add_batch()
    kit.add_job(b, 0)
    kit.add_job(b, 1, listed=False)
    kit.add_job(b, 2, state=R, run_id="r", listed=False)  # a paid run still counts
    kit.add_job(b, 3, state=F)
    counts = await kit.store.counts(b)
    assert set(counts) == {st.value for st in JobState}
    assert counts["queued"] == 1 and counts["running"] == 1 and counts["failed"] == 1
    assert sum(counts.values()) == 3


async def test_in_doubt_since_counts_entered_left_and_held(kit: Kit) -> None:
    b = kit.add_batch()
    entered = kit.add_job(b, 0, state=S)
    left = kit.add_job(b, 1, state=D)
    kit.add_job(b, 2, state=D)  # held, never moved
    old = kit.add_job(b, 3, state=S)
    assert await kit.store.move(old, D, at=T0 - 100) is not None  # before the window
    assert await kit.store.move(entered, D, at=T0) is not None
    assert await kit.store.move(left, S, at=T0 + 1) is not None
    assert await kit.store.in_doubt_since(b, T0) == 4  # 0, 1, 2, and 3 still held
    assert await kit.store.in_doubt_since(b, T0 + 2) == 3


async def test_recent_durations_are_the_models_latest_finished_runs(kit: Kit) -> None:
    veo, other = kit.add_batch("a", "veo"), kit.add_batch("b", "kling")
    times = {"run_created_at": "c", "run_completed_at": "d"}
    kit.add_job(veo, 0, state=OK, finished_at=T0, **times)
    kit.add_job(veo, 1, state=OK, finished_at=T0 + 9, **times)
    kit.add_job(veo, 2, state=R, run_id="r", run_created_at="c")  # not finished
    kit.add_job(other, 3, state=OK, finished_at=T0 + 5, **times)
    runs = await kit.store.recent_durations("veo")
    assert [r.input for r in runs] == [{"prompt": "p1"}, {"prompt": "p0"}]
    assert await kit.store.recent_durations("veo", limit=1) == runs[:1]


async def test_batch_flags_and_touch(kit: Kit) -> None:
    b = kit.add_batch("nightly", "veo")
    batch = await kit.store.batch(b)
    assert (batch.id, batch.name, batch.model) == (b, "nightly", "veo")
    assert await kit.store.batch_flags(b) == BatchFlags(canceled=False, abandon=False)
    await kit.store.touch_batch(b, T0)
    assert (await kit.store.batch(b)).updated_at == T0
    with pytest.raises(LookupError):
        await kit.store.batch(b + 1000)


async def test_possible_for_key_nets_settled_rows(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0, state=S, attempts=1, idem_key="k")
    lost = [LedgerEntry("possible", 400, None, "answer lost")]
    doubt = await kit.store.move(job, D, at=T0, ledger=lost)
    assert doubt is not None
    assert await kit.store.possible_for_key(job.id, "k") == (400, T0)
    assert await kit.store.possible_for_key(job.id, "other") == (0, 0.0)
    await kit.store.record_ledger(doubt, [LedgerEntry("possible", -400, None)], at=T0 + 1)
    assert await kit.store.possible_for_key(job.id, "k") == (0, T0)
    assert await kit.store.possible_jobs(b) == []


# ------------------------------------------------------------------ ordering and lifetime


async def test_writes_are_applied_first_in_first_out(kit: Kit) -> None:
    b = kit.add_batch()
    jobs = [kit.add_job(b, i) for i in range(5)]
    chains = []
    for job in jobs:  # each move only succeeds if the one before it landed first
        steps, cur = [], job
        for new in (S, R, DL, OK):
            steps.append(kit.store.move(cur, new, at=T0))
            cur = dataclasses.replace(cur, state=new)
        chains.extend(steps)
    results = await asyncio.gather(*chains)
    assert all(r is not None for r in results)
    assert all(kit.stored(j.id).state is OK for j in jobs)


async def test_a_cancelled_caller_does_not_undo_its_write(kit: Kit) -> None:
    b = kit.add_batch()
    job = kit.add_job(b, 0)
    task = asyncio.create_task(kit.store.record_intent(job, at=T0, attempt=1, idem_key="k",
                                                       estimate_micro_usd=1))  # fmt: skip
    await asyncio.sleep(0)  # the write has been asked for
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await kit.store.touch_batch(b, T0)  # FIFO: lands after the intent
    assert kit.stored(job.id).state is S
    assert kit.events(job.id) == [(Q, S)]


async def test_aclose_drains_the_writes_already_asked_for(kit: Kit) -> None:
    b = kit.add_batch()
    jobs = [kit.add_job(b, i) for i in range(20)]
    tasks = [asyncio.create_task(kit.store.move(j, S, at=T0)) for j in jobs]
    await asyncio.sleep(0)
    await kit.store.aclose()
    assert all(kit.stored(j.id).state is S for j in jobs)
    await asyncio.gather(*tasks)
    with pytest.raises(RuntimeError):
        await kit.store.touch_batch(b, T0)


# ------------------------------------------------------------------ SQLite only


@pytest.fixture
async def sqlite_kit(tmp_path: Path) -> AsyncIterator[SqliteKit]:
    made = SqliteKit(tmp_path / "state.db")
    yield made
    await made.store.aclose()


async def test_sqlite_commits_off_the_event_loop_thread(sqlite_kit: SqliteKit) -> None:
    threads: list[str] = []

    def record(_conn: Any) -> None:
        threads.append(threading.current_thread().name)

    event.listen(sqlite_kit.db, "commit", record)
    b = sqlite_kit.add_batch()
    threads.clear()
    job = sqlite_kit.add_job(b, 0)
    threads.clear()
    await sqlite_kit.store.move(job, S, at=T0)
    await sqlite_kit.store.touch_batch(b, T0)
    assert threads and threading.main_thread().name not in threads
    assert len(set(threads)) == 1  # one writer thread


async def test_sqlite_write_cancelled_while_blocked_still_lands(sqlite_kit: SqliteKit) -> None:
    b = sqlite_kit.add_batch()
    job = sqlite_kit.add_job(b, 0)
    other = sqlite3.connect(sqlite_kit.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        task = asyncio.create_task(sqlite_kit.store.move(job, S, at=T0))
        await asyncio.sleep(0.2)  # the writer thread is waiting on the lock, mid-write
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # (read beside the lock: the store's own reads would queue behind it)
        row = other.execute("SELECT state FROM job WHERE id = ?", (job.id,)).fetchone()
        assert row == ("queued",)
    finally:
        other.execute("COMMIT")
        other.close()
    await sqlite_kit.store.aclose()  # drains: the cancelled write finishes
    assert sqlite_kit.stored(job.id).state is S
    assert sqlite_kit.events(job.id) == [(Q, S)]


async def test_sqlite_write_failures_come_out_as_ours(sqlite_kit: SqliteKit) -> None:
    b = sqlite_kit.add_batch()
    job = sqlite_kit.add_job(b, 0)

    def read_only(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA query_only = 1")

    # new connections refuse writes, as a 0444 file would (SQLITE_READONLY)
    event.listen(sqlite_kit.db, "connect", read_only)
    sqlite_kit.db.dispose()
    with pytest.raises(StateError, match=r"state database .*state\.db: cannot use it"):
        await sqlite_kit.store.move(job, S, at=T0)
    # the writer thread survives a failed write
    event.remove(sqlite_kit.db, "connect", read_only)
    sqlite_kit.db.dispose()
    assert await sqlite_kit.store.move(job, S, at=T0) is not None


async def test_sqlite_failure_of_a_write_whose_caller_left_is_logged(
    sqlite_kit: SqliteKit, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = sqlite_kit.add_batch()
    job = sqlite_kit.add_job(b, 0)
    gate = threading.Event()
    real_move = job_sql.move

    def held_move(*args: Any, **kwargs: Any) -> Any:
        gate.wait(10)  # the caller is cancelled while the write is under way
        return real_move(*args, **kwargs)

    def read_only(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA query_only = 1")

    monkeypatch.setattr(job_sql, "move", held_move)
    event.listen(sqlite_kit.db, "connect", read_only)
    sqlite_kit.db.dispose()
    task = asyncio.create_task(sqlite_kit.store.move(job, S, at=T0, run_id="r-paid"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    with caplog.at_level("ERROR", logger="batchgen.store.sqlite_store"):
        await sqlite_kit.store.aclose()
        await asyncio.sleep(0)  # the done callback runs on the loop
    assert any("cannot use it" in r.getMessage() for r in caplog.records)

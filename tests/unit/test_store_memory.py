"""``InMemoryStore`` on its own, in the unit tier (no file, no thread, no sleep).

The full contract it shares with SQLite is ``tests/integration/test_store_contract.py``;
these are the parts the engine's unit tests lean on: setting up rows, playing another
process, and reading the events and ledger rows a move wrote.
"""

from __future__ import annotations

import asyncio

import pytest

from batchgen.errors import IllegalTransition
from batchgen.states import JobState
from batchgen.store.interface import JobStore
from batchgen.store.memory import EventRow, InMemoryStore, LedgerRow
from batchgen.store.records import LedgerEntry

T0 = 1_700_000_000.0


def test_it_is_a_job_store() -> None:
    store: JobStore = InMemoryStore()
    assert isinstance(store, InMemoryStore)


async def test_a_move_writes_its_event_and_ledger_rows_with_the_old_key() -> None:
    store = InMemoryStore()
    b = store.add_batch("nightly", "veo")
    job = store.add_job(b.id, "k0", 0, state=JobState.SUBMITTING, attempts=1, idem_key="ik")
    lost = [LedgerEntry("possible", 90, None, "answer lost")]
    moved = await store.move(job, JobState.IN_DOUBT, at=T0, detail={"why": "x"}, ledger=lost)
    assert moved is not None and moved.state is JobState.IN_DOUBT
    assert store.events == [
        EventRow(b.id, job.id, T0, JobState.SUBMITTING, JobState.IN_DOUBT, {"why": "x"})
    ]
    assert store.ledger == [
        LedgerRow(b.id, job.id, None, 1, "ik", "possible", 90, T0, "answer lost")
    ]


async def test_another_process_changing_a_job_makes_the_engines_copy_stale() -> None:
    store = InMemoryStore()
    b = store.add_batch()
    job = store.add_job(b.id, "k0", 0)
    store.set_state(job.id, JobState.CANCELED)
    assert await store.move(job, JobState.SUBMITTING, at=T0) is None
    assert store.events == [] and store.jobs[job.id].state is JobState.CANCELED


async def test_an_illegal_move_writes_no_ledger_row() -> None:
    store = InMemoryStore()
    b = store.add_batch()
    job = store.add_job(b.id, "k0", 0)
    with pytest.raises(IllegalTransition):
        await store.move(job, JobState.SUCCEEDED, at=T0, ledger=[LedgerEntry("charge", 1)])
    assert store.ledger == [] and store.events == []


async def test_concurrent_moves_of_one_job_let_exactly_one_win() -> None:
    store = InMemoryStore()
    b = store.add_batch()
    job = store.add_job(b.id, "k0", 0)
    results = await asyncio.gather(
        *(store.move(job, JobState.SUBMITTING, at=T0, attempts=n) for n in range(5))
    )
    assert [r is not None for r in results] == [True, False, False, False, False]
    assert store.jobs[job.id].attempts == 0


async def test_a_closed_store_refuses_calls() -> None:
    store = InMemoryStore()
    b = store.add_batch()
    await store.aclose()
    with pytest.raises(RuntimeError):
        await store.counts(b.id)

"""The spend ledger through run_batch as a library, against the simulator."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from batchgen.events import RunSummary
from batchgen.run.runner import arun_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.states import JobState
from batchgen.store import commands
from batchgen.store import jobs as store
from batchgen.store.batches import find_batch
from batchgen.store.schema import Job, open_db
from tests.support.engine import make_batch, prompts
from tests.support.manifests import write_manifest
from tests.support.money import failed_with_a_lost_run
from tests.support.runs import PRICE, ledger_rows, options


def net(sim: Simulator) -> int:
    stats = sim.stats()
    return int(stats["charged_micro_usd"]) - int(stats["refunded_micro_usd"])


async def until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_rerun_after_cancel_abandon_fetches_the_paid_runs_and_pays_nothing_again(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path, ["fox", "owl"])  # 4 jobs, 720p, 5 s
    db_path = tmp_path / "state.db"
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5))) as sim:
        sim.config.hold_polls = True  # the runs stay in flight until the cancel
        first = asyncio.create_task(
            arun_batch(
                db_path,
                api_key=DEFAULT_KEY,
                manifest=manifest,
                options=options(sim.base_url, budget_usd=1.5),
            )
        )
        await until(lambda: sim.stats()["runs_created"] == 4)
        db = open_db(db_path)
        batch_id = find_batch(db, "sweep").id
        assert batch_id is not None
        commands.cancel(db, batch_id, abandon=True, now=time.time())
        await asyncio.wait_for(first, 20)
        sim.config.hold_polls = False
        runs: list[RunSummary] = []
        for _ in range(2):
            runs.append(
                await arun_batch(
                    db_path,
                    api_key=DEFAULT_KEY,
                    manifest=manifest,
                    options=options(sim.base_url, budget_usd=1.5),
                )
            )
        stats = sim.stats()
    assert stats["runs_created"] == 4  # before: 8 runs, $1.94 charged against $1.50
    assert runs[0].exit_code == 0 and runs[0].counts == {"succeeded": 4}
    assert runs[1].exit_code == 0
    assert runs[1].spend_micro_usd == net(sim) == 4 * PRICE
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 4
    assert [r[2] for r in ledger_rows(db_path)] == ["charge"] * 4


async def test_a_canceled_job_holding_a_run_is_polled_and_queued_jobs_with_one_are_not_resent(
    tmp_path: Path,
) -> None:
    """A database written by an older batchgen may hold a queued job with a paid run
    (the old `run` after cancel re-queued them): it is polled, never POSTed again."""
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5))) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(1, resolution="720p"), tmp_path / "o")
        assert batch.id is not None
        first = await arun_batch(
            tmp_path / "s.db", api_key=DEFAULT_KEY, batch=batch.name, options=options(sim.base_url)
        )
        assert first.exit_code == 0
        with Session(db) as s:  # as the old `run` after cancel --abandon left it
            s.exec(select(Job)).one()
            s.connection().exec_driver_sql("UPDATE job SET state='queued', output_paths_json='[]'")
            s.commit()
        again = await arun_batch(
            tmp_path / "s.db", api_key=DEFAULT_KEY, batch=batch.name, options=options(sim.base_url)
        )
        assert sim.stats()["runs_created"] == 1
    assert again.exit_code == 0 and again.counts == {"succeeded": 1}
    assert again.spend_micro_usd == net(sim)


@pytest.mark.parametrize(("budget", "runs", "code"), [(3.0, 3, 0), (2.5, 2, 4)])
async def test_on_lost_resubmit_pays_again_and_the_ledger_counts_both_charges(
    tmp_path: Path, budget: float, runs: int, code: int
) -> None:
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5))) as sim:
        sim.config.hold_polls = True
        _, batch = make_batch(tmp_path / "s.db", prompts(2, resolution="720p"), tmp_path / "o")
        task = asyncio.create_task(
            arun_batch(
                tmp_path / "s.db",
                api_key=DEFAULT_KEY,
                batch=batch.name,
                options=options(sim.base_url, on_lost="resubmit", budget_usd=budget * PRICE / 1e6),
            )
        )
        await until(lambda: sim.stats()["runs_created"] == 2)
        gone = next(iter(sim.state.book.runs.values()))
        gone.account = 99  # the service forgets it: 404 to our key
        sim.config.hold_polls = False
        summary = await asyncio.wait_for(task, 30)
        stats = sim.stats()
    assert stats["runs_created"] == runs and summary.exit_code == code
    # before: the new attempt overwrote the lost run's cost; $0.48 reported, $0.73 charged
    assert summary.spend_micro_usd == net(sim) == runs * PRICE <= budget * PRICE


async def test_retry_failed_leaves_a_paid_run_alone_and_pay_again_pays_and_counts(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "s.db"
    _, job_key = failed_with_a_lost_run(db_path, tmp_path / "out")
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5))) as sim:
        retried = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            batch="test-batch",
            options=options(sim.base_url),
            retry_failed=True,
        )
        assert sim.stats()["runs_created"] == 1  # the other job only
        assert retried.counts == {"failed": 1, "succeeded": 1}
        assert retried.spend_micro_usd == 2 * PRICE  # the lost run's charge stays counted
        paid = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            batch="test-batch",
            options=options(sim.base_url),
            pay_again=[job_key[:10]],
        )
        done = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            batch="test-batch",
            options=options(sim.base_url),
            pay_again=[job_key],
        )
        stats = sim.stats()
    assert done.exit_code == 2 and "succeeded" in done.reason  # not paid for a third time
    assert stats["runs_created"] == 2
    assert paid.exit_code == 0 and paid.counts == {"succeeded": 2}
    assert paid.spend_micro_usd == 3 * PRICE  # both charges of the job, and the other
    rows = ledger_rows(db_path)
    assert [r[2] for r in rows] == ["charge"] * 3 and len({r[1] for r in rows}) == 3


async def test_pay_again_counts_against_the_budget_of_the_whole_batch(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    _, job_key = failed_with_a_lost_run(db_path, tmp_path / "out")
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5))) as sim:
        paid = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            batch="test-batch",
            options=options(sim.base_url, budget_usd=0.5),
            pay_again=[job_key],
        )
        stats = sim.stats()
    # $0.242 already charged: $0.258 left, enough for one of the two jobs
    assert stats["runs_created"] == 1 and paid.exit_code == 4
    assert paid.spend_micro_usd == 2 * PRICE <= 500_000


def test_run_after_cancel_polls_paid_runs_listed_or_not_and_keeps_doubt(tmp_path: Path) -> None:
    db, batch = make_batch(tmp_path / "s.db", prompts(3, resolution="720p"), tmp_path / "o")
    assert batch.id is not None
    with Session(db, expire_on_commit=False) as s:
        paid, doubt, queued = s.exec(select(Job).order_by(col(Job.idx))).all()
    paid_moved = store.move(db, paid, JobState.SUBMITTING, attempts=1, idem_key="a")
    assert paid_moved is not None
    assert store.move(db, paid_moved, JobState.RUNNING, run_id="run_a") is not None
    doubt_moved = store.move(db, doubt, JobState.SUBMITTING, attempts=1, idem_key="b")
    assert doubt_moved is not None
    assert store.move(db, doubt_moved, JobState.IN_DOUBT) is not None
    commands.cancel(db, batch.id, abandon=True, now=time.time())
    with Session(db) as s:  # the manifest no longer lists the paid job
        s.connection().exec_driver_sql("UPDATE job SET listed = 0 WHERE run_id = 'run_a'")
        s.commit()
    assert commands.uncancel(db, batch.id, now=time.time()) == 3
    with Session(db) as s:
        states = {j.id: j.state for j in s.exec(select(Job)).all()}
    assert [states[j.id] for j in (paid, doubt, queued)] == ["running", "in_doubt", "queued"]

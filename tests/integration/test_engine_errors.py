"""The engine against the simulator over loopback: every answer the API can give."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import Engine

from batchgen.engine.dispatcher import EngineConfig
from batchgen.errors import ExitCode
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.retry import RetryPolicy
from batchgen.sim import Simulator
from batchgen.states import JobState
from batchgen.store import commands
from batchgen.store import jobs as store
from batchgen.store.schema import Job
from tests.support.engine import (
    KEY,
    Drive,
    bid,
    make_batch,
    prompts,
    tiny_sim_config,
    wait_for,
)

FAST = 0.002  # 41.4 s of generation -> about 0.08 s


@asynccontextmanager
async def simulator(**config: Any) -> AsyncIterator[Simulator]:
    config.setdefault("time_scale", FAST)
    config.setdefault("rate", (20, 0.5))
    async with Simulator(tiny_sim_config(**config)) as sim:
        yield sim


def jobs_by_state(db: Engine, batch_id: int) -> dict[str, int]:
    return {k: v for k, v in store.counts(db, batch_id).items() if v}


def all_jobs(db: Engine, batch_id: int) -> list[Job]:
    return list(store.iter_jobs(db, batch_id, states=list(JobState)))


def recorded_cost(db: Engine, batch_id: int) -> int:
    return sum(j.cost_micro_usd for j in all_jobs(db, batch_id))


def assert_no_double_charge(sim: Simulator, db: Engine, batch_id: int) -> None:
    st = sim.stats()
    assert st["charged_micro_usd"] - st["refunded_micro_usd"] == recorded_cost(db, batch_id)
    run_ids = [j.run_id for j in all_jobs(db, batch_id) if j.run_id]
    assert len(run_ids) == len(set(run_ids))


async def test_happy_path_every_job_once_and_about_two_requests_each(tmp_path):
    async with simulator() as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(24), tmp_path / "out")
        outcome, _engine = await Drive(db, batch, sim.base_url, tmp_path / "out").run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK and outcome.reason == "done"
    assert jobs_by_state(db, bid(batch)) == {"succeeded": 24}
    assert st["runs_created"] == 24 and st["idempotent_replays"] == 0
    assert_no_double_charge(sim, db, bid(batch))
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 24
    # API requests only (the rate-limited budget); downloads are counted under GET /files
    total = sum(
        sum(v.values()) for r, v in st["requests"].items() if r.startswith(("POST", "GET /api"))
    )
    assert total / 24 <= 2.6, st["requests"]
    for job in all_jobs(db, bid(batch)):
        assert job.attempts == 1 and len(job.idem_key or "") == 32
        assert json.loads(job.output_paths_json) and job.finished_at
        assert job.run_created_at and job.run_completed_at


async def test_400_fails_that_job_for_good_with_the_api_message(tmp_path):
    inputs = prompts(4)
    inputs[1] = {"prompt": "bad duration", "duration": "7"}
    async with simulator() as sim:
        db, batch = make_batch(tmp_path / "s.db", inputs, tmp_path / "out")
        outcome, _ = await Drive(db, batch, sim.base_url, tmp_path / "out").run()
        posts = sim.stats()["requests"]["POST /api/v1/runs"]
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    assert jobs_by_state(db, bid(batch)) == {"succeeded": 3, "failed": 1}
    bad = next(j for j in all_jobs(db, bid(batch)) if j.state == "failed")
    assert "duration" in (bad.last_error or "") and bad.error_code == "invalid_input"
    assert posts.get("400") == 1  # never retried


async def test_401_stops_everything_at_once(tmp_path):
    async with simulator() as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(5), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", key="sk-wrong-key")
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.ACCOUNT and "401" in outcome.reason
    assert sum(sum(v.values()) for v in st["requests"].values()) == 1
    assert jobs_by_state(db, bid(batch)) == {"queued": 5}


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"balance_usd": 3 * 0.484}, "402"),
        ({"spend_limit_usd": 3 * 0.484}, "403"),
        ({"usage_quota": 3}, "USAGE_EXCEEDED"),
    ],
)
async def test_account_refusals_stop_submitting_but_paid_runs_finish(tmp_path, config, code):
    async with simulator(**config) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(8), tmp_path / "out")
        outcome, _ = await Drive(db, batch, sim.base_url, tmp_path / "out").run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.ACCOUNT and code in outcome.reason
    assert jobs_by_state(db, bid(batch)) == {"succeeded": 3, "queued": 5}
    assert st["runs_created"] == 3
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 3
    assert_no_double_charge(sim, db, bid(batch))


async def _with_lost_run(tmp_path, on_lost: str) -> tuple[Any, Any, Any, Simulator]:
    async with simulator() as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(3), tmp_path / "out")
        job = all_jobs(db, bid(batch))[0]
        store.move(db, job, JobState.SUBMITTING, attempts=1, idem_key="x" * 32)
        job = all_jobs(db, bid(batch))[0]
        store.move(db, job, JobState.RUNNING, run_id="run_gone", cost_micro_usd=0)
        drive = Drive(db, batch, sim.base_url, tmp_path / "out")
        drive.config = EngineConfig(on_lost=on_lost)  # type: ignore[arg-type]
        outcome, _ = await drive.run()
        return outcome, db, batch, sim


async def test_404_on_a_poll_fails_the_job_by_default(tmp_path):
    outcome, db, batch, sim = await _with_lost_run(tmp_path, "fail")
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    lost = all_jobs(db, bid(batch))[0]
    assert lost.state == "failed" and "run_gone" in (lost.last_error or "")
    assert sim.stats()["runs_created"] == 2


async def test_404_on_a_poll_resubmits_with_on_lost_resubmit(tmp_path):
    outcome, db, batch, sim = await _with_lost_run(tmp_path, "resubmit")
    assert outcome.exit_code == ExitCode.OK
    lost = all_jobs(db, bid(batch))[0]
    assert lost.state == "succeeded" and lost.attempts == 2 and lost.run_id != "run_gone"
    assert sim.stats()["runs_created"] == 3


async def test_failed_runs_are_resubmitted_then_the_job_fails_with_the_api_error(tmp_path):
    async with simulator(fail_rate=1.0) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(3), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out")
        drive.config = EngineConfig(max_attempts=3)
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    assert jobs_by_state(db, bid(batch)) == {"failed": 3}
    assert st["runs_created"] == 9 and st["refunded_micro_usd"] == st["charged_micro_usd"]
    for job in all_jobs(db, bid(batch)):
        assert job.attempts == 3 and job.last_error == "generation failed"
        assert job.cost_micro_usd == 0
    assert_no_double_charge(sim, db, bid(batch))


async def test_a_429_storm_is_absorbed_and_never_costs_an_attempt(tmp_path):
    # The server allows 4 per 0.5 s while we believe 20: 429s all the way.
    async with simulator(rate=(4, 0.5)) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(8), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", rate=(20, 0.5))
        outcome, _ = await drive.run(timeout=60)
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK
    assert st["rate_limited"] > 0
    assert st["runs_created"] == 8
    assert all(j.attempts == 1 and j.errors == 0 for j in all_jobs(db, bid(batch)))


async def test_500s_and_dropped_answers_every_job_succeeds_without_a_double_charge(tmp_path):
    async with simulator(error_rate=0.1, drop_rate=0.15, seed=3) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(30), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out")
        drive.config = EngineConfig(max_attempts=8, concurrency=10)
        outcome, engine = await drive.run(timeout=60)
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK, outcome
    assert jobs_by_state(db, bid(batch)) == {"succeeded": 30}
    assert st["runs_created"] == 30  # every lost answer was resent with its key
    assert st["idempotent_replays"] >= 1
    assert st["requests"]["POST /api/v1/runs"].get("500", 0) > 0
    assert engine.in_doubt_seen  # the dropped answers were in doubt
    assert_no_double_charge(sim, db, bid(batch))
    # 500s and lost answers were resent under the first attempt's key, never a new one
    assert all(j.attempts == 1 for j in all_jobs(db, bid(batch)))


async def test_downloads_cut_mid_file_are_fetched_again(tmp_path):
    async with simulator(cut_rate=0.4, seed=5) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(10), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out")
        drive.config = EngineConfig(max_attempts=10)
        outcome, _ = await drive.run()
    assert outcome.exit_code == ExitCode.OK
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 10
    assert not list((tmp_path / "out").glob("*.part"))


async def test_the_budget_is_never_exceeded(tmp_path):
    async with simulator() as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(10), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", budget_usd=2.0)
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.BUDGET
    assert st["charged_micro_usd"] <= 2_000_000
    assert jobs_by_state(db, bid(batch)) == {"succeeded": 4, "queued": 6}  # 4 x 0.484


async def test_refunds_return_to_the_budget(tmp_path):
    # budget for 2 runs; the first runs fail (refunded) and are resubmitted
    async with simulator(fail_rate=0.5, seed=4) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(2), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", budget_usd=2 * 0.484)
        drive.config = EngineConfig(max_attempts=10)
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK
    assert st["runs_failed"] >= 1
    assert st["charged_micro_usd"] - st["refunded_micro_usd"] <= 2 * 484_000


def _crash_after_post(db: Engine, batch_id: int) -> Callable[[], None]:
    """Leave job 0 as a crash would: intent committed, POST sent, answer never recorded."""
    job = all_jobs(db, batch_id)[0]
    store.move(db, job, JobState.SUBMITTING, attempts=1, idem_key="k" * 32)
    return lambda: None


async def _post_directly(sim: Simulator, idem: str) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{sim.base_url}/api/v1/runs",
            json={"model": "bytedance/seedance-1-pro", "input": {"prompt": "a red fox, take 0"}},
            headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": idem},
        ) as resp,
    ):
        assert resp.status == 200


async def test_in_doubt_resubmit_sends_the_same_key_and_pays_once(tmp_path):
    async with simulator() as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(3), tmp_path / "out")
        _crash_after_post(db, bid(batch))
        await _post_directly(sim, "k" * 32)  # the POST did reach the service
        outcome, engine = await Drive(db, batch, sim.base_url, tmp_path / "out").run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK
    assert st["runs_created"] == 3 and st["idempotent_replays"] == 1
    assert len(engine.in_doubt_seen) == 1
    job = all_jobs(db, bid(batch))[0]
    assert job.idem_key == "k" * 32 and job.attempts == 1


async def test_in_doubt_hold_waits_for_retry_then_resends_the_same_key(tmp_path):
    async with simulator() as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(3), tmp_path / "out")
        _crash_after_post(db, bid(batch))
        await _post_directly(sim, "k" * 32)
        drive = Drive(db, batch, sim.base_url, tmp_path / "out")
        drive.config = EngineConfig(in_doubt="hold")
        outcome, _ = await drive.run()
        assert outcome.exit_code == ExitCode.JOBS_FAILED and "in doubt" in outcome.reason
        assert jobs_by_state(db, bid(batch)) == {"succeeded": 2, "in_doubt": 1}
        commands.requeue(db, bid(batch), failed=False, in_doubt=True, now=0)
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK
    assert st["runs_created"] == 3 and st["idempotent_replays"] == 1


async def test_cancel_from_elsewhere_is_noticed_and_paid_runs_still_finish(tmp_path):
    async with simulator(time_scale=0.01) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(40), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", rate=(10, 0.5))
        drive.config = EngineConfig(flags_every_s=0.05, concurrency=5)

        async def cancel_soon(engine):

            await wait_for(lambda: engine.counts.get("running", 0) >= 3)
            commands.cancel(db, bid(batch), abandon=False, now=0)

        outcome, _ = await drive.run(during=cancel_soon)
        st = sim.stats()
    counts = jobs_by_state(db, bid(batch))
    assert outcome.exit_code == ExitCode.JOBS_FAILED and "cancel" in outcome.reason
    assert counts.get("succeeded", 0) == st["runs_created"] >= 3
    assert counts.get("succeeded", 0) + counts.get("canceled", 0) == 40


async def test_interrupt_then_a_new_engine_finishes_without_paying_twice(tmp_path):
    async with simulator(time_scale=0.01) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(20), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", rate=(10, 0.5))

        async def interrupt(engine):

            await wait_for(lambda: engine.counts.get("running", 0) >= 3)
            engine.stop("interrupted", "interrupted (test)")

        outcome, _ = await drive.run(during=interrupt)
        assert outcome.exit_code == ExitCode.INTERRUPTED
        assert jobs_by_state(db, bid(batch)).get("queued", 0) > 0
        drive.rate = (20, 0.5)
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK
    assert jobs_by_state(db, bid(batch)) == {"succeeded": 20}
    assert st["runs_created"] == 20
    assert_no_double_charge(sim, db, bid(batch))


async def test_max_runtime_stops_and_resumes(tmp_path):
    async with simulator(time_scale=0.01) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(30), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", rate=(10, 0.5))

        async def deadline(engine):
            engine.deadline = engine.clock.monotonic() + 0.3

        outcome, _ = await drive.run(during=deadline)
        assert outcome.exit_code == ExitCode.INTERRUPTED and "max runtime" in outcome.reason
        outcome, _ = await drive.run()
        assert sim.stats()["runs_created"] == 30
    assert outcome.exit_code == ExitCode.OK


def test_retry_policy_zero_is_available():
    assert RetryPolicy.zero().delay(3) == 0.0


async def test_small_pages_reach_every_job_and_a_sweep_finds_jobs_requeued_behind(tmp_path):
    async with simulator() as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(23), tmp_path / "out")
        # job 0 failed earlier; a `retry --failed` from another shell re-queues it mid-run
        first = all_jobs(db, bid(batch))[0]
        store.move(db, first, JobState.FAILED, last_error="earlier")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out")
        drive.config = EngineConfig(page_size=4)

        async def requeue_behind(engine):

            await wait_for(lambda: engine.counts.get("succeeded", 0) >= 10)
            commands.requeue(db, bid(batch), failed=True, in_doubt=False, now=0)

        outcome, _ = await drive.run(during=requeue_behind)
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK
    assert jobs_by_state(db, bid(batch)) == {"succeeded": 23}
    assert st["runs_created"] == 23


async def test_an_early_poll_stuck_waiting_for_spare_capacity_never_delays_a_due_one(tmp_path):
    # Runs finish faster than a slot frees: submissions and due polls take every slot,
    # so an early poll (priority 2) started on a moment of slack may wait for ever.
    # Once its run is due it must go as a due poll instead.
    seen: dict[int, float] = {}

    class Spy:
        def transition(self, ev: TransitionEvent) -> None:
            if ev.to_state == "downloading":
                seen[ev.job_idx] = ev.at

        def request(self, ev: RequestEvent) -> None:
            pass

        def finished(self, summary: RunSummary) -> None:
            pass

    async with simulator(time_scale=0.001, rate=(20, 2.0)) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(12), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", rate=(20, 2.0))
        drive.config = EngineConfig(concurrency=3)
        drive.observers = [Spy()]
        outcome, _ = await drive.run()
    assert outcome.exit_code == ExitCode.OK
    for job in all_jobs(db, bid(batch)):
        assert job.run_completed_at is not None
        lag = seen[job.idx] - dt.datetime.fromisoformat(job.run_completed_at).timestamp()
        assert lag < 1.0, (job.idx, lag)


async def test_a_big_batch_is_paged_never_loaded_whole(tmp_path):
    async with simulator(time_scale=0.01) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(5000), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", rate=(10, 0.5))
        drive.config = EngineConfig(page_size=100, concurrency=4)
        held: list[int] = []

        async def watch_then_stop(engine):

            for _ in range(20):
                await asyncio.sleep(0.05)
                st = engine.state
                held.append(len(st.ready) + len(st.later) + len(st.queued_ids))
            await wait_for(lambda: engine.counts.get("succeeded", 0) >= 4)
            engine.stop("interrupted", "enough")

        outcome, _ = await drive.run(during=watch_then_stop)
    assert outcome.exit_code == ExitCode.INTERRUPTED
    assert 0 < max(held) <= 2 * 100 + 4


async def test_a_refused_post_sent_nothing_so_it_is_simply_sent_again(tmp_path):
    # The service is down at first (connection refused), then comes up on that port.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moves: list[TransitionEvent] = []

    class Spy:
        def transition(self, ev: TransitionEvent) -> None:
            moves.append(ev)

        def request(self, ev: RequestEvent) -> None:
            pass

        def finished(self, summary: RunSummary) -> None:
            pass

    db, batch = make_batch(tmp_path / "s.db", prompts(3), tmp_path / "out")
    drive = Drive(db, batch, f"http://127.0.0.1:{port}", tmp_path / "out", observers=[Spy()])
    drive.config = EngineConfig(max_attempts=1000)
    sims: list[Simulator] = []

    def refused() -> list[TransitionEvent]:
        return [m for m in moves if m.from_state == "submitting" and m.to_state == "queued"]

    async def service_comes_up(engine: Any) -> None:

        await wait_for(lambda: len(refused()) >= 3)
        sim = Simulator(tiny_sim_config(port=port, time_scale=FAST, rate=(20, 0.5)))
        await sim.__aenter__()
        sims.append(sim)

    try:
        outcome, engine = await drive.run(during=service_comes_up)
        st = sims[0].stats()
    finally:
        for sim in sims:
            await sim.__aexit__(None, None, None)
    assert outcome.exit_code == ExitCode.OK
    assert len(refused()) >= 3  # each refusal put the job back in the queue, no more
    assert not engine.in_doubt_seen  # nothing was sent, so nothing is in doubt
    assert not [m for m in moves if m.to_state == "in_doubt"]
    assert st["runs_created"] == 3 and st["idempotent_replays"] == 0
    assert all(j.attempts == 1 for j in all_jobs(db, bid(batch)))


async def test_at_most_one_post_is_ever_in_flight(tmp_path):
    # Every POST is answered late, and ten runs may be in flight: still one POST at a time,
    # so a crash can leave at most one submission in doubt.
    moves: list[TransitionEvent] = []

    class Spy:
        def transition(self, ev: TransitionEvent) -> None:
            moves.append(ev)

        def request(self, ev: RequestEvent) -> None:
            pass

        def finished(self, summary: RunSummary) -> None:
            pass

    async with simulator(slow_rate=1.0, slow_s=0.05) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(8), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", observers=[Spy()])
        drive.config = EngineConfig(concurrency=10)
        seen_at_once: list[int] = []

        async def watch(engine: Any) -> None:
            while len(seen_at_once) < 2000 and sim.stats()["runs_succeeded"] < 8:
                seen_at_once.append(sim.slow_answers)
                await asyncio.sleep(0.002)

        outcome, _ = await drive.run(during=watch)
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK and st["slow_answers_sent"] == 8
    assert max(seen_at_once) == 1  # the service never held two of our POSTs
    submitting = 0
    for ev in moves:  # replayed in order: never two jobs in `submitting`
        submitting += (ev.to_state == "submitting") - (ev.from_state == "submitting")
        assert submitting <= 1


async def test_a_service_that_only_answers_500_fails_the_job_after_max_attempts(tmp_path):
    async with simulator(error_rate=1.0) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(2), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out")
        drive.config = EngineConfig(max_attempts=3)
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.JOBS_FAILED
    assert st["requests"]["POST /api/v1/runs"] == {"500": 6}  # 3 tries each, no more
    assert st["runs_created"] == 0 and st["charged_micro_usd"] == 0
    for job in all_jobs(db, bid(batch)):
        assert job.state == "failed" and job.errors == 3
        assert (job.last_error or "").startswith("500")
        assert job.attempts == 1  # every try carried the same idempotency key


async def test_a_key_revoked_mid_run_stops_at_once_and_a_resume_pays_nothing_twice(tmp_path):
    async with simulator(time_scale=0.02) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(12), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", rate=(10, 0.5))
        drive.config = EngineConfig(concurrency=4)

        async def revoke(engine: Any) -> None:

            await wait_for(lambda: engine.counts.get("running", 0) >= 3)
            sim.state.keyring.find = lambda presented: None  # type: ignore[method-assign]

        outcome, _ = await drive.run(during=revoke)
        st = sim.stats()
        refused = st["requests"]["GET /api/v1/runs/{id}"].get("401", 0) + st["requests"][
            "POST /api/v1/runs"
        ].get("401", 0)
        assert outcome.exit_code == ExitCode.ACCOUNT and "401" in outcome.reason
        assert 1 <= refused <= 4  # the requests already on their way, then nothing
        counts = jobs_by_state(db, bid(batch))
        assert "failed" not in counts and counts.get("running", 0) >= 1  # paid runs kept
        paid = st["runs_created"]

        del sim.state.keyring.find  # the key works again
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK
    assert jobs_by_state(db, bid(batch)) == {"succeeded": 12}
    assert st["runs_created"] == 12 and paid >= 3
    assert_no_double_charge(sim, db, bid(batch))


async def test_cancel_abandon_gives_up_the_paid_runs_too(tmp_path):
    async with simulator(time_scale=0.05) as sim:
        db, batch = make_batch(tmp_path / "s.db", prompts(20), tmp_path / "out")
        drive = Drive(db, batch, sim.base_url, tmp_path / "out", rate=(10, 0.5))
        drive.config = EngineConfig(flags_every_s=0.05, concurrency=5)

        async def abandon_soon(engine: Any) -> None:

            await wait_for(lambda: engine.counts.get("running", 0) >= 3)
            commands.cancel(db, bid(batch), abandon=True, now=0)

        outcome, _ = await drive.run(during=abandon_soon)
        st = sim.stats()
    counts = jobs_by_state(db, bid(batch))
    assert outcome.exit_code == ExitCode.JOBS_FAILED and "cancel" in outcome.reason
    assert set(counts) <= {"succeeded", "canceled"}, counts  # nothing left running
    assert counts.get("succeeded", 0) < st["runs_created"]  # paid runs were given up
    assert len(list((tmp_path / "out").glob("*.mp4"))) == counts.get("succeeded", 0)


async def test_an_unreachable_service_stops_the_run_resumable_instead_of_failing_jobs(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db, batch = make_batch(tmp_path / "s.db", prompts(6), tmp_path / "out")
    drive = Drive(db, batch, f"http://127.0.0.1:{port}", tmp_path / "out")
    drive.config = EngineConfig(max_attempts=3, unreachable_s=0.3)
    outcome, engine = await drive.run()
    assert outcome.exit_code == ExitCode.INTERRUPTED
    assert "cannot reach the API for" in outcome.reason and "nothing was sent" in outcome.reason
    assert jobs_by_state(db, bid(batch)) == {"queued": 6}  # nothing failed, nothing in doubt
    assert not engine.in_doubt_seen
    # refusals are not the jobs' fault: they cost no attempt and no error
    assert all(j.errors == 0 and j.attempts <= 1 for j in all_jobs(db, bid(batch)))

    async with simulator(port=port) as sim:  # it is back: the same batch finishes
        outcome, _ = await drive.run()
        st = sim.stats()
    assert outcome.exit_code == ExitCode.OK and st["runs_created"] == 6

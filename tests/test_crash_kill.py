"""kill -9 of a real `batchgen` process at random moments, then a resume that finishes.

The simulator runs in this test's event loop; the batch runs in subprocesses that
are killed with SIGKILL (no cleanup, no finally, no flush) a few times. Afterwards:
every job succeeded, the simulator charged exactly one run per job, the recorded
costs equal what was charged, and no partial file is left in the output folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from batchgen.states import JobState
from batchgen.store import jobs as store
from tests.test_engine_helpers import KEY, StandInConfig, StandInSim, bid, make_batch, prompts


async def start(*args: str, base_url: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    env.update(RUNBASE_API_KEY=KEY, RUNBASE_BASE_URL=base_url)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchgen", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("*") if ".part" in p.name)


async def test_kill_9_at_random_moments_then_resume_pays_once_and_loses_nothing(tmp_path):
    n = 40
    rng = random.Random(2024)
    config = StandInConfig(time_scale=0.02, rate=(10, 0.5), seed=11, cut_rate=0.2, slow_rate=0.5)
    async with StandInSim(config) as sim:
        db_path = tmp_path / "state.db"
        out = tmp_path / "out"
        db, batch = make_batch(db_path, prompts(n), out)
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "10/0.5s")
        kills = 0
        for i in range(4):
            proc = await start(*args, base_url=sim.base_url)
            if i % 2:
                await asyncio.sleep(rng.uniform(0.8, 2.0))
            else:  # the worst moment: the run is created and charged, its answer not back
                await wait_until(lambda: sim.slow_answers > 0)
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            await proc.communicate()
        assert kills >= 3
        middle = store.counts(db, bid(batch))
        assert middle["succeeded"] < n, "the kills came too late to test anything"

        proc = await start(*args, "--json", base_url=sim.base_url)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-3000:]
        summary = json.loads(stdout)
        st = sim.stats()

    assert summary["counts"] == {"succeeded": n}
    # the two kills mid-POST left paid runs in doubt; resending their keys found them
    assert store.in_doubt_since(db, bid(batch), 0) >= 2
    assert st["idempotent_replays"] >= 2
    assert store.counts(db, bid(batch))["succeeded"] == n
    jobs = list(store.iter_jobs(db, bid(batch), states=list(JobState)))
    # one run per job, charged once: in-doubt submissions were resent with their key
    assert st["runs_created"] == n, st
    assert st["charged_micro_usd"] - st["refunded_micro_usd"] == sum(j.cost_micro_usd for j in jobs)
    assert len({j.run_id for j in jobs}) == n
    assert all(j.attempts == 1 for j in jobs)
    for job in jobs:
        for rel in json.loads(job.output_paths_json):
            assert (out / rel).is_file() and (out / (rel + ".json")).is_file()
    assert leftovers(out) == []


async def test_sigint_stops_cleanly_with_75_and_resume_finishes(tmp_path):
    n = 30
    async with StandInSim(StandInConfig(time_scale=0.02, rate=(10, 0.5))) as sim:
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out")
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "10/0.5s")
        proc = await start(*args, base_url=sim.base_url)
        for _ in range(300):
            await asyncio.sleep(0.05)
            if store.counts(db, bid(batch))["succeeded"] >= 3:
                break
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 75, stderr.decode()[-2000:]
        assert "interrupted" in stderr.decode()
        counts = store.counts(db, bid(batch))
        assert counts["submitting"] == 0  # the POST in flight was recorded
        assert counts["succeeded"] < n

        proc = await start(*args, base_url=sim.base_url)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert sim.stats()["runs_created"] == n
    assert store.counts(db, bid(batch))["succeeded"] == n


async def test_a_second_sigint_stops_at_once_and_the_state_stays_safe(tmp_path):
    n = 6
    config = StandInConfig(time_scale=0.02, rate=(10, 0.5), slow_rate=1.0)
    async with StandInSim(config) as sim:
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out")
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "10/0.5s")
        proc = await start(*args, base_url=sim.base_url)
        await wait_until(lambda: sim.slow_answers > 0)  # a POST is waiting for its answer
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 75, stderr.decode()[-2000:]
        assert "twice" in stderr.decode()
        # the POST whose answer never came back is in doubt, not lost
        assert store.counts(db, bid(batch))["submitting"] == 1

        proc = await start(*args, "--json", base_url=sim.base_url)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        summary = json.loads(stdout)
        st = sim.stats()
    assert summary["in_doubt"] == 1 and summary["counts"] == {"succeeded": n}
    assert st["runs_created"] == n and st["idempotent_replays"] == 1

"""kill -9 of a real `batchgen` process at random moments, then a resume that finishes.

The simulator runs in this test's event loop; the batch runs in subprocesses that
are killed with SIGKILL (no cleanup, no finally, no flush) a few times. Afterwards:
every job succeeded, the simulator charged exactly one run per job, the recorded
costs equal what was charged, and no partial file is left in the output folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from batchgen.files.media import probe
from batchgen.sim import Simulator
from batchgen.states import JobState
from batchgen.store import jobs as store
from batchgen.store.batches import find_batch
from batchgen.store.schema import open_db
from tests.support.engine import KEY, bid, make_batch, prompts, tiny_sim_config


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


MANIFEST = """\
name: killed
out_dir: videos
filename: "{index:03d}-{subject}-{take}"
defaults:
  prompt: "a {subject} in the snow, take {take}"
  resolution: 720p
  duration: 5
matrix:
  subject: [fox, owl, hare, lynx, crane]
  take: [1, 2, 3, 4, 5, 6]
limits:
  rate: 10/0.5s
  concurrency: 12
"""


async def test_kill_9_at_random_moments_then_resume_pays_once_and_loses_nothing(tmp_path):
    # `batchgen run MANIFEST`, killed with SIGKILL six times: twice at the worst moment
    # (a run created and charged, its answer not back yet), three times at a random
    # moment (mid-poll, mid-expansion...), once while a video is being written. Then the same
    # command finishes the batch.
    n = 30
    rng = random.Random(2024)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST)
    db_path, out = tmp_path / "state.db", tmp_path / "videos"
    config = tiny_sim_config(time_scale=0.02, rate=(10, 0.5), seed=11, cut_rate=0.3, slow_rate=0.5)
    async with Simulator(config) as sim:
        args = ("run", str(manifest), "--db", str(db_path))
        kills, moments, parts_left = 0, [], []
        for i in range(6):
            proc = await start(*args, base_url=sim.base_url)
            if i in (1, 3):  # the worst moment
                slow = sim.stats()["slow_answers_sent"]
                await wait_until(lambda: sim.stats()["slow_answers_sent"] > slow)  # noqa: B023
            elif i == 5:  # in the middle of writing a video
                await wait_until(lambda: bool(leftovers(out)))
            else:
                moments.append(rng.uniform(0.2, 2.5))
                await asyncio.sleep(moments[-1])
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            await proc.communicate()
            parts_left += leftovers(out)
        assert kills >= 5, moments
        assert parts_left  # a kill left a partial file behind for the resume to deal with
        db = open_db(db_path)
        batch = find_batch(db, "killed")
        assert batch.id is not None
        middle = store.counts(db, batch.id)
        assert middle["succeeded"] < n, "the kills came too late to test anything"

        proc = await start(*args, "--json", base_url=sim.base_url)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, stderr.decode()[-3000:]
        summary = json.loads(stdout)
        st = sim.stats()

    assert summary["counts"] == {"succeeded": n}
    # the kills mid-POST left paid runs in doubt; resending their keys found them
    assert store.in_doubt_since(db, batch.id, 0) >= 2
    assert st["idempotent_replays"] >= 2
    jobs = list(store.iter_jobs(db, batch.id, states=list(JobState)))
    assert len(jobs) == n and all(j.state == JobState.SUCCEEDED for j in jobs)
    # one run per job, charged once: in-doubt submissions were resent with their key
    assert st["runs_created"] == n, st
    assert st["charged_micro_usd"] - st["refunded_micro_usd"] == sum(j.cost_micro_usd for j in jobs)
    assert len({j.run_id for j in jobs}) == n
    assert all(j.attempts == 1 for j in jobs)
    files = sorted(p.name for p in out.iterdir())
    assert leftovers(out) == [] and len(files) == 2 * n  # a video and its sidecar, no more
    for job in jobs:
        for rel in json.loads(job.output_paths_json):
            video = out / rel
            side = json.loads((out / (rel + ".json")).read_text())
            assert side["run_id"] == job.run_id
            assert side["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
            assert probe(video).frames > 0


async def test_sigint_stops_cleanly_with_75_and_resume_finishes(tmp_path):
    n = 30
    async with Simulator(tiny_sim_config(time_scale=0.02, rate=(10, 0.5))) as sim:
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
    config = tiny_sim_config(time_scale=0.02, rate=(10, 0.5), slow_rate=1.0)
    async with Simulator(config) as sim:
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

        # --in-doubt hold: everything else is done, the one in doubt waits (exit 1)
        proc = await start(*args, "--in-doubt", "hold", "--json", base_url=sim.base_url)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1, stderr.decode()[-2000:]
        held = json.loads(stdout)
        assert held["in_doubt"] == 1 and held["counts"] == {"succeeded": n - 1, "in_doubt": 1}
        assert sim.stats()["idempotent_replays"] == 0

        # `batchgen retry BATCH --in-doubt` resends it with the same key: found, not paid
        retry = ("retry", batch.name, "--in-doubt", *args[2:])
        proc = await start(*retry, "--json", base_url=sim.base_url)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        summary = json.loads(stdout)
        st = sim.stats()
    assert summary["in_doubt"] == 1 and summary["counts"] == {"succeeded": n}
    assert st["runs_created"] == n and st["idempotent_replays"] == 1

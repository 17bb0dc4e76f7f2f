"""Exit 0 means every video is on disk as recorded: ``run``/``resume``/``retry`` check the
files of succeeded jobs first and fetch the missing or damaged ones again from their
paid runs (never paying again), or fail them with ``output_lost`` when the run is gone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.engine.schedule import PollPolicy
from batchgen.errors import ExitCode
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import Simulator
from batchgen.states import JobState
from batchgen.store import jobs as store
from batchgen.store.schema import Batch, Job
from tests.support.engine import KEY, bid, make_batch, prompts, tiny_sim_config
from tests.support.runs import Watcher

FAST = tiny_sim_config(time_scale=0.002, rate=(20, 0.5))


def opts(base_url: str, **kw: Any) -> RunOptions:
    return RunOptions(
        base_url=base_url, rate=(20, 0.5), poll_policy=PollPolicy(min_interval_s=0.01), **kw
    )


def succeeded(db: Engine, batch: Batch) -> list[Job]:
    return list(store.iter_jobs(db, bid(batch), states=[JobState.SUCCEEDED]))


def video(out: Path, job: Job) -> Path:
    rel: str = json.loads(job.output_paths_json)[0]
    return out / rel


def intact(out: Path, job: Job) -> bool:
    path = video(out, job)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return path.is_file() and [digest] == json.loads(job.checksums_json)


async def finished_batch(tmp_path: Path, sim: Simulator, n: int = 4) -> tuple[Engine, Batch]:
    db, batch = make_batch(tmp_path / "s.db", prompts(n), tmp_path / "out")
    summary = await arun_batch(tmp_path / "s.db", api_key=KEY, options=opts(sim.base_url))
    assert summary.exit_code == ExitCode.OK, summary.reason
    return db, batch


async def test_deleted_and_overwritten_videos_are_fetched_again_without_paying(tmp_path):
    out = tmp_path / "out"
    async with Simulator(FAST) as sim:
        db, batch = await finished_batch(tmp_path, sim)
        jobs = succeeded(db, batch)
        video(out, jobs[0]).unlink()
        video(out, jobs[1]).write_bytes(b"garbage, not a video")
        watcher = Watcher()
        summary = await arun_batch(
            tmp_path / "s.db",
            api_key=KEY,
            batch=batch.name,
            options=opts(sim.base_url),
            observers=[watcher],
        )
        stats = sim.stats()
    moves = [(t.job_idx, t.from_state, t.to_state) for t in watcher.transitions]
    assert sorted(moves) == [
        (0, "downloading", "succeeded"),
        (0, "succeeded", "downloading"),
        (1, "downloading", "succeeded"),
        (1, "succeeded", "downloading"),
    ]
    assert summary.exit_code == ExitCode.OK, summary.reason
    assert summary.repaired == 2 and summary.to_json()["repaired"] == 2
    assert summary.counts == {"succeeded": 4}
    assert stats["runs_created"] == 4  # nothing paid again
    # one GET of each damaged job's run for fresh URLs, nothing else
    assert summary.requests == {"GET /api/v1/runs/{id}": {"200": 2}}
    assert all(intact(out, job) for job in succeeded(db, batch))


async def test_the_output_folder_deleted_then_the_same_run_again(tmp_path):
    out = tmp_path / "out"
    async with Simulator(FAST) as sim:
        db, batch = await finished_batch(tmp_path, sim, n=3)
        for path in sorted(out.iterdir()):
            if path.is_file():
                path.unlink()
        out.rmdir()
        summary = await arun_batch(
            tmp_path / "s.db", api_key=KEY, batch=batch.name, options=opts(sim.base_url)
        )
    assert summary.exit_code == ExitCode.OK and summary.repaired == 3
    assert all(intact(out, job) for job in succeeded(db, batch))


async def test_same_size_damage_is_found_with_verify(tmp_path):
    out = tmp_path / "out"
    async with Simulator(FAST) as sim:
        db, batch = await finished_batch(tmp_path, sim, n=2)
        target = video(out, succeeded(db, batch)[0])
        target.write_bytes(b"\0" * target.stat().st_size)  # same size: stat cannot see it
        summary = await arun_batch(
            tmp_path / "s.db", api_key=KEY, batch=batch.name, options=opts(sim.base_url)
        )
        assert summary.exit_code == ExitCode.OK and summary.repaired == 0
        summary = await arun_batch(
            tmp_path / "s.db",
            api_key=KEY,
            batch=batch.name,
            options=opts(sim.base_url, verify=True),
        )
        stats = sim.stats()
    assert summary.exit_code == ExitCode.OK and summary.repaired == 1
    assert stats["runs_created"] == 2
    assert all(intact(out, job) for job in succeeded(db, batch))


async def test_a_missing_sidecar_is_rewritten_and_an_intact_video_kept(tmp_path):
    out = tmp_path / "out"
    async with Simulator(FAST) as sim:
        db, batch = await finished_batch(tmp_path, sim, n=2)
        target = video(out, succeeded(db, batch)[0])
        inode = target.stat().st_ino
        target.with_name(target.name + ".json").unlink()
        summary = await arun_batch(
            tmp_path / "s.db", api_key=KEY, batch=batch.name, options=opts(sim.base_url)
        )
    assert summary.exit_code == ExitCode.OK and summary.repaired == 1
    assert target.stat().st_ino == inode  # kept, not fetched again
    assert json.loads(target.with_name(target.name + ".json").read_text())["size"] > 0


async def test_a_lost_video_whose_run_is_gone_fails_and_is_not_paid_again(tmp_path, caplog):
    out = tmp_path / "out"
    async with Simulator(FAST) as sim:
        db, batch = await finished_batch(tmp_path, sim, n=2)
        lost = succeeded(db, batch)[0]
        video(out, lost).unlink()
        sim.reset()  # the service forgot every run (and its counters)
        summary = await arun_batch(
            tmp_path / "s.db", api_key=KEY, batch=batch.name, options=opts(sim.base_url)
        )
        assert summary.exit_code == ExitCode.JOBS_FAILED, summary.reason
        assert summary.repaired == 0
        assert summary.counts == {"succeeded": 1, "failed": 1}
        assert summary.failures[0]["code"] == store.OUTPUT_LOST
        assert "gone" in summary.failures[0]["error"]
        # retry --failed leaves it failed: its run was paid once already
        summary = await arun_batch(
            tmp_path / "s.db",
            api_key=KEY,
            batch=batch.name,
            options=opts(sim.base_url),
            retry_failed=True,
        )
        stats = sim.stats()
    assert summary.exit_code == ExitCode.JOBS_FAILED
    assert summary.counts == {"succeeded": 1, "failed": 1}
    assert stats["runs_created"] == 0
    assert "1 failed job(s) stay failed: their paid run is gone" in caplog.text
    status = CliRunner().invoke(app, ["status", "--db", str(tmp_path / "s.db")])
    assert "retry them" not in status.output and "--pay-again" in status.output

"""`batchgen.run.runner` as a library, and the cancel/retry/resume commands, with the sim."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from batchgen.errors import ExitCode
from batchgen.sim import Simulator
from batchgen.states import JobState
from batchgen.store import jobs as store
from tests.support.engine import KEY, bid, make_batch, prompts
from tests.support.runs import FAST

# ------------------------------------------------------------------ the commands


async def batchgen(*args: str, base_url: str = "") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    env.update(RUNBASE_API_KEY=KEY, RUNBASE_BASE_URL=base_url)
    rate = () if args[0] == "cancel" else ("--rate", "20/0.5s")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchgen", *args, *rate, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cancel_then_resume_submits_nothing_and_says_canceled(tmp_path):
    db_path = tmp_path / "s.db"
    _db, batch = make_batch(db_path, prompts(4), tmp_path / "out")
    code, out, err = await batchgen("cancel", batch.name, "--db", str(db_path), "--json")
    assert code == 0, err
    assert json.loads(out)["counts"] == {"canceled": 4}
    async with Simulator(FAST) as sim:
        code, out, err = await batchgen(
            "resume", batch.name, "--db", str(db_path), "--json", base_url=sim.base_url
        )
        assert sim.stats()["runs_created"] == 0
    assert code == ExitCode.JOBS_FAILED, err
    assert json.loads(out)["reason"].startswith("canceled")


async def test_retry_fetches_a_paid_run_again_without_paying_again(tmp_path):
    db_path = tmp_path / "s.db"
    async with Simulator(FAST) as sim:
        db, batch = make_batch(db_path, prompts(3), tmp_path / "out")
        code, _, err = await batchgen("resume", "--db", str(db_path), base_url=sim.base_url)
        assert code == 0, err
        # pretend job 0's files never arrived: failed with download_failed, files gone
        job = next(store.iter_jobs(db, bid(batch), states=[JobState.SUCCEEDED]))
        for rel in json.loads(job.output_paths_json):
            Path(tmp_path / "out" / rel).unlink()
        with store._session(db) as s:
            row = s.get(type(job), job.id)
            assert row is not None
            row.state, row.error_code = "failed", store.DOWNLOAD_FAILED
            s.add(row)
            s.commit()
        code, out, err = await batchgen(
            "retry", batch.name, "--failed", "--db", str(db_path), "--json",
            base_url=sim.base_url,
        )  # fmt: skip
        st = sim.stats()
    assert code == 0, err
    assert st["runs_created"] == 3
    assert json.loads(out)["counts"] == {"succeeded": 3}
    assert json.loads(out)["requests"] == {"GET /api/v1/runs/{id}": {"200": 1}}
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 3

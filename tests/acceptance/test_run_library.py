"""`batchgen.run.runner` as a library, and the cancel/retry/resume commands, with the sim."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from batchgen.engine.schedule import PollPolicy
from batchgen.errors import ExitCode
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.states import JobState
from batchgen.store import jobs as store
from tests.test_engine_helpers import KEY, StandInConfig, StandInSim, bid, make_batch, prompts

FAST = StandInConfig(time_scale=0.002, rate=(20, 0.5))


class Watcher:
    def __init__(self) -> None:
        self.transitions: list[TransitionEvent] = []
        self.requests: list[RequestEvent] = []
        self.summaries: list[RunSummary] = []
        self.closed = 0

    def transition(self, ev: TransitionEvent) -> None:
        self.transitions.append(ev)

    def request(self, ev: RequestEvent) -> None:
        self.requests.append(ev)

    def finished(self, summary: RunSummary) -> None:
        self.summaries.append(summary)

    async def aclose(self) -> None:
        self.closed += 1


def opts(base_url: str, **kw: Any) -> RunOptions:
    kw.setdefault("rate", (20, 0.5))
    return RunOptions(base_url=base_url, poll_policy=PollPolicy(min_interval_s=0.01), **kw)


async def test_resume_as_a_library_reports_everything_to_observers(tmp_path):
    async with StandInSim(FAST) as sim:
        _db, batch = make_batch(tmp_path / "s.db", prompts(6), tmp_path / "out")
        watcher = Watcher()
        summary = await arun_batch(
            tmp_path / "s.db", api_key=KEY, batch=batch.name, options=opts(sim.base_url),
            observers=[watcher],
        )  # fmt: skip
    assert summary.exit_code == 0 and summary.reason == "done"
    assert watcher.summaries == [summary] and watcher.closed == 1
    data = summary.to_json()
    assert data["counts"] == {"succeeded": 6} and data["jobs"] == 6
    assert data["spend_micro_usd"] == 6 * 484_000 and data["in_doubt"] == 0
    assert data["requests"]["POST /api/v1/runs"] == {"200": 6}
    assert data["out_dir"] == str(tmp_path / "out")
    assert data["wall_s"] > 0 and data["failures"] == []
    assert len([t for t in watcher.transitions if t.to_state == "succeeded"]) == 6
    assert len(watcher.requests) == data["requests_total"]
    for file in (tmp_path / "out").glob("*.mp4"):
        assert json.loads(file.with_name(file.name + ".json").read_text())["run_id"]
    assert KEY not in json.dumps(data)


async def test_every_exit_path_tells_the_observers(tmp_path):
    watcher = Watcher()
    summary = await arun_batch(tmp_path / "s.db", api_key=None, observers=[watcher])
    assert summary.exit_code == ExitCode.USAGE and "RUNBASE_API_KEY" in summary.reason
    assert not (tmp_path / "s.db").exists()
    summary = await arun_batch(tmp_path / "s.db", api_key=KEY, batch="nope", observers=[watcher])
    assert summary.exit_code == ExitCode.USAGE and "no state database" in summary.reason
    assert not (tmp_path / "s.db").exists()
    make_batch(tmp_path / "s.db", prompts(1), tmp_path / "out")
    summary = await arun_batch(tmp_path / "s.db", api_key=KEY, batch="nope", observers=[watcher])
    assert summary.exit_code == ExitCode.USAGE and "nope" in summary.reason
    async with StandInSim(FAST) as sim:
        make_batch(tmp_path / "t.db", prompts(2), tmp_path / "out")
        summary = await arun_batch(
            tmp_path / "t.db", api_key="sk-revoked", options=opts(sim.base_url),
            observers=[watcher],
        )  # fmt: skip
    assert summary.exit_code == ExitCode.ACCOUNT and "401" in summary.reason
    assert summary.counts == {"queued": 2}
    assert len(watcher.summaries) == 4 and watcher.closed == 4


async def test_failures_are_listed_in_the_summary(tmp_path):
    inputs = [*prompts(2), {"prompt": "x", "resolution": "4k"}]
    async with StandInSim(FAST) as sim:
        make_batch(tmp_path / "s.db", inputs, tmp_path / "out")
        summary = await arun_batch(tmp_path / "s.db", api_key=KEY, options=opts(sim.base_url))
    assert summary.exit_code == ExitCode.JOBS_FAILED
    assert summary.failures[0]["idx"] == 2 and summary.failures[0]["code"] == "invalid_input"


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
    async with StandInSim(FAST) as sim:
        code, out, err = await batchgen(
            "resume", batch.name, "--db", str(db_path), "--json", base_url=sim.base_url
        )
        assert sim.stats()["runs_created"] == 0
    assert code == ExitCode.JOBS_FAILED, err
    assert json.loads(out)["reason"].startswith("canceled")


async def test_retry_fetches_a_paid_run_again_without_paying_again(tmp_path):
    db_path = tmp_path / "s.db"
    async with StandInSim(FAST) as sim:
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


async def test_expired_urls_are_refreshed_with_one_get_of_the_run(tmp_path):
    config = StandInConfig(time_scale=0.002, rate=(20, 0.5), stale_first_url=True)
    async with StandInSim(config) as sim:
        make_batch(tmp_path / "s.db", prompts(4), tmp_path / "out")
        summary = await arun_batch(tmp_path / "s.db", api_key=KEY, options=opts(sim.base_url))
    assert summary.exit_code == 0, summary.reason
    assert summary.counts == {"succeeded": 4}
    gets = summary.requests["GET /api/v1/runs/{id}"]["200"]
    assert gets >= 8  # the poll that found it done, then one refresh per job
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 4


async def test_concurrency_bounds_the_runs_in_flight(tmp_path):
    watcher = Watcher()
    async with StandInSim(StandInConfig(time_scale=0.005, rate=(20, 0.5))) as sim:
        make_batch(tmp_path / "s.db", prompts(12), tmp_path / "out")
        summary = await arun_batch(
            tmp_path / "s.db", api_key=KEY, options=opts(sim.base_url, concurrency=3),
            observers=[watcher],
        )  # fmt: skip
    assert summary.exit_code == 0
    in_flight, peak = 0, 0
    for ev in watcher.transitions:
        if ev.to_state == "submitting":
            in_flight += 1
        if ev.from_state in ("submitting", "running") and ev.to_state not in (
            "running",
            "submitting",
        ):
            in_flight -= 1
        peak = max(peak, in_flight)
    assert peak == 3


async def test_downloads_spend_none_of_the_keys_limit(tmp_path):
    # Every request of the API client goes through the key's limiter; the files are
    # fetched beside it. Only the refresh of an expired URL is an API request.
    watcher = Watcher()
    config = StandInConfig(time_scale=0.005, rate=(20, 0.5), stale_first_url=True, cut_rate=0.3)
    async with StandInSim(config) as sim:
        make_batch(tmp_path / "s.db", prompts(6), tmp_path / "out")
        summary = await arun_batch(
            tmp_path / "s.db", api_key=KEY, options=opts(sim.base_url), observers=[watcher]
        )
        st = sim.stats()
    assert summary.exit_code == 0
    api = {route: by for route, by in st["requests"].items() if "/api/" in route}
    assert (
        len(watcher.requests)
        == summary.to_json()["requests_total"]
        == sum(sum(by.values()) for by in api.values())
    )
    assert sum(st["requests"]["GET /files"].values()) >= 6 + st["expired_url_hits"]
    assert st["expired_url_hits"] >= 6  # each refreshed with one GET of its run
    assert sum(api["GET /api/v1/runs/{id}"].values()) >= 6 + st["expired_url_hits"]

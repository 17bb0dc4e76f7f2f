"""run_batch as a library against the simulator: observers, failures, limits."""

from __future__ import annotations

import json

from batchgen.errors import ExitCode
from batchgen.run.runner import arun_batch
from batchgen.sim import Simulator
from tests.support.engine import KEY, make_batch, prompts, tiny_sim_config
from tests.support.runs import FAST, Watcher, opts


async def test_resume_as_a_library_reports_everything_to_observers(tmp_path):
    async with Simulator(FAST) as sim:
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
    async with Simulator(FAST) as sim:
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
    async with Simulator(FAST) as sim:
        make_batch(tmp_path / "s.db", inputs, tmp_path / "out")
        summary = await arun_batch(tmp_path / "s.db", api_key=KEY, options=opts(sim.base_url))
    assert summary.exit_code == ExitCode.JOBS_FAILED
    assert summary.failures[0]["idx"] == 2 and summary.failures[0]["code"] == "invalid_input"


async def test_expired_urls_are_refreshed_with_one_get_of_the_run(tmp_path):
    config = tiny_sim_config(time_scale=0.002, rate=(20, 0.5), stale_first_url=True)
    async with Simulator(config) as sim:
        make_batch(tmp_path / "s.db", prompts(4), tmp_path / "out")
        summary = await arun_batch(tmp_path / "s.db", api_key=KEY, options=opts(sim.base_url))
    assert summary.exit_code == 0, summary.reason
    assert summary.counts == {"succeeded": 4}
    gets = summary.requests["GET /api/v1/runs/{id}"]["200"]
    assert gets >= 8  # the poll that found it done, then one refresh per job
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 4


async def test_concurrency_bounds_the_runs_in_flight(tmp_path):
    watcher = Watcher()
    async with Simulator(tiny_sim_config(time_scale=0.005, rate=(20, 0.5))) as sim:
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
    config = tiny_sim_config(time_scale=0.005, rate=(20, 0.5), stale_first_url=True, cut_rate=0.3)
    async with Simulator(config) as sim:
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

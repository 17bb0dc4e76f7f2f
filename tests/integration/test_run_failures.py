"""An error batchgen does not know stops the run at once with exit 70, one line on the
terminal, the traceback in the log file, and every paid run and intent on record.

Errors are injected in-process (a function the engine calls made to raise) in each of
its parts: the submission, the poll, the download, an observer, the limiter and the
dispatcher itself; and once through the real command with a key ending in a carriage
return (a Windows key file), which aiohttp refuses to put in a header.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchgen.engine import poll as poller
from batchgen.errors import ExitCode
from batchgen.events import RequestEvent, TransitionEvent
from batchgen.observe.metrics import parse
from batchgen.run.runner import arun_batch
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.sim import Simulator
from batchgen.states import JobState
from batchgen.store import jobs as store
from tests.support.engine import KEY, bid, make_batch, prompts, tiny_sim_config
from tests.support.processes import cron_env, finish, start
from tests.support.runs import FAST, Watcher, opts

N = 4


class Boom(RuntimeError):
    pass


def boom(*_a: Any, **_k: Any) -> Any:
    raise Boom("injected for the test")


class FailingObserver(Watcher):
    def transition(self, ev: TransitionEvent) -> None:
        super().transition(ev)
        if ev.to_state == JobState.RUNNING.value:
            raise Boom("observer bug")


class FailingRequestObserver(Watcher):
    def request(self, ev: RequestEvent) -> None:
        super().request(ev)
        raise Boom("observer bug on a request")


def inject(where: str, monkeypatch: pytest.MonkeyPatch) -> list[Watcher]:
    """Make one part of the engine raise; returns extra observers for the run."""
    if where == "submit":
        # the POST itself raises something no part of the client maps (like aiohttp does
        # for a header with a control character): nothing is known about what was sent
        monkeypatch.setattr("batchgen.runbase.client.RunbaseClient._send", boom)
    elif where == "poll":
        monkeypatch.setattr(poller, "api_duration", boom)
    elif where == "download":
        monkeypatch.setattr("batchgen.files.sidecar.write_sidecar", boom)
    elif where == "limiter":
        calls = [0]
        real = RequestLimiter.on_success

        def flaky(self: RequestLimiter) -> None:
            calls[0] += 1
            if calls[0] == 3:
                raise Boom("limiter bug")
            real(self)

        monkeypatch.setattr(RequestLimiter, "on_success", flaky)
    elif where == "dispatcher":
        monkeypatch.setattr(store, "batch_flags", boom)
    elif where == "observer":
        return [FailingObserver()]
    elif where == "request-observer":
        return [FailingRequestObserver()]
    return []


PARTS = ["submit", "poll", "download", "limiter", "dispatcher", "observer", "request-observer"]


@pytest.mark.parametrize("where", PARTS)
async def test_an_unknown_error_anywhere_stops_with_70_and_keeps_every_paid_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    db_path = tmp_path / "s.db"
    db, batch = make_batch(db_path, prompts(N), tmp_path / "out")
    log_file = tmp_path / "run.jsonl"
    metrics = tmp_path / "m.prom"
    async with Simulator(FAST) as sim:
        with monkeypatch.context() as mp:
            extra = inject(where, mp)
            watcher = Watcher()
            summary = await arun_batch(
                db_path, api_key=KEY, batch=batch.name,
                options=opts(sim.base_url, log_file=log_file, metrics_file=metrics),
                observers=[watcher, *extra],
            )  # fmt: skip
        assert summary.exit_code == int(ExitCode.SOFTWARE) == 70, summary.reason
        assert summary.reason.startswith("internal error (Boom: ")
        assert "\n" not in summary.reason
        assert watcher.summaries == [summary]
        # every run the service created (and charged) is on record, or its job is in doubt
        jobs = store.load_active(db, bid(batch))
        counts = store.counts(db, bid(batch))
        created = sim.stats()["runs_created"]
        every = store.iter_jobs(db, bid(batch), states=list(JobState))
        recorded = {j.run_id for j in every if j.run_id}
        assert created <= len(recorded) + counts["submitting"], (created, counts)
        assert counts["succeeded"] < N or where in ("observer", "request-observer")
        # the stop was at once: not every job was tried
        assert sum(1 for j in jobs if j.state == JobState.SUBMITTING.value) <= 1
        # the log file holds the traceback; the metrics say 70 and no success
        lines = [json.loads(x) for x in log_file.read_text().splitlines()]
        errors = [x for x in lines if x["event"] == "error"]
        assert len(errors) == 1 and "Traceback" in errors[0]["traceback"]
        assert "Boom" in errors[0]["traceback"]
        assert lines[-1]["event"] == "finished" and lines[-1]["exit_code"] == 70
        fams = {(name, labels.get("batch")): v for name, labels, v in parse(metrics.read_text())}
        assert fams[("batchgen_exit_code", batch.name)] == 70
        assert ("batchgen_last_success_timestamp_seconds", batch.name) not in fams

        # once fixed, resume finishes without paying twice
        summary = await arun_batch(
            db_path, api_key=KEY, batch=batch.name, options=opts(sim.base_url)
        )
        assert summary.exit_code == 0, summary.reason
        assert sim.stats()["runs_created"] == N
    assert store.counts(db, bid(batch))["succeeded"] == N


async def test_a_post_that_raised_stays_submitting_never_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db_path = tmp_path / "s.db"
    db, batch = make_batch(db_path, prompts(N), tmp_path / "out")
    monkeypatch.setattr("batchgen.runbase.client.RunbaseClient._send", boom)
    summary = await arun_batch(
        db_path, api_key=KEY, batch=batch.name, options=opts("http://127.0.0.1:9")
    )
    assert summary.exit_code == 70
    counts = store.counts(db, bid(batch))
    assert counts["submitting"] == 1 and counts["queued"] == N - 1
    assert summary.counts == {"submitting": 1, "queued": N - 1}


async def test_a_key_ending_in_a_carriage_return_exits_70_in_one_line(tmp_path: Path) -> None:
    """A key file with Windows line endings, loaded the way examples/crontab loads it.
    (Another check may refuse such a key up front with exit 2; either way, never 0.)"""
    async with Simulator(tiny_sim_config(time_scale=0.01, rate=(20, 0.5))) as sim:
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(2), tmp_path / "out")
        env = cron_env(tmp_path, sim.base_url, RUNBASE_API_KEY=KEY + "\r")
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s")
        trail = ("--summary-file", str(tmp_path / "s.json"), "--log-file", str(tmp_path / "l"))
        code, _, stderr = await finish(await start(*args, *trail, env=env, cwd=tmp_path))
        assert code in (2, 70), stderr
        assert "Traceback" not in stderr and "was never retrieved" not in stderr
        summary: dict[str, Any] = json.loads((tmp_path / "s.json").read_text())
        assert summary["exit_code"] == code
        assert sim.stats()["runs_created"] == 0
        if code == 70:
            assert [ln for ln in stderr.splitlines() if "internal error" in ln] != []
            assert store.counts(db, bid(batch))["queued"] >= 1

        # -v shows the traceback on the terminal
        if code == 70:
            verbose = ("-v", *args)
            code, _, stderr = await finish(await start(*verbose, env=env, cwd=tmp_path))
            assert code == 70 and "Traceback" in stderr

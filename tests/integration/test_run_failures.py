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
from tests.support.engine import KEY, bid, make_batch, prompts
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

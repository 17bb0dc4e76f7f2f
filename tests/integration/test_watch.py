"""The unattended observers one by one: JSON-lines log, summary file, metrics, notifier."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchgen.errors import Problem, UsageError
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.observe.files import JsonLog, SummaryFile
from batchgen.observe.metrics import MetricsFile
from batchgen.observe.notify import Notifier
from batchgen.observe.watch import build_observers
from tests.support.observe import parse_prom, value

KEY = "sk-live-abcdef0123456789"
T0 = 1_764_000_000.0  # 2025-11-24T16:00:00Z


def summary(
    *, batch: str = "nightly-2025-11-24", code: int = 0, counts: dict[str, int] | None = None
) -> RunSummary:
    return RunSummary(
        batch=batch,
        exit_code=code,
        reason="done" if code == 0 else "interrupted (--max-runtime)",
        counts={"succeeded": 3} if counts is None else counts,
        in_doubt=1,
        requests={"POST /api/v1/runs": {"201": 3}, "GET /api/v1/runs/{id}": {"200": 7, "500": 1}},
        spend_micro_usd=1_230_000,
        wall_s=12.5,
        out_dir="/srv/out/nightly-2025-11-24",
        started_at=T0,
        finished_at=T0 + 12.5,
        failures=[],
    )


# ------------------------------------------------------------------ a strict parser
# Written here, independent of batchgen.observe.metrics.parse, to the text format 0.0.4 rules.


# ------------------------------------------------------------------ log


def test_the_log_has_one_line_per_event_visible_at_once_and_no_key(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "run.jsonl"  # the folder is created
    obs = JsonLog(path)
    obs.transition(TransitionEvent(T0, "b1", "k" * 64, 7, "queued", "submitting"))
    # tail -f: the line is in the file before anything is closed
    first = json.loads(path.read_text().splitlines()[-1])
    assert first["event"] == "transition" and first["from"] == "queued"
    assert first["to"] == "submitting" and first["job_idx"] == 7 and first["batch"] == "b1"
    assert first["ts"] == "2025-11-24T16:00:00.000+00:00"
    obs.request(RequestEvent(T0 + 1, "POST", "POST /api/v1/runs", 201, None, 0.25))
    obs.transition(
        TransitionEvent(T0 + 2, "b1", "k" * 64, 7, "running", "failed", "r-1", f"echo {KEY}")
    )
    obs.request(RequestEvent(T0 + 3, "GET", "GET /api/v1/runs/{id}", None, "network", 5.0))
    obs.finished(summary(batch="b1"))
    obs.transition(TransitionEvent(T0 + 9, "b1", "k", 1, "queued", "submitting"))  # after: no-op

    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["event"] for x in lines] == [
        "transition", "request", "transition", "request", "finished"
    ]  # fmt: skip
    post = lines[1]
    assert post["route"] == "POST /api/v1/runs" and post["status"] == 201
    assert post["elapsed_s"] == 0.25 and post["batch"] == "b1" and post["method"] == "POST"
    assert lines[2]["run_id"] == "r-1" and lines[2]["detail"] == "echo [redacted]"
    assert lines[3]["status"] is None and lines[3]["code"] == "network"
    assert lines[4]["exit_code"] == 0 and lines[4]["counts"] == {"succeeded": 3}
    assert KEY not in path.read_text()


def test_two_writers_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    a, b = JsonLog(path), JsonLog(path)
    for i in range(200):
        (a if i % 2 else b).transition(
            TransitionEvent(T0, "b" * 3000, f"{i:064d}", i, "queued", "submitting")
        )
    lines = path.read_text().splitlines()
    assert sorted(json.loads(x)["job_idx"] for x in lines) == list(range(200))


def test_a_log_that_cannot_be_opened_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="--log-file"):
        JsonLog(tmp_path / "file" / "run.jsonl")
    with pytest.raises(UsageError, match="is a folder"):
        JsonLog(tmp_path)


# ------------------------------------------------------------------ summary


def test_the_summary_file_is_the_summary_json(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old")
    SummaryFile(path).finished(summary())
    assert json.loads(path.read_text()) == summary().to_json()
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temp file left


# ------------------------------------------------------------------ metrics


def test_metrics_parse_and_hold_the_summary_numbers(tmp_path: Path) -> None:
    path = tmp_path / "batchgen.prom"
    MetricsFile(path).finished(summary(counts={"succeeded": 3, "failed": 1}))
    fams = parse_prom(path.read_text())
    b = "nightly-2025-11-24"
    assert value(fams, "batchgen_jobs", batch=b, state="succeeded") == 3
    assert value(fams, "batchgen_jobs", batch=b, state="failed") == 1
    assert value(fams, "batchgen_jobs", batch=b, state="queued") == 0  # every state, 0 too
    assert len(fams["batchgen_jobs"]) == 8
    assert value(fams, "batchgen_spend_usd", batch=b) == 1.23
    assert value(fams, "batchgen_requests_total", route="GET /api/v1/runs/{id}", status="500") == 1
    assert value(fams, "batchgen_requests_total", route="POST /api/v1/runs", status="201") == 3
    assert value(fams, "batchgen_last_success_timestamp_seconds", batch=b) == T0 + 12.5
    assert value(fams, "batchgen_run_duration_seconds", batch=b) == 12.5
    assert value(fams, "batchgen_exit_code", batch=b) == 0
    assert value(fams, "batchgen_in_doubt_jobs", batch=b) == 1
    assert "# TYPE batchgen_requests_total counter" in path.read_text()


def test_label_values_are_escaped(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    odd = 'a "quoted" back\\slash\nnewline'
    MetricsFile(path).finished(summary(batch=odd))
    fams = parse_prom(path.read_text())
    assert value(fams, "batchgen_exit_code", batch=odd) == 0


def test_the_last_success_survives_failed_runs_and_new_batch_names(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    metrics = MetricsFile(path)
    metrics.finished(summary(batch="nightly-1"))  # success at T0 + 12.5
    late = summary(batch="nightly-2", code=75)
    late.finished_at = T0 + 86_400
    metrics.finished(late)
    fams = parse_prom(path.read_text())
    # tonight's batch has not succeeded; last night's success is still there
    assert value(fams, "batchgen_last_success_timestamp_seconds", batch="nightly-1") == T0 + 12.5
    assert [lab for lab, _ in fams["batchgen_last_success_timestamp_seconds"]] == [
        {"batch": "nightly-1"}
    ]
    assert value(fams, "batchgen_exit_code", batch="nightly-2") == 75

    done = summary(batch="nightly-2")
    done.finished_at = T0 + 90_000
    metrics.finished(done)
    fams = parse_prom(path.read_text())
    assert value(fams, "batchgen_last_success_timestamp_seconds", batch="nightly-2") == T0 + 90_000
    older = summary(batch="nightly-3", code=1)
    metrics.finished(older)
    fams = parse_prom(path.read_text())
    # this batch never succeeded: only the newest success of another batch is kept
    assert {lab["batch"] for lab, _ in fams["batchgen_last_success_timestamp_seconds"]} == {
        "nightly-2"
    }


def test_a_run_that_never_reached_its_batch_keeps_the_previous_counts(tmp_path: Path) -> None:
    path = tmp_path / "m.prom"
    MetricsFile(path).finished(summary(counts={"succeeded": 3, "queued": 2}))
    locked = summary(code=75, counts={})
    locked.requests = {}
    locked.spend_micro_usd = 0
    MetricsFile(path).finished(locked)
    fams = parse_prom(path.read_text())
    assert value(fams, "batchgen_jobs", state="queued") == 2
    assert value(fams, "batchgen_spend_usd") == 1.23
    assert value(fams, "batchgen_exit_code") == 75
    assert "batchgen_requests_total" not in fams


# ------------------------------------------------------------------ notifier

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def receiver(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", handler)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/hook"))
    finally:
        await server.close()


async def test_the_notification_arrives_with_the_numbers_and_no_key() -> None:
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        assert request.headers["Content-Type"].startswith("application/json")
        return web.Response(status=204)

    async with receiver(hook) as url:
        obs = Notifier(url)
        s = summary()
        s.reason = f"account: 401 {KEY} rejected"
        obs.finished(s)
        await obs.aclose()
    assert obs.outcome == "sent" and len(got) == 1
    body = got[0]
    assert body["batch"] == "nightly-2025-11-24" and body["exit_code"] == 0
    assert body["counts"] == {"succeeded": 3} and body["spend_usd"] == 1.23
    assert body["out_dir"] == "/srv/out/nightly-2025-11-24" and body["wall_s"] == 12.5
    assert "3/3 succeeded" in body["text"]
    assert KEY not in json.dumps(body) and "[redacted]" in body["reason"]


async def test_a_receiver_failing_at_first_gets_it_on_a_later_try() -> None:
    calls: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        calls.append(1)
        return web.Response(status=503 if len(calls) < 3 else 200)

    async with receiver(hook) as url:
        obs = Notifier(url, backoff_s=0.01)
        obs.finished(summary())
        await obs.aclose()
    assert len(calls) == 3 and obs.outcome == "sent"


async def test_a_refusing_receiver_is_not_asked_again() -> None:
    calls: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(1)
        return web.Response(status=400)

    async with receiver(hook) as url:
        obs = Notifier(url, backoff_s=0.01)
        obs.finished(summary())
        await obs.aclose()
    assert calls == [1] and obs.outcome == "answered 400"


async def test_a_receiver_that_never_answers_does_not_hold_the_exit() -> None:
    seen = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        seen.set()
        await asyncio.sleep(3600)
        return web.Response()

    async with receiver(hook) as url:
        obs = Notifier(url, total_s=0.6, backoff_s=0.01)
        obs.finished(summary())
        await asyncio.wait_for(obs.aclose(), 5)  # returns, does not raise
    assert seen.is_set() and obs.outcome is not None and obs.outcome != "sent"


async def test_nobody_listening_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def hook(request: web.Request) -> web.Response:
        return web.Response()

    async with receiver(hook) as url:
        pass  # closed: the port now refuses
    obs = Notifier(url, backoff_s=0.01)
    obs.finished(summary())
    await obs.aclose()
    assert obs.outcome is not None and "Connect" in obs.outcome
    assert "not delivered" in caplog.text and "/hook" not in caplog.text


def test_build_observers_checks_its_options(tmp_path: Path) -> None:
    assert (
        build_observers(log_file=None, summary_file=None, metrics_file=None, notify_url=None) == []
    )
    obs = build_observers(
        log_file=tmp_path / "l.jsonl",
        summary_file=tmp_path / "s.json",
        metrics_file=tmp_path / "m.prom",
        notify_url="http://127.0.0.1:9/hook",
    )
    assert [type(o).__name__ for o in obs] == ["JsonLog", "SummaryFile", "MetricsFile", "Notifier"]
    for bad in ("ftp://example.com/x", "hooks.example.com/x", "http://"):
        with pytest.raises(UsageError, match="--notify-url"):
            build_observers(log_file=None, summary_file=None, metrics_file=None, notify_url=bad)


def test_build_observers_can_collect_problems_and_build_the_rest(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    problems: list[Problem] = []
    obs = build_observers(
        log_file=tmp_path / "file" / "run.jsonl",  # its folder is a file
        summary_file=tmp_path / "s.json",
        metrics_file=tmp_path / "m.prom",
        notify_url="hooks.example.com/x",
        problems=problems,
    )
    assert [type(o).__name__ for o in obs] == ["SummaryFile", "MetricsFile"]
    assert [p.message.split()[0] for p in problems] == ["--log-file", "--notify-url"]

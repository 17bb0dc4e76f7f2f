"""Every way an unattended run can end still leaves its trail: the summary file, the
metrics and the notification say the exit code and why, with the right numbers.

The real command, as cron runs it (see test_unattended.py), against the simulator:
SIGTERM while waiting for the lock, while running and while notifying; failed jobs
(1), the account (3), the budget (4), a typo in an option (2); answers lost in doubt;
and --max-runtime counting the wait for the lock.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from batchgen.run.lock import read_holder
from batchgen.sim import Simulator
from batchgen.store import jobs as store
from tests.support.engine import bid, make_batch, prompts
from tests.support.observe import read_trail, trail, value
from tests.support.processes import (
    ANSI,
    API_ROUTES,
    KEY,
    assert_no_key,
    cron_env,
    finish,
    receiver,
    sim_config,
    start,
)
from tests.support.waiting import until


async def test_sigterm_while_waiting_for_the_lock_exits_75_at_once_and_reports(
    tmp_path: Path,
) -> None:
    n = 4
    # polls held (a sim knob): the first run keeps the database until released
    sim = Simulator(sim_config(time_scale=0.01, rate=(20, 0.5), hold_polls=True))
    async with sim, receiver([]) as (url, got):
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out", name="nightly-a")
        env = cron_env(tmp_path, sim.base_url)
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s")
        first = await start(*args, env=env, cwd=tmp_path)
        await until(lambda: (read_holder(db_path) or {}).get("pid") == first.pid)
        await until(lambda: sim.stats()["runs_created"] == n)

        waiter = await start(
            *args, "--wait-lock", "600", *trail(tmp_path / "w"), "--notify-url", url,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert waiter.stderr is not None
        line = b""
        while b"waiting up to 600 s" not in line:
            line = await asyncio.wait_for(waiter.stderr.readline(), 30)
            assert line, "the waiter ended without waiting"
        sent = time.monotonic()
        waiter.send_signal(signal.SIGTERM)
        code, _, stderr = await finish(waiter, 30)
        assert time.monotonic() - sent < 10  # not the 600 s it was ready to wait
        assert code == 75, stderr[-2000:]
        assert "stopped while waiting" in stderr and f"pid {first.pid}" in stderr
        assert first.returncode is None  # the holder was not disturbed

        summary, fams = read_trail(tmp_path / "w")
        assert summary["exit_code"] == 75 and "stopped while waiting" in str(summary["reason"])
        assert summary["requests"] == {} and summary["batch"] == "nightly-a"
        assert value(fams, "batchgen_exit_code", batch="nightly-a") == 75
        log = (tmp_path / "w" / "run.jsonl").read_text().splitlines()
        assert [json.loads(x)["event"] for x in log] == ["finished"]  # it did nothing else
        assert [(x["exit_code"], x["resumable"]) for x in got] == [(75, True)]

        sim.config.hold_polls = False
        assert (await finish(first))[0] == 0
        assert sim.stats()["runs_created"] == n  # the waiter sent nothing
    assert store.counts(db, bid(batch))["succeeded"] == n


async def test_sigterm_during_a_run_records_what_is_in_flight_and_notifies(
    tmp_path: Path,
) -> None:
    n = 8
    sim = Simulator(sim_config(time_scale=0.01, rate=(20, 0.5), hold_polls=True))
    async with sim, receiver([]) as (url, got):
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out", name="nightly-b")
        env = cron_env(tmp_path, sim.base_url)
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s")
        proc = await start(
            *args, "--concurrency", "3", *trail(tmp_path), "--notify-url", url,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        await until(lambda: sim.stats()["runs_created"] == 3)
        proc.send_signal(signal.SIGTERM)
        code, stdout, stderr = await finish(proc, 60)
        assert code == 75, stderr[-2000:]
        assert ANSI not in stderr

        counts = store.counts(db, bid(batch))
        assert counts["running"] == 3 and counts["queued"] == n - 3
        assert counts["submitting"] == 0  # nothing left half-sent
        summary, fams = read_trail(tmp_path)
        assert summary["exit_code"] == 75 and summary["reason"] == "interrupted (SIGTERM)"
        assert summary["counts"] == {"running": 3, "queued": n - 3}
        spend = store.spent_micro_usd(db, bid(batch))
        assert summary["spend_micro_usd"] == spend == sim.stats()["charged_micro_usd"] > 0
        assert value(fams, "batchgen_jobs", state="running") == 3
        assert value(fams, "batchgen_exit_code") == 75
        assert "batchgen_last_success_timestamp_seconds" not in fams
        lines = [json.loads(x) for x in (tmp_path / "run.jsonl").read_text().splitlines()]
        assert lines[-1]["event"] == "finished" and lines[-1]["exit_code"] == 75
        assert len(got) == 1 and got[0]["exit_code"] == 75 and got[0]["resumable"] is True
        assert got[0]["counts"] == summary["counts"] and got[0]["spend_usd"] == spend / 1e6

        sim.config.hold_polls = False
        code, _, stderr = await finish(await start(*args, env=env, cwd=tmp_path))
        st = sim.stats()
    assert code == 0, stderr[-2000:]
    assert st["runs_created"] == n  # the three paid runs were not paid again
    assert KEY not in stdout + stderr + json.dumps(got)
    assert_no_key(tmp_path / "run.jsonl", tmp_path / "summary.json", tmp_path / "batchgen.prom")


async def test_failed_jobs_exit_1_with_each_failure_and_its_reason(tmp_path: Path) -> None:
    n = 3
    async with Simulator(sim_config(time_scale=0.01, rate=(20, 0.5), fail_rate=1.0)) as sim:
        db_path = tmp_path / "state.db"
        db, batch = make_batch(
            db_path, prompts(n), tmp_path / "out", name="nightly-c", settings={"max_attempts": 1}
        )
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s")
        code, _, stderr = await finish(
            await start(*args, *trail(tmp_path), env=cron_env(tmp_path, sim.base_url), cwd=tmp_path)
        )
        st = sim.stats()
    assert code == 1, stderr[-2000:]
    summary, fams = read_trail(tmp_path)
    assert summary["exit_code"] == 1 and summary["counts"] == {"failed": n}
    failures = summary["failures"]
    assert isinstance(failures, list)
    assert sorted(f["idx"] for f in failures) == list(range(n))
    assert all(f["error"] == "generation failed" for f in failures)
    assert all(f["code"] == "generation_failed" for f in failures)
    assert summary["spend_micro_usd"] == 0 == st["charged_micro_usd"] - st["refunded_micro_usd"]
    assert value(fams, "batchgen_jobs", state="failed") == n
    assert value(fams, "batchgen_exit_code") == 1
    lines = [json.loads(x) for x in (tmp_path / "run.jsonl").read_text().splitlines()]
    assert sorted(x["job_idx"] for x in lines if x.get("to") == "failed") == list(range(n))
    assert all(x["detail"] for x in lines if x.get("to") == "failed")
    assert store.counts(db, bid(batch))["failed"] == n


async def test_the_account_and_the_budget_stop_with_3_and_4_and_say_so(tmp_path: Path) -> None:
    jobs = prompts(4, resolution="720p", duration="5")  # USD 0.242 each
    for name, sim_kw, extra, code, why in (
        ("acct", {"balance_usd": 0.5}, (), 3, "insufficient_balance"),
        ("budget", {}, ("--budget-usd", "0.3"), 4, "budget"),
    ):
        folder = tmp_path / name
        async with Simulator(sim_config(time_scale=0.01, rate=(20, 0.5), **sim_kw)) as sim:
            db_path = folder / "state.db"
            db, batch = make_batch(db_path, jobs, folder / "out", name=f"nightly-{name}")
            args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s", *extra)
            env = cron_env(tmp_path, sim.base_url)
            got_code, _, stderr = await finish(
                await start(*args, *trail(folder), env=env, cwd=folder)
            )
            st = sim.stats()
        assert got_code == code, stderr[-2000:]
        summary, fams = read_trail(folder)
        assert summary["exit_code"] == code and why in str(summary["reason"]), summary["reason"]
        counts = store.counts(db, bid(batch))
        paid = st["runs_created"]
        assert 0 < paid < len(jobs) and counts["succeeded"] == paid  # the paid ones finished
        assert summary["spend_micro_usd"] == paid * 242_000 == st["charged_micro_usd"]
        assert value(fams, "batchgen_exit_code") == code
        assert value(fams, "batchgen_jobs", state="succeeded") == paid
        assert value(fams, "batchgen_spend_usd") == paid * 0.242


async def test_a_typo_in_an_option_is_exit_2_and_still_reported(tmp_path: Path) -> None:
    async with receiver([]) as (url, got):
        env = cron_env(tmp_path, "http://127.0.0.1:9")
        args = (
            "resume", "nightly-d", "--db", str(tmp_path / "state.db"), *trail(tmp_path),
            "--notify-url", url.replace("http://", "htp://"), "--rate", "20/10x",
        )  # fmt: skip
        code, _, stderr = await finish(await start(*args, env=env, cwd=tmp_path), 30)
    assert code == 2 and "--notify-url" in stderr and "http://" in stderr
    summary, fams = read_trail(tmp_path)
    assert summary["exit_code"] == 2 and "--notify-url" in str(summary["reason"])
    assert "--rate '20/10x': expected REQUESTS/SECONDS" in str(summary["reason"])  # both named
    assert value(fams, "batchgen_exit_code") == 2  # monitoring sees the broken cron line
    assert got == []  # nothing sent anywhere
    assert not (tmp_path / "state.db").exists()


async def test_max_runtime_counts_the_wait_for_the_lock(tmp_path: Path) -> None:
    sim = Simulator(sim_config(time_scale=0.01, rate=(20, 0.5), hold_polls=True))
    async with sim:
        db_path = tmp_path / "state.db"
        make_batch(db_path, prompts(2), tmp_path / "a", name="last-night")
        db, tonight = make_batch(db_path, prompts(3), tmp_path / "b", name="tonight")
        env = cron_env(tmp_path, sim.base_url)
        common = ("--db", str(db_path), "--rate", "20/0.5s")
        first = await start("resume", "last-night", *common, env=env, cwd=tmp_path)
        await until(lambda: sim.stats()["runs_created"] == 2)
        waiter = await start(
            "resume", "tonight", *common, "--wait-lock", "60", "--max-runtime", "0.5",
            *trail(tmp_path), env=env, cwd=tmp_path,
        )  # fmt: skip
        assert waiter.stderr is not None
        line = b""
        while b"waiting up to 60 s" not in line:
            line = await asyncio.wait_for(waiter.stderr.readline(), 30)
            assert line, "the waiter ended without waiting"
        await asyncio.sleep(1.0)  # its 0.5 s are over while it still waits
        sim.config.hold_polls = False
        assert (await finish(first))[0] == 0
        code, _, stderr = await finish(waiter)
        st = sim.stats()
    assert code == 75, stderr[-2000:]
    summary, _ = read_trail(tmp_path)
    assert summary["reason"] == "max runtime reached" and summary["requests"] == {}
    assert store.counts(db, bid(tonight))["queued"] == 3  # out of time: it sent nothing
    assert st["runs_created"] == 2


async def test_posts_lost_in_doubt_are_counted_in_every_file_and_paid_once(
    tmp_path: Path,
) -> None:
    n = 8
    config = sim_config(time_scale=0.01, rate=(20, 0.5), drop_rate=0.25, seed=5)
    async with Simulator(config) as sim, receiver([]) as (url, got):
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out", name="nightly-e")
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s")
        proc = await start(
            *args, *trail(tmp_path), "--notify-url", url,
            env=cron_env(tmp_path, sim.base_url), cwd=tmp_path,
        )  # fmt: skip
        code, _, stderr = await finish(proc)
        st = sim.stats()
    assert code == 0, stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "run.jsonl").read_text().splitlines()]
    doubted = {x["job_idx"] for x in lines if x.get("to") == "in_doubt"}
    assert st["dropped_after_create"] > 0 and doubted  # the seed does drop answers
    summary, fams = read_trail(tmp_path)
    assert summary["in_doubt"] == len(doubted)
    assert value(fams, "batchgen_in_doubt_jobs") == len(doubted)
    assert got[0]["in_doubt"] == len(doubted)
    # a lost answer is a request without status: "network" in the log, summary, metrics
    lost = sum(1 for x in lines if x["event"] == "request" and x["status"] is None)
    requests = summary["requests"]
    assert isinstance(requests, dict)
    assert lost == sum(by.get("network", 0) for by in requests.values()) > 0
    assert lost == sum(
        v for lab, v in fams["batchgen_requests_total"] if lab["status"] == "network"
    )
    assert lost == sum(st["requests"][r].get("dropped", 0) for r in API_ROUTES)  # the sim's
    assert st["runs_created"] == n  # resent with the same idempotency key: paid once
    assert summary["counts"] == {"succeeded": n}
    assert store.counts(db, bid(batch))["succeeded"] == n


async def test_sigterm_while_notifying_keeps_the_run_exit_code(tmp_path: Path) -> None:
    arrived = asyncio.Event()

    async def slow_hook(request: web.Request) -> web.Response:
        await request.read()
        arrived.set()
        await asyncio.sleep(2.0)  # a slow receiver: the process is still sending
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", slow_hook)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with Simulator(sim_config(time_scale=0.01, rate=(20, 0.5))) as sim:
            db_path = tmp_path / "state.db"
            _, batch = make_batch(db_path, prompts(2), tmp_path / "out", name="nightly-f")
            proc = await start(
                "resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s",
                *trail(tmp_path), "--notify-url", str(server.make_url("/hook")),
                env=cron_env(tmp_path, sim.base_url), cwd=tmp_path,
            )  # fmt: skip
            await asyncio.wait_for(arrived.wait(), 60)
            proc.send_signal(signal.SIGTERM)
            code, _, stderr = await finish(proc)
    finally:
        await server.close()
    assert code == 0, stderr[-2000:]  # not 143: the run had succeeded
    assert "the run is over" in stderr
    summary, _ = read_trail(tmp_path)
    assert summary["exit_code"] == 0 and summary["counts"] == {"succeeded": 2}

"""The client and the limiter against the real simulator over loopback.

The simulator counts what it receives (``max_in_window``, ``rate_limited``): these
tests prove the limiter's guarantee from the server's side, not from our own log.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiolimiter
import pytest

from batchgen.errors import (
    AuthError,
    Forbidden,
    InvalidRequest,
    PaymentRequired,
    RunbaseError,
    RunNotFound,
    ServerError,
    TransportError,
    UsageExceeded,
)
from batchgen.runbase.client import ROUTE_CREATE, ROUTE_GET, RunbaseClient
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from tests.support.runs import Recorder

MODEL = "bytedance/seedance-1-pro"
INPUT = {
    "prompt": "a red kite over a beach",
    "aspect_ratio": "16:9",
    "resolution": "720p",
    "duration": "5",
}
FAST = 0.002  # simulator time scale: a 40 s generation takes 0.08 s


def total_requests(stats: dict[str, Any], route: str | None = None) -> int:
    routes = stats["requests"]
    return sum(
        n for r, by_status in routes.items() if route in (None, r) for n in by_status.values()
    )


def status_count(stats: dict[str, Any], route: str, status: int) -> int:
    by_status = stats["requests"].get(route, {})
    return int(by_status.get(str(status), 0))


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimConfig(rate=(10, 1.0), time_scale=FAST, seed=1, tiny_videos=True)) as s:
        yield s


def client_for(sim: Simulator, limiter: RequestLimiter, **kw: Any) -> RunbaseClient:
    return RunbaseClient(sim.base_url, DEFAULT_KEY, limiter=limiter, timeout_s=5.0, **kw)


# ---------------------------------------------------------------- the rate limit


async def test_sim_never_sees_more_than_the_limit_and_the_budget_is_used(sim):
    """Rate-limit proof: 30 callers hammer one limiter (10 per 1 s) for 3 s."""
    limiter = RequestLimiter(10, 1.0)
    async with client_for(sim, limiter) as client:
        run_ids: list[str] = []
        start = time.monotonic()

        async def worker(i: int) -> None:
            n = 0
            while True:
                n += 1
                if i % 3 == 0 or not run_ids:
                    run = await client.create_run(MODEL, INPUT, idempotency_key=f"w{i}-{n}")
                    run_ids.append(run.id)
                else:
                    await client.get_run(run_ids[(i + n) % len(run_ids)], priority=i % 3)

        workers = [asyncio.ensure_future(worker(i)) for i in range(30)]
        await asyncio.sleep(3.0)
        for w in workers:
            w.cancel()
        results = await asyncio.gather(*workers, return_exceptions=True)
        elapsed = time.monotonic() - start
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    stats = sim.stats()
    sent = total_requests(stats, ROUTE_CREATE) + total_requests(stats, ROUTE_GET)
    print(
        f"sim 10/1s, 3 s: max_in_window {stats['max_in_window']}, rate_limited "
        f"{stats['rate_limited']}, {sent} requests in {elapsed:.2f} s "
        f"({sent / (10 * elapsed / 1.0):.0%} of the allowed rate)"
    )
    assert stats["max_in_window"] <= 10
    assert stats["rate_limited"] == 0
    assert sent >= 0.9 * 30


async def test_aiolimiter_alone_lets_a_double_first_window_through(sim):
    """Why the limiter exists: AsyncLimiter(10, 1) starts full and drains, ~19 in 1 s."""
    naive = aiolimiter.AsyncLimiter(10, 1.0)
    headers = {"Authorization": f"Bearer {DEFAULT_KEY}"}
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int:
            async with (
                naive,
                session.post(
                    f"{sim.base_url}/api/v1/runs",
                    json={"model": MODEL, "input": INPUT},
                    headers={**headers, "Idempotency-Key": f"naive-{i}"},
                ) as resp,
            ):
                await resp.read()
                return resp.status

        start = time.monotonic()
        tasks = [asyncio.ensure_future(one(i)) for i in range(30)]
        await asyncio.sleep(0.95 - (time.monotonic() - start))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stats = sim.stats()
    assert stats["max_in_window"] > 10 or stats["rate_limited"] > 0


async def test_429_storm_is_absorbed_and_slows_the_limiter():
    """The client believes 20/1 s, the server allows 10/1 s: every call still succeeds."""
    async with Simulator(
        SimConfig(rate=(10, 1.0), time_scale=FAST, seed=2, tiny_videos=True)
    ) as sim:
        limiter = RequestLimiter(20, 1.0, margin_s=0.02)
        rec = Recorder()
        async with client_for(sim, limiter, observers=[rec]) as client:

            async def job(i: int) -> str:
                run = await client.create_run(MODEL, INPUT, idempotency_key=f"storm-{i}")
                again = await client.get_run(run.id)
                return again.id

            ids = await asyncio.gather(*(job(i) for i in range(25)))
        stats = sim.stats()
    assert len(set(ids)) == 25  # every call came back with its run, no error raised
    assert stats["rate_limited"] > 0
    assert stats["runs_created"] == 25  # the 429s created nothing
    assert limiter.stats().cuts >= 1
    assert limiter.limit < 20
    assert [e.status for e in rec.events].count(429) == stats["rate_limited"]
    assert sum(1 for e in rec.events if e.status == 200) == 50


# ---------------------------------------------------------------- idempotency and key


async def test_idempotency_key_is_sent_and_honoured(sim):
    async with client_for(sim, RequestLimiter(10, 1.0)) as client:
        first = await client.create_run(MODEL, INPUT, idempotency_key="job-1-attempt-1")
        again = await client.create_run(MODEL, INPUT, idempotency_key="job-1-attempt-1")
        other = await client.create_run(MODEL, INPUT, idempotency_key="job-1-attempt-2")
    stats = sim.stats()
    assert again.id == first.id != other.id
    assert stats["idempotent_replays"] == 1
    assert stats["runs_created"] == 2
    assert stats["charged_micro_usd"] == 2 * (first.cost_micro_usd or 0) > 0


async def test_a_run_goes_from_pending_to_succeeded_with_urls(sim):
    async with client_for(sim, RequestLimiter(10, 1.0)) as client:
        run = await client.create_run(MODEL, INPUT, idempotency_key="life")
        assert run.status in ("pending", "processing")
        assert run.model == MODEL and (run.cost_micro_usd or 0) > 0
        for _ in range(50):
            run = await client.get_run(run.id)
            if run.finished:
                break
            await asyncio.sleep(0.05)
    assert run.succeeded, run
    assert run.urls and all(u.startswith("http") for u in run.urls)
    assert run.created_at and run.completed_at


async def test_the_key_never_shows_in_errors_events_or_stats():
    async with Simulator(SimConfig(rate=(10, 1.0), time_scale=FAST, tiny_videos=True)) as sim:
        wrong = "sk-wrong-key-do-not-print-0000"
        rec = Recorder()
        client = RunbaseClient(
            sim.base_url, wrong, limiter=RequestLimiter(10, 1.0), observers=[rec]
        )
        async with client:
            with pytest.raises(AuthError) as info:
                await client.get_run("run_x")
        stats_text = json.dumps(sim.stats())
    for text in (str(info.value), repr(info.value), repr(client), repr(rec.events), stats_text):
        assert wrong not in text and DEFAULT_KEY not in text


# ---------------------------------------------------------------- every error code


async def expect(
    config: SimConfig,
    call: str,
    kind: type[RunbaseError],
    code: str | None,
    *,
    key: str = DEFAULT_KEY,
    input: dict[str, Any] | None = None,
    model: str = MODEL,
    before: int = 0,
) -> RunbaseError:
    async with (
        Simulator(config) as sim,
        RunbaseClient(sim.base_url, key, limiter=RequestLimiter(10, 1.0), timeout_s=5.0) as client,
    ):
        for i in range(before):
            await client.create_run(model, input or INPUT, idempotency_key=f"before-{i}")
        with pytest.raises(RunbaseError) as info:
            if call == "POST":
                await client.create_run(model, input or INPUT, idempotency_key="the-one")
            else:
                await client.get_run("run_doesnotexist")
    assert type(info.value) is kind, info.value
    if code is not None:
        assert info.value.code == code
    return info.value


def cfg(**kw: Any) -> SimConfig:
    kw.setdefault("rate", (10, 1.0))
    kw.setdefault("time_scale", FAST)
    kw.setdefault("tiny_videos", True)
    return SimConfig(**kw)


async def test_sim_401_is_auth_error():
    await expect(cfg(), "GET", AuthError, "invalid_api_key", key="sk-not-a-known-key")


async def test_sim_400_invalid_input_names_the_field():
    e = await expect(
        cfg(), "POST", InvalidRequest, "invalid_input", input={**INPUT, "duration": "7"}
    )
    assert "duration" in e.message


async def test_sim_400_model_not_found():
    await expect(cfg(), "POST", InvalidRequest, "model_not_found", model="acme/nope")


async def test_sim_404_run_not_found():
    await expect(cfg(), "GET", RunNotFound, "run_not_found")


async def test_sim_402_insufficient_balance():
    await expect(cfg(balance_usd=0.01), "POST", PaymentRequired, "insufficient_balance")


async def test_sim_403_spend_limit():
    e = await expect(
        cfg(spend_limit_usd=0.3), "POST", Forbidden, "api_key_spend_limit_exceeded", before=1
    )
    assert e.stops_submitting


async def test_sim_429_usage_exceeded_is_not_retried():
    e = await expect(cfg(usage_quota=1), "POST", UsageExceeded, "USAGE_EXCEEDED", before=1)
    assert e.stops_submitting and not e.retryable


async def test_sim_500_is_server_error():
    await expect(cfg(error_rate=1.0), "GET", ServerError, None)


async def test_sim_dropped_connection_is_transport_error_sent():
    e = await expect(cfg(drop_rate=1.0), "POST", TransportError, "network")
    assert isinstance(e, TransportError) and e.sent

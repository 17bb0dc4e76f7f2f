"""The window bound seen from the server side, over real loopback HTTP.

A tiny server records when each request *arrives*; the limiter records when it let
each one go. The difference between the two is the jitter the margin must absorb.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchgen.client import RunbaseClient
from batchgen.ratelimit import RequestLimiter
from tests.test_ratelimit import max_in_any_window


class Arrivals:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        await request.read()
        return web.json_response({"id": "run_1", "status": "processing"})


@pytest.fixture
async def arrivals() -> AsyncIterator[Arrivals]:
    state = Arrivals()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        state.url = str(server.make_url("")).rstrip("/")
        yield state


async def test_server_never_sees_more_than_the_limit_and_the_budget_is_used(arrivals, api_key):
    limiter = RequestLimiter(10, 1.0)  # margin 0.05 s, burst 2
    async with RunbaseClient(arrivals.url, api_key, limiter=limiter) as client:
        start = time.monotonic()
        deadline = start + 3.0

        async def worker(i: int) -> None:
            while True:
                if i % 2:
                    await client.get_run("run_1", priority=i % 3)
                else:
                    await client.create_run("m", {"prompt": "x"}, idempotency_key=f"k{i}")

        workers = [asyncio.ensure_future(worker(i)) for i in range(30)]
        await asyncio.sleep(deadline - time.monotonic())
        for w in workers:
            w.cancel()  # most are queued in the limiter: they must leave it cleanly
        await asyncio.gather(*workers, return_exceptions=True)
        assert limiter.waiting() == 0
    times = arrivals.times
    in_budget = sum(1 for t in times if t < start + 3.0)
    print(
        f"10/1s for 3 s: server max in any 1 s window {max_in_any_window(times, 1.0)}, "
        f"{in_budget} requests arrived in the first 3 s (allowed 30)"
    )
    assert max_in_any_window(times, 1.0) <= 10
    assert in_budget >= 0.9 * 30, in_budget
    assert limiter.utilisation(start, start + 3.0) >= 0.9


async def test_loopback_jitter_is_well_inside_the_margin(arrivals, api_key):
    """Measure grant-to-arrival delay under load (new and reused connections)."""
    limiter = RequestLimiter(200, 1.0, margin_s=0.0, burst=20)
    grants: list[float] = []

    original = limiter.acquire

    async def acquire(priority: int = 1) -> float:
        granted = await original(priority)
        grants.append(granted)
        return granted

    limiter.acquire = acquire  # type: ignore[method-assign]
    async with RunbaseClient(arrivals.url, api_key, limiter=limiter) as client:
        await asyncio.gather(*(client.get_run(f"run_{i}") for i in range(300)))
    assert len(grants) == len(arrivals.times) == 300
    # Pair the k-th grant with the k-th arrival: if every such pair is delayed by
    # between dmin and dmax, a server window of W holds only requests granted within
    # W + (dmax - dmin), so spread <= margin keeps the server's count within the limit.
    delays = [a - g for g, a in zip(sorted(grants), sorted(arrivals.times), strict=True)]
    spread = max(delays) - min(delays)
    print(
        f"loopback grant->arrival delay: min {min(delays) * 1e3:.2f} ms, "
        f"max {max(delays) * 1e3:.2f} ms, spread {spread * 1e3:.2f} ms"
    )
    assert spread < RequestLimiter(20, 10.0).margin_s

"""The jitter the limiter's margin must absorb, over real loopback HTTP.

A tiny server records when each request *arrives*; the limiter records when it let
each one go. If every grant reaches the server between dmin and dmax later, a server
window of W holds only requests granted within W + (dmax - dmin): the spread must stay
below the limiter's margin for the server never to count more than the limit.

Run: ``python -m bench.bench_ratelimit [--requests 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiohttp import web
from aiohttp.test_utils import TestServer

from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.ratelimit import RequestLimiter

KEY = "sk-bench-0123456789abcdef"


async def measure(n: int) -> list[float]:
    arrivals: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        await request.read()
        return web.json_response({"id": "run_1", "status": "processing"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    limiter = RequestLimiter(200, 1.0, margin_s=0.0, burst=20)
    grants: list[float] = []
    original = limiter.acquire

    async def acquire(priority: int = 1) -> float:
        granted = await original(priority)
        grants.append(granted)
        return granted

    limiter.acquire = acquire  # type: ignore[method-assign]
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        url = str(server.make_url("")).rstrip("/")
        async with RunbaseClient(url, KEY, limiter=limiter) as client:
            await asyncio.gather(*(client.get_run(f"run_{i}") for i in range(n)))
    return [a - g for g, a in zip(sorted(grants), sorted(arrivals), strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=300)
    args, _ = parser.parse_known_args()
    delays = asyncio.run(measure(args.requests))
    spread = max(delays) - min(delays)
    margin = RequestLimiter(20, 10.0).margin_s
    print(
        f"grant->arrival delay over {len(delays)} requests: min {min(delays) * 1e3:.2f} ms, "
        f"median {statistics.median(delays) * 1e3:.2f} ms, max {max(delays) * 1e3:.2f} ms"
    )
    print(
        f"spread {spread * 1e3:.1f} ms against the default margin {margin * 1e3:.0f} ms: "
        f"{'inside' if spread < margin else 'OUTSIDE'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The limiter's tests: virtual time for many sleepers, and counting requests in sliding
windows the way the API's limit counts them."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable, Sequence

from batchgen.runbase.ratelimit import RequestLimiter


def max_in_any_window(times: Sequence[float], window: float) -> int:
    """Most sends inside any half-open window [t, t + window)."""
    ts = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(ts):
        while ts[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


class ManualClock:
    """Virtual time for many concurrent sleepers: time moves only in ``drive``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def today(self):  # pragma: no cover - not used here
        raise NotImplementedError

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def step(self) -> bool:
        """Let everything runnable run, then jump to the next wake-up. False when idle."""
        await self.settle()
        while self._sleepers:
            when, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self.t = max(self.t, when)
            fut.set_result(None)
            await self.settle()
            return True
        return False

    async def drive(self, tasks: Sequence[asyncio.Task[object]], limit: int = 100_000) -> None:
        for _ in range(limit):
            if all(t.done() for t in tasks):
                return
            if not await self.step() and not all(t.done() for t in tasks):
                await self.settle()
        raise AssertionError("virtual time did not finish the tasks")


async def grant_times(
    limiter: RequestLimiter,
    clock: ManualClock,
    priorities: Sequence[int],
    *,
    between: Callable[[int], Awaitable[None]] | None = None,
) -> list[tuple[int, float, int]]:
    """Start one acquirer per priority at once; return (index, grant time, priority)."""
    out: list[tuple[int, float, int]] = []

    async def one(i: int, prio: int) -> None:
        if between is not None:
            await between(i)
        await limiter.acquire(prio)
        out.append((i, clock.monotonic(), prio))

    tasks = [asyncio.ensure_future(one(i, p)) for i, p in enumerate(priorities)]
    await clock.drive(tasks)
    return out

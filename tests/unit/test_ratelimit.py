"""RequestLimiter on virtual time: the window bound, priorities, AIMD, slack."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.clock import FakeClock
from batchgen.runbase.ratelimit import RequestLimiter
from tests.support.ratelimit import max_in_any_window


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


# ---------------------------------------------------------------- the window bound


async def test_first_window_holds_at_most_max_requests():
    clock = ManualClock()
    limiter = RequestLimiter(20, 10.0, clock=clock)
    start = clock.t
    grants = await grant_times(limiter, clock, [1] * 60)
    times = [t for _, t, _ in grants]
    # aiolimiter.AsyncLimiter(20, 10) would let ~39 through here
    assert sum(1 for t in times if t < start + 10.0) == 20
    assert max_in_any_window(times, 10.0) == 20
    # the margin widens the window we keep: 20 in any 10.15 s too
    assert max_in_any_window(times, 10.0 + limiter.margin_s) <= 20
    # and nothing is wasted: 60 requests take three windows, not more
    assert max(times) - start < 3 * (10.0 + limiter.margin_s)


async def test_requests_are_paced_not_bunched_at_the_window_edge():
    clock = ManualClock()
    limiter = RequestLimiter(20, 10.0, clock=clock, burst=5)
    grants = await grant_times(limiter, clock, [1] * 40)
    times = sorted(t for _, t, _ in grants)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    interval = 10.15 / 20
    assert times[4] == times[0]  # the burst
    # then one every window/limit; the burst's slots come back together a window
    # later, so the longest gap is the burst's worth of intervals
    assert sorted(gaps)[-3] == pytest.approx(interval)
    assert max(gaps) <= 5 * interval + 1e-6
    assert max_in_any_window(times, 1.0) <= 5 + 2


def test_margin_defaults_to_015_but_at_most_5_percent_of_the_window():
    assert RequestLimiter(20, 10.0).margin_s == pytest.approx(0.15)
    assert RequestLimiter(10, 1.0).margin_s == pytest.approx(0.05)
    assert RequestLimiter(20, 0.02).margin_s == pytest.approx(0.001)
    assert RequestLimiter(20, 0.02, margin_s=0.01).margin_s == 0.01


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_requests=st.integers(1, 25),
    window=st.floats(0.5, 20.0),
    arrivals=st.lists(
        st.tuples(st.floats(0.0, 40.0), st.integers(0, 2), st.booleans()), min_size=1, max_size=80
    ),
    burst=st.one_of(st.none(), st.integers(1, 30)),
)
def test_no_window_ever_holds_more_than_max(max_requests, window, arrivals, burst):
    """Whatever arrives when, with 429s sprinkled in, any window holds <= max_requests."""

    async def scenario() -> list[float]:
        clock = ManualClock()
        limiter = RequestLimiter(
            max_requests, window, clock=clock, burst=burst, rng=random.Random(1)
        )
        times: list[float] = []

        async def one(delay: float, prio: int, rejected: bool) -> None:
            await clock.sleep(delay)
            sent = await limiter.acquire(prio)
            times.append(sent)
            if rejected:
                limiter.penalize(None, sent_at=sent)
            else:
                limiter.on_success()

        tasks = [asyncio.ensure_future(one(*a)) for a in arrivals]
        await clock.drive(tasks)
        return times

    times = asyncio.run(scenario())
    assert len(times) == len(arrivals)
    assert max_in_any_window(times, window) <= max_requests


# ---------------------------------------------------------------- priorities


async def test_waiting_lower_priority_number_always_goes_first():
    clock = ManualClock()
    limiter = RequestLimiter(2, 1.0, clock=clock, burst=2)
    await limiter.acquire(1)
    await limiter.acquire(1)  # budget used: everyone below waits
    prios = [2, 1, 0, 2, 0, 1, 2]
    grants = await grant_times(limiter, clock, prios)
    assert [p for _, _, p in grants] == sorted(prios)
    # FIFO within one priority
    assert [i for i, _, p in grants if p == 2] == [0, 3, 6]
    assert [i for i, _, p in grants if p == 0] == [2, 4]


async def test_urgent_request_arriving_later_overtakes_the_queue():
    clock = ManualClock()
    limiter = RequestLimiter(4, 4.0, clock=clock, burst=1)

    async def arrive(i: int) -> None:
        if i == 9:  # the overdue poll shows up after the early polls queued
            await clock.sleep(0.01)

    prios = [2] * 9 + [0]
    grants = await grant_times(limiter, clock, prios, between=arrive)
    order = [i for i, _, _ in grants]
    assert order.index(9) <= 2  # the one in the slot ahead of it may already be granted


async def test_cancelled_waiter_does_not_block_the_queue():
    clock = ManualClock()
    limiter = RequestLimiter(1, 1.0, clock=clock)
    await limiter.acquire(1)
    head = asyncio.ensure_future(limiter.acquire(0))
    behind = asyncio.ensure_future(limiter.acquire(1))
    await clock.settle()
    assert limiter.waiting() == 2
    head.cancel()
    await clock.drive([behind])
    assert behind.done() and not behind.cancelled()
    assert limiter.waiting() == 0
    assert clock.t >= 1000.0 + 1.0


# ---------------------------------------------------------------- AIMD


async def test_penalize_pauses_a_window_and_halves_the_limit():
    clock = FakeClock(start=0.0)
    limiter = RequestLimiter(20, 10.0, clock=clock, rng=random.Random(3))
    sent = await limiter.acquire(1)
    pause = limiter.penalize(None, sent_at=sent)
    assert 10.0 <= pause <= 11.0
    assert limiter.limit == 10.0
    # the answers to requests sent before the cut are the same congestion event
    limiter.penalize(None, sent_at=sent)
    assert limiter.limit == 10.0
    assert limiter.stats().cuts == 1 and limiter.stats().penalties == 2
    assert not limiter.has_slack()
    granted = await limiter.acquire(0)
    assert granted >= pause


async def test_retry_after_replaces_the_default_pause():
    clock = FakeClock(start=0.0)
    limiter = RequestLimiter(20, 10.0, clock=clock)
    pause = limiter.penalize(2.0)
    assert pause == pytest.approx(2.0 + limiter.margin_s)
    granted = await limiter.acquire(1)
    assert granted == pytest.approx(2.0 + limiter.margin_s)


async def test_limit_recovers_additively_to_max_and_no_further():
    clock = FakeClock(start=0.0)
    limiter = RequestLimiter(20, 10.0, clock=clock)
    limiter.penalize(0.0)
    assert limiter.limit == 10.0
    seen = [limiter.limit]
    for _ in range(400):
        limiter.on_success()
        seen.append(limiter.limit)
    assert seen == sorted(seen)
    # roughly one more request per window's worth of successes: 10 -> 11 takes ~10
    assert seen[9] < 11.0 <= seen[12]
    assert seen[-1] == 20.0


async def test_limit_never_drops_below_min_requests():
    clock = FakeClock(start=0.0)
    limiter = RequestLimiter(20, 1.0, clock=clock)
    for _ in range(12):
        sent = await limiter.acquire(1)
        limiter.penalize(0.0, sent_at=sent)
    assert limiter.limit == 1.0
    assert limiter.stats().cuts == 12


async def test_slower_limit_is_obeyed_after_a_cut():
    clock = ManualClock()
    limiter = RequestLimiter(20, 1.0, clock=clock, rng=random.Random(0))
    limiter.penalize(0.0)  # limit 10, no pause
    grants = await grant_times(limiter, clock, [1] * 40)
    times = [t for _, t, _ in grants]
    assert max_in_any_window(times, 1.0) <= 10 + 1  # recovering by ~1 per window


# ---------------------------------------------------------------- slack and counters


async def test_has_slack_and_sent_in_window():
    clock = FakeClock(start=0.0)
    limiter = RequestLimiter(4, 10.0, clock=clock, burst=4)
    assert limiter.has_slack()
    assert limiter.has_slack(reserve=3)
    assert not limiter.has_slack(reserve=4)
    for _ in range(3):
        await limiter.acquire(2)
    assert limiter.sent_in_window() == 3
    assert limiter.has_slack()
    assert not limiter.has_slack(reserve=1)
    await limiter.acquire(2)
    assert not limiter.has_slack()
    clock.advance(10.0)
    assert limiter.sent_in_window() == 0
    assert not limiter.has_slack()  # our window is 10 s + margin
    clock.advance(limiter.margin_s)
    assert limiter.has_slack()


async def test_has_slack_is_false_while_someone_waits():
    clock = ManualClock()
    limiter = RequestLimiter(1, 1.0, clock=clock)
    await limiter.acquire(1)
    waiter = asyncio.ensure_future(limiter.acquire(1))
    await clock.settle()
    clock.t += 5.0  # the slot is free again, but the waiter has not taken it yet
    assert not limiter.has_slack()
    await clock.drive([waiter])


async def test_counters_and_utilisation():
    clock = ManualClock()
    limiter = RequestLimiter(10, 1.0, clock=clock, margin_s=0.0)
    start = clock.t
    await grant_times(limiter, clock, [1] * 50)
    end = clock.t
    stats = limiter.stats()
    assert stats.sent == 50
    assert stats.waited >= 40
    assert stats.wait_s > 0
    assert stats.max_requests == 10 and stats.window_s == 1.0
    # 50 requests at 10 per second, the last one at ~4.9 s: the budget was used fully
    assert limiter.utilisation(start, start + 4.0) == pytest.approx(1.0, abs=0.05)
    assert limiter.utilisation(start, end + 0.1) > 0.95
    assert "api" not in repr(limiter).lower()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        RequestLimiter(0, 10.0)
    with pytest.raises(ValueError):
        RequestLimiter(20, 0.0)
    with pytest.raises(ValueError):
        RequestLimiter(20, 10.0, decrease=1.0)

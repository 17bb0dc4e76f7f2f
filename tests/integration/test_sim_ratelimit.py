"""The per-key sliding window over loopback (behaviour 5 of issue 2).

The proof does not trust the server's own counter alone: every request is timed
on the client side. A request is admitted somewhere between its send and its
answer, so if the server never admits more than N in any W seconds, any N+1
admitted requests must span at least W from the earliest send to the latest answer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tests.support.simapi import ROUTE_CREATE, ROUTE_GET, Answer, Api, requests_to, running

N, W = 5, 0.5
LONG_W = 30.0  # for tests that never wait for the window: no machine is that slow
KEY_A = "sk-test-aaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbb"


@dataclass
class Timed:
    sent: float
    answered: float
    answer: Answer


async def timed(api: Api, run_id: str | None, key: str | None = None) -> Timed:
    sent = time.monotonic()
    if run_id is None:
        answer = await api.post({"prompt": "burst"}, key=key)
    else:
        answer = await api.get(run_id, key=key)
    return Timed(sent, time.monotonic(), answer)


def assert_never_more_than_n_in_a_window(results: list[Timed]) -> None:
    admitted = sorted((r for r in results if r.answer.status != 429), key=lambda r: r.sent)
    for i in range(len(admitted) - N):
        group = admitted[i : i + N + 1]
        span = max(r.answered for r in group) - min(r.sent for r in group)
        assert span >= W, f"{N + 1} requests admitted within {span:.3f} s"


async def test_bursts_never_get_more_than_n_through_in_any_window_and_429_after():
    async with running(rate=(N, W)) as (sim, api):
        first = await timed(api, None)
        run_id = first.answer.body["id"]
        results = [first]
        start = time.monotonic()
        while time.monotonic() - start < 4 * W:  # bursts of 12 at once, POST and GET mixed
            burst = [timed(api, None if i % 3 == 0 else run_id) for i in range(12)]
            results += await asyncio.gather(*burst)
            await asyncio.sleep(W / 4)
        stats = sim.stats()
    assert_never_more_than_n_in_a_window(results)
    limited = [r.answer for r in results if r.answer.status == 429]
    admitted = [r.answer for r in results if r.answer.status == 200]
    assert limited and len(admitted) >= 3 * N  # the window kept refilling (4N unloaded)
    for answer in limited:
        assert answer.body == {"error": {"message": "Rate limit exceeded", "code": "RATE_LIMITED"}}
    assert stats["max_in_window"] == N
    assert stats["rate_limited"] == len(limited)
    assert requests_to(stats, ROUTE_CREATE, 429) + requests_to(stats, ROUTE_GET, 429) == len(
        limited
    )


async def test_post_and_get_share_one_window_and_refused_requests_do_not_count():
    # Bounds taken from the client's clock only, so a loaded machine cannot fail it:
    # the first request was admitted after t0 and before t1 (its send and its answer).
    async with running(rate=(N, W)) as (sim, api):
        t0 = time.monotonic()
        run_id = (await api.post({"prompt": "x"})).body["id"]
        t1 = time.monotonic()
        gets = [await api.get(run_id) for _ in range(N - 1)]
        assert [g.status for g in gets] == [200] * (N - 1)
        post = await api.post({"prompt": "y"})
        assert (post.status, post.code) == (429, "RATE_LIMITED")
        # Knock all along while refused: the refusals must not push the window back.
        knocks = 0
        while time.monotonic() - t0 < W * 0.9:
            answer = await api.get(run_id)
            if time.monotonic() < t0 + W:  # answered before the window could free up
                assert answer.status == 429
                knocks += 1
            await asyncio.sleep(W / 20)
        await asyncio.sleep(max(0.0, t1 + W + 0.02 - time.monotonic()))
        again = await api.get(run_id)
        stats = sim.stats()
    assert knocks >= 3
    assert again.status == 200  # had the knocks counted, the window would be full still
    assert stats["rate_limited"] >= knocks + 1 and stats["max_in_window"] == N


async def test_each_key_has_its_own_window():
    async with running(keys=[KEY_A, KEY_B], rate=(N, LONG_W)) as (sim, api):
        answers_a = [await api.post({"prompt": "x"}, key=KEY_A) for _ in range(N + 1)]
        answers_b = [await api.post({"prompt": "x"}, key=KEY_B) for _ in range(N)]
        stats = sim.stats()
    assert [a.status for a in answers_a] == [200] * N + [429]
    assert [a.status for a in answers_b] == [200] * N
    assert [k["max_in_window"] for k in stats["keys"]] == [N, N]


async def test_unauthenticated_requests_are_not_rate_limited_against_a_key():
    async with running(rate=(N, LONG_W)) as (_sim, api):
        wrong = [await api.get("run_x", key="sk-wrong-0000000000000000") for _ in range(N + 3)]
        mine = [await api.post({"prompt": "x"}) for _ in range(N)]
    assert {a.status for a in wrong} == {401}
    assert [a.status for a in mine] == [200] * N

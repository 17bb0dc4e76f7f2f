"""Money and the run lifecycle over loopback (behaviours 4 and 6 of issue 2)."""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics

from tests.support.simapi import running
from tests.support.waiting import until


def took_s(body: dict[str, str]) -> float:
    start = dt.datetime.fromisoformat(body["createdAt"])
    return (dt.datetime.fromisoformat(body["completedAt"]) - start).total_seconds()


# ---------------------------------------------------------------- 4. money


async def test_the_price_follows_resolution_and_duration_and_is_charged_at_creation():
    prices = {("720p", "5"): 242_000, ("720p", "10"): 484_000,
              ("1080p", "5"): 484_000, ("1080p", "10"): 968_000}  # fmt: skip
    async with running(balance_usd=10.0) as (sim, api):
        for (res, dur), price in prices.items():
            answer = await api.post({"prompt": "x", "resolution": res, "duration": dur})
            assert answer.body["costUsd"] == price
        stats = sim.stats()
    total = sum(prices.values())
    assert stats["charged_micro_usd"] == total
    assert stats["balance_micro_usd"] == 10_000_000 - total


async def test_the_price_table_can_be_overridden_per_resolution_and_duration():
    async with running(prices_usd={"1080p/5": 0.6, "720p/10": 0.0}, fail_rate=1.0) as (sim, api):
        big = await api.post({"prompt": "x"})
        free = await api.post({"prompt": "x", "resolution": "720p", "duration": "10"})
        usual = await api.post({"prompt": "x", "resolution": "720p", "duration": "5"})
        charged = sim.stats()["charged_micro_usd"]
        await api.wait(big.body["id"])
        stats = sim.stats()
    assert [a.body["costUsd"] for a in (big, free, usual)] == [600_000, 0, 242_000]
    assert charged == 842_000 and stats["config"]["prices_usd"] == {"1080p/5": 0.6, "720p/10": 0.0}
    assert stats["refunded_micro_usd"] >= 600_000  # the overridden price is what is refunded


async def test_a_failed_run_is_refunded_in_full_exactly_once():
    async with running(fail_rate=1.0, balance_usd=5.0) as (sim, api):
        ids = [(await api.post({"prompt": f"p{i}"})).body["id"] for i in range(3)]
        now = sim.stats()  # charged at creation; a run that already failed is refunded
        assert now["charged_micro_usd"] == 3 * 484_000
        assert now["balance_micro_usd"] == 5_000_000 - 3 * 484_000 + now["refunded_micro_usd"]
        for run_id in ids:
            await api.wait(run_id)
            for _ in range(3):  # looking again refunds nothing more
                assert (await api.get(run_id)).body["status"] == "failed"
        stats = sim.stats()
    assert stats["runs_failed"] == 3 and stats["runs_succeeded"] == 0
    assert stats["refunded_micro_usd"] == stats["charged_micro_usd"] == 3 * 484_000
    assert stats["balance_micro_usd"] == 5_000_000


async def test_the_refund_happens_when_the_run_fails_even_if_nobody_looks():
    async with running(fail_rate=1.0, balance_usd=0.5) as (sim, api):
        first = await api.post({"prompt": "x"})
        refused = await api.post({"prompt": "y"})
        await until(lambda: sim.stats()["runs_failed"] == 1)  # the first run failed meanwhile
        second = await api.post({"prompt": "y"})
        stats = sim.stats()
    assert first.status == 200
    assert (refused.status, refused.code) == (402, "insufficient_balance")
    assert second.status == 200, second
    assert stats["refunded_micro_usd"] >= 484_000


async def test_insufficient_balance_is_402_and_charges_nothing():
    async with running(balance_usd=0.5) as (sim, api):
        ok = await api.post({"prompt": "x"})
        refused = await api.post({"prompt": "x"})
        cheaper = await api.post({"prompt": "x", "resolution": "720p"})
        stats = sim.stats()
    assert ok.status == 200 and cheaper.status == 402  # 16_000 left
    assert (refused.status, refused.code) == (402, "insufficient_balance")
    assert stats["runs_created"] == 1 and stats["balance_micro_usd"] == 16_000


async def test_spend_limit_is_403_once_the_key_would_pass_it():
    async with running(spend_limit_usd=1.0) as (sim, api):
        answers = [await api.post({"prompt": "x"}) for _ in range(3)]
        small = await api.post({"prompt": "x", "resolution": "720p", "duration": "5"})
        stats = sim.stats()
    assert [a.status for a in answers] == [200, 200, 403]
    assert answers[2].code == "api_key_spend_limit_exceeded"
    assert small.status == 403  # 968_000 spent + 242_000 passes 1_000_000
    assert stats["runs_created"] == 2


async def test_usage_quota_is_429_usage_exceeded():
    async with running(usage_quota=2) as (sim, api):
        answers = [await api.post({"prompt": "x"}) for _ in range(3)]
        replay = await api.post({"prompt": "x"}, idem="late")
        stats = sim.stats()
    assert [a.status for a in answers] == [200, 200, 429]
    assert answers[2].code == "USAGE_EXCEEDED" and answers[2].message
    assert replay.status == 429
    assert stats["runs_created"] == 2 and stats["rate_limited"] == 0


# ---------------------------------------------------------------- 6. lifecycle


async def test_the_status_goes_pending_processing_then_succeeded():
    order = ["pending", "processing", "succeeded"]
    async with running(time_scale=0.01, seed=7) as (_sim, api):
        created = [await api.post({"prompt": f"p{i}", "resolution": "720p"}) for i in range(5)]
        seen: dict[str, list[str]] = {a.body["id"]: [a.body["status"]] for a in created}
        while any(s[-1] != "succeeded" for s in seen.values()):
            for run_id, statuses in seen.items():
                status = (await api.get(run_id)).body["status"]
                if status != statuses[-1]:
                    statuses.append(status)
            await asyncio.sleep(0.005)
    for statuses in seen.values():
        assert statuses == sorted(statuses, key=order.index), statuses
        assert statuses[-2:] == ["processing", "succeeded"]
    assert any(s[0] == "pending" for s in seen.values())


async def test_times_are_seeded_and_grow_with_duration_and_resolution():
    kinds = [("720p", "5"), ("1080p", "5"), ("1080p", "10")]

    async def durations(seed: int) -> tuple[list[str], dict[tuple[str, str], list[float]]]:
        async with running(time_scale=0.01, seed=seed) as (_sim, api):
            ids = []
            for i in range(8):
                for res, dur in kinds:
                    answer = await api.post({"prompt": f"{i}", "resolution": res, "duration": dur})
                    ids.append((answer.body["id"], (res, dur)))
            out: dict[tuple[str, str], list[float]] = {k: [] for k in kinds}
            for run_id, kind in ids:
                out[kind].append(took_s((await api.wait(run_id)).body))
        return [i for i, _ in ids], out

    ids_a, first = await durations(seed=1)
    ids_b, again = await durations(seed=1)
    ids_c, other = await durations(seed=2)
    medians = {k: statistics.median(v) for k, v in first.items()}
    # 41.4 s for 5 s at 1080p plus a short queue, times 0.01
    assert 0.35 < medians[("1080p", "5")] < 0.6, medians
    assert medians[("720p", "5")] < medians[("1080p", "5")] < medians[("1080p", "10")]
    assert ids_a == ids_b != ids_c
    for kind in kinds:  # same seed, same draws (to the millisecond the API shows)
        for x, y in zip(first[kind], again[kind], strict=True):
            assert abs(x - y) <= 0.0025
    assert first != other


async def test_fail_rate_fails_about_that_fraction():
    async with running(fail_rate=0.5, seed=3) as (sim, api):
        ids = [(await api.post({"prompt": f"{i}"})).body["id"] for i in range(40)]
        finals = [(await api.wait(run_id)).body["status"] for run_id in ids]
        stats = sim.stats()
    failed = finals.count("failed")
    assert 10 <= failed <= 30
    assert stats["runs_failed"] == failed and stats["runs_succeeded"] == 40 - failed
    assert stats["refunded_micro_usd"] == failed * 484_000

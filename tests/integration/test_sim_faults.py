"""Faults on demand over loopback (behaviour 7 of issue 2): 500s, dropped connections
(before and after the run was created), slow answers, cut downloads, URLs that expire."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.support.simapi import ROUTE_CREATE, ROUTE_GET, requests_to, running


async def test_error_rate_answers_500_and_creates_nothing():
    async with running(error_rate=1.0) as (sim, api):
        post = await api.post({"prompt": "x"})
        get = await api.get("run_x")
        stats = sim.stats()
    assert post.status == get.status == 500
    assert post.code == "internal_error"
    assert stats["runs_created"] == 0 and stats["errors_injected"] == 2
    assert requests_to(stats, ROUTE_CREATE, 500) == requests_to(stats, ROUTE_GET, 500) == 1


async def test_error_rate_is_a_fraction():
    async with running(error_rate=0.3, seed=5) as (_sim, api):
        statuses = [(await api.get("run_x")).status for _ in range(100)]
    assert 15 <= statuses.count(500) <= 45
    assert statuses.count(500) + statuses.count(404) == 100


async def test_dropped_posts_some_before_some_after_the_run_was_created():
    n = 16
    async with running(drop_rate=1.0, seed=1) as (sim, api):
        for i in range(n):
            with pytest.raises(aiohttp.ClientError):
                await api.post({"prompt": "x"}, idem=f"job-{i}")
        stats = sim.stats()
        before, after = stats["dropped_before_create"], stats["dropped_after_create"]
        assert before + after == n and before > 0 and after > 0
        assert stats["runs_created"] == after  # the ambiguous case: created, charged, no answer
        assert stats["charged_micro_usd"] == after * 484_000
        assert requests_to(stats, ROUTE_CREATE, "dropped") == n
        sim.config.drop_rate = 0.0  # the network heals; the client resends with its keys
        for i in range(n):
            assert (await api.post({"prompt": "x"}, idem=f"job-{i}")).status == 200
        healed = sim.stats()
    assert healed["runs_created"] == n and healed["idempotent_replays"] == after


async def test_dropped_gets():
    async with running(drop_rate=1.0) as (sim, api):
        with pytest.raises(aiohttp.ClientError):
            await api.get("run_x")
        stats = sim.stats()
    # aiohttp itself may resend a GET once after a lost answer: count what arrived
    assert stats["dropped_gets"] >= 1
    assert requests_to(stats, ROUTE_GET, "dropped") == stats["dropped_gets"]


async def test_a_slow_answer_comes_late_after_the_run_was_created_and_charged():
    async with running(slow_rate=1.0) as (sim, api):
        started = time.monotonic()
        post = asyncio.ensure_future(api.post({"prompt": "x"}))
        for _ in range(200):
            if sim.slow_answers:
                break
            await asyncio.sleep(0.005)
        assert sim.slow_answers == 1
        during = sim.stats()
        answer = await post
        took = time.monotonic() - started
        after = sim.stats()
    assert during["runs_created"] == 1 and during["charged_micro_usd"] == 484_000
    assert answer.status == 200 and took >= 0.3
    assert sim.slow_answers == 0 and after["slow_answers_sent"] == 1


async def test_slow_polls_answer_late_with_the_run_as_it_was():
    async with running(time_scale=0.0) as (sim, api):
        run_id = (await api.post({"prompt": "x"})).body["id"]
        sim.config.slow_poll_rate = 1.0
        started = time.monotonic()
        slow = await api.get(run_id)
        took = time.monotonic() - started
        sim.config.slow_poll_rate = 0.0
        quick = await api.get(run_id)
        stats = sim.stats()
    assert slow.status == quick.status == 200 and slow.body["status"] == "succeeded"
    assert took >= 0.3
    assert stats["slow_polls_sent"] == 1 and stats["slow_answers_sent"] == 0
    assert sim.slow_answers == 0  # that count is for run-creating POSTs only


async def test_a_cut_download_stops_mid_file_and_resumes_with_a_range():
    async with running() as (sim, api):
        url, whole, full = await api.succeeded_file({"prompt": "a kite"})
        sim.config.cut_rate = 1.0
        got = b""
        async with api.session.get(url) as resp:
            assert resp.status == 200 and resp.content_length == len(whole)
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in resp.content.iter_any():
                    got += chunk
        assert 0 < len(got) < len(whole) and whole.startswith(got)
        sim.config.cut_rate = 0.0
        rest = await api.fetch(
            url, {"Range": f"bytes={len(got)}-", "If-Range": full.headers["ETag"]}
        )
        stats = sim.stats()
    assert rest.status == 206
    assert got + rest.body == whole
    assert stats["downloads_cut"] == 1


async def test_urls_expire_after_the_ttl_and_a_fresh_get_gives_fresh_ones():
    ttl = 1.0  # long enough that no loaded machine takes it between the GET and the fetch
    async with running(url_ttl_s=ttl) as (sim, api):
        run_id = (await api.post({"prompt": "x"})).body["id"]
        url = (await api.wait(run_id)).body["output"]["urls"][0]
        answered = time.monotonic()  # the URL was signed before this
        assert (await api.fetch(url)).status == 200
        await asyncio.sleep(max(0.0, answered + ttl + 0.05 - time.monotonic()))
        expired = await api.fetch(url)
        fresh = (await api.get(run_id)).body["output"]["urls"][0]
        again = await api.fetch(fresh)
        stats = sim.stats()
    assert expired.status == 403
    assert fresh != url and again.status == 200
    assert stats["expired_url_hits"] == 1


async def test_a_url_cannot_be_extended_or_pointed_elsewhere_by_editing_it():
    async with running(url_ttl_s=60) as (_sim, api):
        url, _, _ = await api.succeeded_file({"prompt": "x"})
        base, _, query = url.partition("?")
        params = dict(p.split("=") for p in query.split("&"))
        longer = f"{base}?exp={int(params['exp']) + 10**9}&sig={params['sig']}"
        other_run = url.replace("/files/run_", "/files/run_0")
        statuses = [(await api.fetch(bad)).status for bad in (longer, other_run, base)]
    assert statuses == [403, 403, 403]


async def test_stale_first_url_hands_out_an_expired_url_first():
    async with running(stale_first_url=True) as (_sim, api):
        run_id = (await api.post({"prompt": "x"})).body["id"]
        first = (await api.wait(run_id)).body["output"]["urls"][0]
        second = (await api.get(run_id)).body["output"]["urls"][0]
        assert (await api.fetch(first)).status == 403
        assert (await api.fetch(second)).status == 200

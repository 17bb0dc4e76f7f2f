"""The simulator's wire format over loopback: shapes, auth, validation, idempotency,
stats and reset (behaviours 1, 2, 3, 9 and 10 of issue 2)."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import socket
from typing import Any

import pytest

from batchgen.sim import DEFAULT_KEY, accounts
from tests.support.simapi import (
    MODEL,
    ROUTE_CREATE,
    ROUTE_FILES,
    ROUTE_GET,
    requests_to,
    running,
)

KEY_A = "sk-test-aaaaaaaaaaaaaaaa"
KEY_B = "sk-test-bbbbbbbbbbbbbbbb"


def parse_iso(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    assert when.tzinfo is not None
    return when


# ---------------------------------------------------------------- 1. shapes


async def test_post_and_get_answer_with_the_documented_shapes():
    async with running(fail_rate=0.0) as (_sim, api):
        created = await api.post({"prompt": "a lighthouse at dusk"})
        assert created.status == 200
        run = created.body
        assert set(run) == {"id", "model", "status", "costUsd", "createdAt"}
        assert run["id"].startswith("run_") and len(run["id"]) > 8
        assert run["model"] == MODEL
        assert run["status"] == "pending"
        assert run["costUsd"] == 484_000  # 5 s at 1080p: the model's defaults
        parse_iso(run["createdAt"])

        done = await api.wait(run["id"])
        body = done.body
    assert body["id"] == run["id"] and body["status"] == "succeeded"
    assert body["costUsd"] == 484_000 and body["createdAt"] == run["createdAt"]
    urls = body["output"]["urls"]
    assert isinstance(urls, list) and len(urls) == 1 and urls[0].startswith("http://127.0.0.1:")
    assert parse_iso(body["completedAt"]) > parse_iso(body["createdAt"])
    assert "error" not in body


async def test_the_post_answer_is_pending_even_when_the_run_ends_at_once():
    async with running(time_scale=0.0) as (_sim, api):
        created = await api.post({"prompt": "instant"})
        now = await api.get(created.body["id"])
        replay = await api.post({"prompt": "instant"}, idem="k")
        replayed = await api.post({"prompt": "instant"}, idem="k")
    assert created.body["status"] == "pending" and "output" not in created.body
    assert now.body["status"] == "succeeded" and now.body["output"]["urls"]
    assert replay.body["status"] == "pending"
    assert replayed.body["status"] == "succeeded"  # a replay shows the run as it is now


async def test_a_failed_run_has_an_error_and_no_output():
    async with running(fail_rate=1.0) as (_sim, api):
        created = await api.post({"prompt": "doomed"})
        done = await api.wait(created.body["id"])
    body = done.body
    assert body["status"] == "failed"
    assert body["error"] == {"message": "generation failed", "code": "generation_failed"}
    assert "output" not in body and body["completedAt"]


# ---------------------------------------------------------------- 2. auth


async def test_missing_and_invalid_keys_are_401_with_their_codes():
    async with running() as (sim, api):
        no_header = await api.post(headers={})
        not_bearer = await api.post(headers={"Authorization": f"Basic {DEFAULT_KEY}"})
        empty = await api.post(headers={"Authorization": "Bearer "})
        wrong = await api.post(key="sk-wrong-0000000000000000")
        wrong_get = await api.get("run_x", key="sk-wrong-0000000000000000")
        stats = sim.stats()
    for answer in (no_header, not_bearer, empty):
        assert (answer.status, answer.code) == (401, "missing_api_key"), answer
    for answer in (wrong, wrong_get):
        assert (answer.status, answer.code) == (401, "invalid_api_key"), answer
    assert stats["runs_created"] == 0
    assert requests_to(stats, ROUTE_CREATE, 401) == 4


async def test_each_key_sees_only_its_own_runs_and_has_its_own_balance():
    async with running(keys=[KEY_A, KEY_B], balance_usd=1.0) as (sim, api):
        mine = await api.post({"prompt": "a"}, key=KEY_A)
        assert mine.status == 200
        run_id = mine.body["id"]
        assert (await api.get(run_id, key=KEY_A)).status == 200
        theirs = await api.get(run_id, key=KEY_B)
        default = await api.post({"prompt": "a"}, key=DEFAULT_KEY)
        stats = sim.stats()
    assert (theirs.status, theirs.code) == (404, "run_not_found")
    assert (default.status, default.code) == (401, "invalid_api_key")  # not configured
    a, b = stats["keys"]
    assert a["balance_micro_usd"] == 1_000_000 - 484_000 and a["runs_created"] == 1
    assert b["balance_micro_usd"] == 1_000_000 and b["runs_created"] == 0
    assert stats["balance_micro_usd"] == 2_000_000 - 484_000


def test_key_lookup_compares_every_key_as_equal_length_digests(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # accounts calls it through the module
    ring = accounts.KeyRing([KEY_A, KEY_B, DEFAULT_KEY])
    for presented, found in [(KEY_A, 0), (DEFAULT_KEY, 2), ("sk-x", None), ("", None)]:
        calls.clear()
        assert ring.find(presented) == found
        assert len(calls) == 3  # every key, whether or not one matched early
        assert all(len(a) == len(b) == 32 for a, b in calls)  # lengths say nothing
        assert all(presented.encode() not in a + b for a, b in calls if presented)  # digests


async def test_keys_given_later_take_effect_at_reset():
    async with running(keys=[KEY_A]) as (sim, api):
        assert (await api.post({"prompt": "x"}, key=KEY_A)).status == 200
        sim.config.keys = [KEY_B]
        sim.reset()
        old = await api.post({"prompt": "x"}, key=KEY_A)
        new = await api.post({"prompt": "x"}, key=KEY_B)
    assert (old.status, old.code) == (401, "invalid_api_key")
    assert new.status == 200


async def test_keys_never_appear_in_stats():
    async with running(keys=[KEY_A, KEY_B]) as (sim, api):
        await api.post({"prompt": "x"}, key=KEY_A)
        await api.post({"prompt": "x"}, key="sk-wrong-0000000000000000")
        text = json.dumps(sim.stats()) + json.dumps(await api.stats())
    for secret in (KEY_A, KEY_B, "sk-wrong", DEFAULT_KEY, "sk-"):
        assert secret not in text


# ---------------------------------------------------------------- 3. validation

BAD_INPUTS: list[tuple[Any, str, str]] = [
    (b"{not json", "invalid_json", "JSON"),
    ([1, 2], "invalid_json", "object"),
    ({"input": {"prompt": "x"}}, "missing_model", "model"),
    ({"model": "", "input": {"prompt": "x"}}, "missing_model", "model"),
    ({"model": "acme/nope", "input": {"prompt": "x"}}, "model_not_found", "acme/nope"),
    ({"model": MODEL}, "missing_input", "input"),
    ({"model": MODEL, "input": "a fox"}, "invalid_input", "input"),
    ({"model": MODEL, "input": {}}, "invalid_input", "prompt"),
    ({"model": MODEL, "input": {"prompt": ""}}, "invalid_input", "prompt"),
    ({"model": MODEL, "input": {"prompt": "   "}}, "invalid_input", "prompt"),
    ({"model": MODEL, "input": {"prompt": "x", "duration": 5}}, "invalid_input", "duration"),
    ({"model": MODEL, "input": {"prompt": "x", "duration": "7"}}, "invalid_input", "duration"),
    ({"model": MODEL, "input": {"prompt": "x", "resolution": "4k"}}, "invalid_input", "resolution"),
    ({"model": MODEL, "input": {"prompt": "x", "aspect_ratio": "2:1"}}, "invalid_input",
     "aspect_ratio"),
    ({"model": MODEL, "input": {"prompt": "x", "image_urls": "http://a/b.png"}}, "invalid_input",
     "image_urls"),
    ({"model": MODEL, "input": {"prompt": "x", "image_urls": ["ftp://a/b.png"]}},
     "invalid_input", "image_urls"),
    ({"model": MODEL, "input": {"prompt": "x", "image_urls": ["https://"]}},
     "invalid_input", "image_urls"),
    ({"model": MODEL, "input": {"prompt": "x", "image_urls": ["data:"]}},
     "invalid_input", "image_urls"),
    ({"model": MODEL, "input": {"prompt": "x", "seed": 3}}, "invalid_input", "seed"),
]  # fmt: skip


async def test_every_bad_request_is_a_400_with_its_code_and_names_the_field():
    async with running() as (sim, api):
        answers = [await api.post(body=body) for body, _, _ in BAD_INPUTS]
        stats = sim.stats()
    for answer, (body, code, field) in zip(answers, BAD_INPUTS, strict=True):
        assert (answer.status, answer.code) == (400, code), (body, answer)
        assert field in answer.message, (body, answer.message)
    assert stats["runs_created"] == 0 and stats["charged_micro_usd"] == 0
    assert requests_to(stats, ROUTE_CREATE, 400) == len(BAD_INPUTS)


async def test_every_valid_input_is_accepted():
    good: list[dict[str, Any]] = [
        {"prompt": "x", "aspect_ratio": ar, "resolution": res, "duration": d}
        for ar in ("16:9", "9:16", "4:3", "3:4", "1:1", "21:9")
        for res in ("720p", "1080p")
        for d in ("5", "10")
    ]
    good.append({"prompt": "x", "image_urls": ["https://a/b.png", "data:image/png;base64,AAAA"]})
    async with running() as (_sim, api):
        answers = [await api.post(inp) for inp in good]
    assert [a.status for a in answers] == [200] * len(good)


# ---------------------------------------------------------------- 9. idempotency


async def test_the_same_idempotency_key_returns_the_same_run_and_charges_once():
    async with running(keys=[KEY_A, KEY_B]) as (sim, api):
        first = await api.post({"prompt": "x"}, key=KEY_A, idem="job-1")
        again = await api.post({"prompt": "x"}, key=KEY_A, idem="job-1")
        other = await api.post({"prompt": "x"}, key=KEY_A, idem="job-2")
        other_key = await api.post({"prompt": "x"}, key=KEY_B, idem="job-1")
        none = [await api.post({"prompt": "x"}, key=KEY_A) for _ in range(2)]
        stats = sim.stats()
    assert first.body["id"] == again.body["id"]
    assert len({first.body["id"], other.body["id"], other_key.body["id"]}) == 3
    assert none[0].body["id"] != none[1].body["id"]  # no header: a new run each time
    assert stats["idempotent_replays"] == 1
    assert stats["runs_created"] == 5 and stats["charged_micro_usd"] == 5 * 484_000


async def test_ignore_idempotency_charges_every_post():
    async with running(ignore_idempotency=True) as (sim, api):
        first = await api.post({"prompt": "x"}, idem="job-1")
        again = await api.post({"prompt": "x"}, idem="job-1")
        stats = sim.stats()
    assert first.body["id"] != again.body["id"]
    assert stats["runs_created"] == 2 and stats["idempotent_replays"] == 0
    assert stats["charged_micro_usd"] == 2 * 484_000


# ---------------------------------------------------------------- 10. stats and reset

STATS_FIELDS = {
    "runs_created",
    "runs_succeeded",
    "runs_failed",
    "idempotent_replays",
    "charged_micro_usd",
    "refunded_micro_usd",
    "balance_micro_usd",
    "rate_limited",
    "max_in_window",
    "requests",
}


async def test_stats_count_everything_by_route_and_status_and_reset_clears_them():
    async with running(balance_usd=10.0, rate=(3, 5.0)) as (sim, api):
        created = await api.post({"prompt": "x"})
        await api.get("run_nope")
        assert (await api.get(created.body["id"])).status == 200
        limited = await api.get(created.body["id"])  # the window holds 3
        assert (limited.status, limited.code) == (429, "RATE_LIMITED")
        over_http = await api.stats()
        stats = sim.stats()
        assert set(over_http) >= STATS_FIELDS
        assert over_http["runs_created"] == stats["runs_created"] == 1
        assert stats["max_in_window"] == 3
        assert requests_to(stats, ROUTE_CREATE, 200) == 1
        assert requests_to(stats, ROUTE_GET, 404) == 1
        assert requests_to(stats, ROUTE_GET, 429) == stats["rate_limited"] == 1
        assert stats["balance_micro_usd"] == 10_000_000 - 484_000

        async with api.session.post(f"{api.base_url}/_sim/reset") as resp:
            assert resp.status == 200
        cleared = await api.stats()
        again = await api.get(created.body["id"])  # the window was cleared too
    assert cleared["runs_created"] == cleared["rate_limited"] == cleared["max_in_window"] == 0
    assert cleared["requests"] == {} and cleared["balance_micro_usd"] == 10_000_000
    assert (again.status, again.code) == (404, "run_not_found")


async def test_downloads_are_counted_under_get_files():
    async with running() as (sim, api):
        url, _, _ = await api.succeeded_file({"prompt": "x"})
        await api.fetch(url, {"Range": "bytes=0-9"})
        stats = sim.stats()
    assert requests_to(stats, ROUTE_FILES, 200) == 1
    assert requests_to(stats, ROUTE_FILES, 206) == 1


@pytest.mark.parametrize(
    ("method", "route", "status", "code"),
    [
        ("DELETE", "/_sim/stats", 405, "method_not_allowed"),
        ("DELETE", "/api/v1/runs/x", 405, "method_not_allowed"),
        ("GET", "/api/v1/runs", 405, "method_not_allowed"),
        ("GET", "/api/v1/runs/", 404, "not_found"),
        ("GET", "/api/v2/runs/x", 404, "not_found"),
    ],
)
async def test_unknown_paths_and_methods_are_errors_in_the_api_shape(method, route, status, code):
    async with (
        running() as (_sim, api),
        api.session.request(method, f"{api.base_url}{route}") as resp,
    ):
        body = await resp.json()
    assert resp.status == status
    assert body["error"]["code"] == code and body["error"]["message"]


async def test_a_body_over_the_size_limit_is_413_in_the_api_shape():
    huge = b'{"model": "x", "input": {"prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}}'
    async with running() as (sim, api):
        answer = await api.post(body=huge)
        stats = sim.stats()
    assert (answer.status, answer.code) == (413, "request_too_large")
    assert stats["runs_created"] == 0


@pytest.mark.parametrize(("host", "url_host"), [("0.0.0.0", "127.0.0.1"), ("::1", "[::1]")])
async def test_the_base_url_of_other_hosts_is_one_a_client_can_use(host, url_host):
    if ":" in host and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        async with running(host=host) as (sim, api):
            assert sim.base_url.startswith(f"http://{url_host}:")
            answer = await api.post({"prompt": "x"})
    except OSError as exc:  # IPv6 compiled in but switched off
        pytest.skip(f"cannot listen on {host}: {exc}")
    assert answer.status == 200
    assert answer.body["status"] == "pending"

"""RunbaseClient against a tiny canned HTTP server on 127.0.0.1: headers, parsing, errors."""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from batchgen.errors import (
    AuthError,
    Forbidden,
    InvalidRequest,
    PaymentRequired,
    RateLimited,
    RunbaseError,
    RunNotFound,
    ServerError,
    TransportError,
    UsageExceeded,
)
from batchgen.events import RequestEvent
from batchgen.runbase.client import ROUTE_CREATE, ROUTE_GET, Run, RunbaseClient, error_for
from batchgen.runbase.client import parse_retry_after as parse_header
from batchgen.runbase.ratelimit import RequestLimiter
from tests.support.runs import Recorder

MODEL = "bytedance/seedance-1-pro"


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON, str/bytes -> as is
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)


class Canned:
    """Answers each request with the next queued Reply (or ``default``)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.default = Reply(200, {"id": "run_1", "status": "pending"})
        self.seen: list[Seen] = []
        self.url = ""

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(
            Seen(request.method, request.raw_path, dict(request.headers), await request.read())
        )
        reply = self.replies.popleft() if self.replies else self.default
        body = reply.body
        if isinstance(body, dict | list):
            data = json.dumps(body).encode()
            ctype = "application/json"
        else:
            data = body.encode() if isinstance(body, str) else (body or b"")
            ctype = "text/html"
        return web.Response(
            status=reply.status, body=data, headers=reply.headers, content_type=ctype
        )


@pytest.fixture
async def canned() -> AsyncIterator[Canned]:
    state = Canned()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    async with TestServer(app, host="127.0.0.1", port=0) as server:
        state.url = str(server.make_url("")).rstrip("/")
        yield state


def fast_limiter() -> RequestLimiter:
    return RequestLimiter(1000, 1.0, margin_s=0.0, burst=1000)


@pytest.fixture
async def make_client(canned: Canned, api_key: str) -> AsyncIterator[Callable[..., RunbaseClient]]:
    made: list[RunbaseClient] = []

    def make(**kw: Any) -> RunbaseClient:
        kw.setdefault("limiter", fast_limiter())
        client = RunbaseClient(canned.url, api_key, **kw)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


# ---------------------------------------------------------------- requests and runs


async def test_create_run_sends_bearer_json_and_idempotency_key(canned, make_client, api_key):
    canned.queue(
        Reply(200, {"id": "run_a", "model": MODEL, "status": "pending", "costUsd": 484000})
    )
    async with make_client() as client:
        run = await client.create_run(MODEL, {"prompt": "a cat"}, idempotency_key="job-7-a1")
    assert run == Run(id="run_a", model=MODEL, status="pending", cost_micro_usd=484000)
    (req,) = canned.seen
    assert (req.method, req.path) == ("POST", "/api/v1/runs")
    assert req.headers["Authorization"] == f"Bearer {api_key}"
    assert req.headers["Idempotency-Key"] == "job-7-a1"
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.body) == {"model": MODEL, "input": {"prompt": "a cat"}}


async def test_get_run_parses_a_succeeded_run(canned, make_client):
    canned.queue(
        Reply(
            200,
            {
                "id": "run_a",
                "model": MODEL,
                "status": "succeeded",
                "costUsd": 242000.0,
                "output": {"urls": ["http://cdn/x.mp4", "http://cdn/y.mp4"]},
                "createdAt": "2025-01-01T00:00:00Z",
                "completedAt": "2025-01-01T00:00:41Z",
            },
        )
    )
    async with make_client() as client:
        run = await client.get_run("run_a")
    assert run.succeeded and run.finished and not run.failed
    assert run.cost_micro_usd == 242000
    assert run.urls == ["http://cdn/x.mp4", "http://cdn/y.mp4"]
    assert (run.created_at, run.completed_at) == ("2025-01-01T00:00:00Z", "2025-01-01T00:00:41Z")
    assert canned.seen[0].method == "GET"
    assert canned.seen[0].path == "/api/v1/runs/run_a"
    assert "Idempotency-Key" not in canned.seen[0].headers


async def test_run_id_cannot_escape_the_runs_path(canned, make_client):
    async with make_client() as client:
        await client.get_run("../../admin?x=1")
    path = canned.seen[0].path
    assert path.startswith("/api/v1/runs/..%2F..%2Fadmin%3Fx")
    assert "?" not in path and path.count("/") == 4


@pytest.mark.parametrize(
    ("error", "message", "code"),
    [
        (
            {"message": "content policy", "code": "content_rejected"},
            "content policy",
            "content_rejected",
        ),
        ("generation timed out", "generation timed out", None),
        ({"code": "internal"}, "internal", "internal"),
        (None, None, None),
    ],
)
def test_failed_run_error_as_string_or_object(error, message, code):
    run = Run.from_api({"id": "run_f", "status": "failed", "error": error})
    assert run.failed
    assert (run.error, run.error_code) == (message, code)


@pytest.mark.parametrize(
    ("output", "urls"),
    [
        ({"urls": ["u1"]}, ["u1"]),
        (["u1", 3, "u2"], ["u1", "u2"]),
        ("u1", ["u1"]),
        ({"url": "u1"}, ["u1"]),
        (None, []),
        ({"urls": None}, []),
    ],
)
def test_output_urls_in_any_shape(output, urls):
    assert Run.from_api({"id": "r", "status": "succeeded", "output": output}).urls == urls


def test_cost_and_missing_fields():
    run = Run.from_api({"id": "r"}, model=MODEL)
    assert (run.status, run.model, run.cost_micro_usd, run.urls) == ("pending", MODEL, None, [])
    assert Run.from_api({"id": "r", "costUsd": "1000"}).cost_micro_usd == 1000
    assert Run.from_api({"id": "r", "costUsd": "x"}).cost_micro_usd is None
    assert Run.from_api({"id": "r", "costUsd": True}).cost_micro_usd is None
    with pytest.raises(ValueError):
        Run.from_api({"status": "pending"})


# ---------------------------------------------------------------- every error answer


def err(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "code": code}}


@pytest.mark.parametrize(
    ("method", "status", "body", "kind", "code", "text"),
    [
        (
            "POST",
            400,
            err("input.duration: must be '5' or '10'", "invalid_input"),
            InvalidRequest,
            "invalid_input",
            "input.duration: must be '5' or '10'",
        ),
        (
            "POST",
            400,
            err("Unknown model", "model_not_found"),
            InvalidRequest,
            "model_not_found",
            "Unknown model",
        ),
        (
            "POST",
            401,
            err("Invalid API key", "invalid_api_key"),
            AuthError,
            "invalid_api_key",
            "Invalid API key",
        ),
        (
            "GET",
            401,
            err("Missing API key", "missing_api_key"),
            AuthError,
            "missing_api_key",
            "Missing API key",
        ),
        (
            "POST",
            402,
            err("Insufficient balance", "insufficient_balance"),
            PaymentRequired,
            "insufficient_balance",
            "Insufficient balance",
        ),
        (
            "POST",
            403,
            err("Spend limit exceeded", "api_key_spend_limit_exceeded"),
            Forbidden,
            "api_key_spend_limit_exceeded",
            "Spend limit",
        ),
        (
            "POST",
            403,
            err("IP not allowed", "ip_not_allowed"),
            Forbidden,
            "ip_not_allowed",
            "IP not allowed",
        ),
        (
            "GET",
            404,
            err("Run not found", "run_not_found"),
            RunNotFound,
            "run_not_found",
            "Run not found",
        ),
        ("GET", 404, "<h1>Not Found</h1>", RunNotFound, "run_not_found", "Not Found"),
        ("POST", 404, "<h1>Not Found</h1>", InvalidRequest, None, "base URL"),
        (
            "POST",
            429,
            err("Usage quota exceeded", "USAGE_EXCEEDED"),
            UsageExceeded,
            "USAGE_EXCEEDED",
            "Usage quota",
        ),
        ("GET", 500, err("boom", "internal_error"), ServerError, "internal_error", "boom"),
        ("GET", 502, "<html><body>Bad   Gateway</body></html>", ServerError, None, "Bad Gateway"),
        ("GET", 503, "", ServerError, None, "Service Unavailable"),
        ("POST", 500, {"error": "database down"}, ServerError, None, "database down"),
        ("POST", 422, {"detail": "prompt too long"}, InvalidRequest, None, "prompt too long"),
        (
            "POST",
            409,
            err("request in progress", "idempotency_conflict"),
            ServerError,
            "idempotency_conflict",
            "in progress",
        ),
        ("POST", 400, ["not", "an", "object"], InvalidRequest, None, "not"),
    ],
)
async def test_each_error_answer_is_its_typed_error(
    canned, make_client, method, status, body, kind, code, text
):
    canned.default = Reply(status, body)
    rec = Recorder()
    async with make_client(observers=[rec]) as client:
        with pytest.raises(RunbaseError) as info:
            if method == "POST":
                await client.create_run(MODEL, {"prompt": "x"}, idempotency_key="k")
            else:
                await client.get_run("run_x")
    exc = info.value
    assert type(exc) is kind
    assert exc.status == status
    assert exc.code == code
    assert text in exc.message and text in str(exc)
    assert len(canned.seen) == 1  # raised once, never retried by the client
    assert [(e.status, e.code) for e in rec.events] == [(status, code)]


def test_error_flags_tell_the_engine_what_to_do():
    def make(status: int, code: str) -> RunbaseError:
        return error_for(status, json.dumps(err("m", code)).encode(), method="POST")

    assert make(401, "invalid_api_key").stops_batch
    for status, code in [
        (402, "insufficient_balance"),
        (403, "ip_not_allowed"),
        (429, "USAGE_EXCEEDED"),
    ]:
        e = make(status, code)
        assert e.stops_submitting and not e.stops_batch and not e.retryable
    assert make(500, "x").retryable
    assert make(429, "RATE_LIMITED").retryable
    bad = make(400, "invalid_input")
    assert not (bad.retryable or bad.stops_batch or bad.stops_submitting)


# ---------------------------------------------------------------- 429 and Retry-After


def test_retry_after_header_in_seconds_or_http_date():
    now = 1_700_000_000.0
    assert parse_header("7", now=now) == 7.0
    assert parse_header(" 1.5 ", now=now) == 1.5
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_header(date, now=now) == pytest.approx(30.0, abs=1.0)
    assert parse_header(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    for junk in (None, "", "soon", "-3", "nan"):
        assert parse_header(junk, now=now) is None
    assert parse_header("99999999", now=now) == 3600.0


@pytest.mark.parametrize(
    ("body", "header", "expected"),
    [
        (err("Rate limit exceeded", "RATE_LIMITED"), None, None),
        (err("Rate limit exceeded", "RATE_LIMITED"), "4", 4.0),
        ({"error": {"message": "slow", "code": "RATE_LIMITED", "retryAfter": 3}}, None, 3.0),
        ({"error": {"message": "slow", "code": "RATE_LIMITED", "retry_after": "2.5"}}, None, 2.5),
        ({"error": {"message": "slow", "code": "RATE_LIMITED"}, "retryAfterMs": 1500}, None, 1.5),
        ({"error": {"message": "slow", "code": "RATE_LIMITED", "retryAfter": 3}}, "9", 9.0),
        ("Too Many Requests", None, None),
    ],
)
def test_rate_limited_carries_the_retry_hint(body, header, expected):
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    e = error_for(429, raw, method="GET", retry_after_header=header, now=0.0)
    assert isinstance(e, RateLimited)
    assert e.code == "RATE_LIMITED"
    assert e.retry_after == expected


async def test_429_is_absorbed_by_the_client_and_slows_the_limiter(canned, make_client):
    canned.queue(
        Reply(429, err("Rate limit exceeded", "RATE_LIMITED"), {"Retry-After": "0.05"}),
        Reply(429, {"error": {"message": "slow", "code": "RATE_LIMITED", "retryAfter": 0.05}}),
        Reply(200, {"id": "run_a", "status": "pending", "costUsd": 1}),
    )
    rec = Recorder()
    limiter = RequestLimiter(20, 1.0, margin_s=0.0, burst=20)
    async with make_client(limiter=limiter, observers=[rec]) as client:
        run = await client.create_run(MODEL, {"prompt": "x"}, idempotency_key="same")
    assert run.id == "run_a"
    assert [s.headers["Idempotency-Key"] for s in canned.seen] == ["same"] * 3
    assert [(e.route, e.status, e.code) for e in rec.events] == [
        (ROUTE_CREATE, 429, "RATE_LIMITED"),
        (ROUTE_CREATE, 429, "RATE_LIMITED"),
        (ROUTE_CREATE, 200, None),
    ]
    stats = limiter.stats()
    assert stats.penalties == 2
    # the second 429 answered a request sent after the first cut: new evidence, cut again
    assert stats.cuts == 2
    assert limiter.limit == pytest.approx(5.0, abs=0.5)


async def test_the_next_try_waits_as_long_as_the_service_asked(canned, make_client):
    # Our own pause after a 429 is a window (50 ms here) plus jitter; a Retry-After header
    # or a hint in the error body asks for 1 s, and that is what the key waits.
    canned.queue(
        Reply(429, err("Rate limit exceeded", "RATE_LIMITED"), {"Retry-After": "1"}),
        Reply(429, {"error": {"message": "slow", "code": "RATE_LIMITED", "retryAfter": 1}}),
        Reply(429, err("Rate limit exceeded", "RATE_LIMITED")),
        Reply(200, {"id": "run_a", "status": "pending", "costUsd": 1}),
    )
    limiter = RequestLimiter(1000, 0.05, margin_s=0.0, burst=1000)
    async with make_client(limiter=limiter) as client:
        await client.create_run(MODEL, {"prompt": "x"}, idempotency_key="k")
    header, body, unhinted = (b.at - a.at for a, b in itertools.pairwise(canned.seen))
    assert header >= 1.0 and body >= 1.0
    assert unhinted < 0.9  # the hint, not our own backoff, made the wait


async def test_a_permanent_429_storm_ends_in_rate_limited(canned, make_client):
    canned.default = Reply(429, err("Rate limit exceeded", "RATE_LIMITED"), {"Retry-After": "0"})
    async with make_client(max_rate_limited=4) as client:
        with pytest.raises(RateLimited) as info:
            await client.get_run("run_a")
    assert len(canned.seen) == 4
    assert info.value.retryable
    assert "4 times" in str(info.value)


async def test_unreadable_success_is_treated_as_a_lost_answer(canned, make_client):
    canned.queue(Reply(200, "<html>ok</html>"), Reply(200, {"status": "pending"}))
    async with make_client() as client:
        for _ in range(2):
            with pytest.raises(TransportError) as info:
                await client.create_run(MODEL, {"prompt": "x"}, idempotency_key="k")
            assert info.value.sent  # the run may exist: the engine holds it in doubt


# ---------------------------------------------------------------- events, key, session


async def test_every_request_is_reported_to_observers(canned, make_client):
    class Broken(Recorder):
        def request(self, ev: RequestEvent) -> None:
            raise RuntimeError("observer bug")

    rec = Recorder()
    canned.queue(
        Reply(200, {"id": "run_a"}),
        Reply(200, {"id": "run_a", "status": "processing"}),
        Reply(404, err("Run not found", "run_not_found")),
    )
    async with make_client(observers=[Broken(), rec]) as client:
        await client.create_run(MODEL, {"prompt": "x"}, idempotency_key="k")
        await client.get_run("run_a")
        with pytest.raises(RunNotFound):
            await client.get_run("run_b")
    assert [(e.method, e.route, e.status) for e in rec.events] == [
        ("POST", ROUTE_CREATE, 200),
        ("GET", ROUTE_GET, 200),
        ("GET", ROUTE_GET, 404),
    ]
    assert all(e.elapsed_s >= 0 and e.at > 1e9 for e in rec.events)


async def test_the_key_never_shows(canned, make_client, api_key, caplog):
    caplog.set_level(logging.DEBUG)
    canned.default = Reply(401, err(f"key {api_key} is disabled", "invalid_api_key"))
    rec = Recorder()
    client = make_client(observers=[rec])
    assert api_key not in repr(client) and api_key not in str(client)
    assert api_key not in repr(vars(client))
    with pytest.raises(AuthError) as info:
        await client.get_run("run_a")
    exc = info.value
    for text in (str(exc), repr(exc), exc.message, repr(exc.args), caplog.text, repr(rec.events)):
        assert api_key not in text
    assert "disabled" in exc.message
    assert canned.seen[0].headers["Authorization"] == f"Bearer {api_key}"


async def test_a_shared_session_is_left_open(canned, api_key):
    async with aiohttp.ClientSession() as session:
        async with RunbaseClient(
            canned.url, api_key, limiter=fast_limiter(), session=session
        ) as client:
            await client.get_run("run_a")
        assert not session.closed


async def test_bad_arguments_are_refused_before_sending(canned, make_client):
    with pytest.raises(ValueError):
        RunbaseClient(canned.url, "", limiter=fast_limiter())
    async with make_client() as client:
        with pytest.raises(ValueError):
            await client.create_run(MODEL, {}, idempotency_key="bad\r\nX-Evil: 1")
        with pytest.raises(ValueError):
            await client.get_run("")
    assert canned.seen == []

"""Helpers for the engine tests: batches written straight into the state DB, a simple
collect step, and the simulator fixture.

TEMPORARY: ``StandInSim`` mimics the interface of ``batchgen.sim.Simulator`` (same
config field names, same stats keys) until the real simulator lands; then the
fixture switches to it and the stand-in goes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import json
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import Engine
from sqlmodel import Session

from batchgen.budget import Budget
from batchgen.client import RunbaseClient
from batchgen.engine import EngineConfig, Outcome, RunEngine
from batchgen.modelspec import load_model
from batchgen.polling import DurationModel, PollPolicy
from batchgen.ratelimit import RequestLimiter
from batchgen.retry import RetryPolicy
from batchgen.store import jobs as store
from batchgen.store.schema import Batch, Job, open_db

MODEL = "bytedance/seedance-1-pro"
KEY = "sk-sim-standin-0123456789"


@functools.cache
def real_mp4() -> bytes:
    """One small real H.264 MP4 (16:9, 5 s) that the decoder check accepts."""
    from tests.test_download_support import make_mp4

    return make_mp4(64, 36, fps=4, seconds=5.0)


@dataclass
class StandInConfig:
    host: str = "127.0.0.1"
    port: int = 0
    keys: list[str] = field(default_factory=lambda: [KEY])
    balance_usd: float = 1000.0
    spend_limit_usd: float | None = None
    usage_quota: int | None = None
    rate: tuple[int, float] = (20, 10.0)
    time_scale: float = 1.0
    fail_rate: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    cut_rate: float = 0.0
    url_ttl_s: float = 86400.0
    #: the first URLs handed out for each run are already expired (a slow client's case)
    stale_first_url: bool = False
    ignore_idempotency: bool = False
    seed: int = 0


class StandInSim:
    def __init__(self, config: StandInConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._server: TestServer | None = None
        self.base_url = ""
        self.reset()

    def reset(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.idem: dict[tuple[str, str], str] = {}
        self.window: deque[float] = deque()
        self.counters = dict.fromkeys(
            ("runs_created", "runs_succeeded", "runs_failed", "idempotent_replays",
             "charged_micro_usd", "refunded_micro_usd", "rate_limited", "max_in_window"), 0
        )  # fmt: skip
        self.balance = round(self.config.balance_usd * 1e6)
        self.spent_by_key: dict[str, int] = {}
        self.requests: dict[str, dict[str, int]] = {}
        self.slow_answers = 0  # POSTs created and charged whose answer is still coming

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "balance_micro_usd": self.balance, "requests": self.requests}

    async def __aenter__(self) -> StandInSim:
        app = web.Application()
        app.router.add_post("/api/v1/runs", self._create)
        app.router.add_get("/api/v1/runs/{id}", self._get)
        app.router.add_get("/files/{name}", self._file)
        self._server = TestServer(app, host=self.config.host, port=self.config.port)
        await self._server.start_server()
        self.base_url = str(self._server.make_url("")).rstrip("/")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        await self._server.close()

    # ------------------------------------------------------------ plumbing

    def _count(self, route: str, status: int) -> None:
        per = self.requests.setdefault(route, {})
        per[str(status)] = per.get(str(status), 0) + 1

    @staticmethod
    def _err(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"message": message, "code": code}}, status=status)

    def _gate(self, request: web.Request, route: str) -> tuple[str | None, web.Response | None]:
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ")
        if key not in self.config.keys:
            self._count(route, 401)
            return None, self._err(401, "invalid_api_key", "Invalid API key")
        now = time.monotonic()
        limit, window = self.config.rate
        while self.window and self.window[0] <= now - window:
            self.window.popleft()
        if len(self.window) >= limit:
            self.counters["rate_limited"] += 1
            self._count(route, 429)
            return key, self._err(429, "RATE_LIMITED", "Rate limit exceeded")
        self.window.append(now)
        self.counters["max_in_window"] = max(self.counters["max_in_window"], len(self.window))
        if self.rng.random() < self.config.error_rate:
            self._count(route, 500)
            return key, web.Response(status=500, text="boom")
        return key, None

    def _view(self, run: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        out: dict[str, Any] = {"id": run["id"], "model": run["model"], "costUsd": run["cost"]}
        if now < run["start"]:
            out["status"] = "pending"
        elif now < run["end"]:
            out["status"] = "processing"
        elif run["fail"]:
            out["status"] = "failed"
            out["error"] = {"message": "generation failed", "code": "generation_failed"}
            if not run["refunded"]:
                run["refunded"] = True
                self.counters["runs_failed"] += 1
                self.counters["refunded_micro_usd"] += run["cost"]
                self.balance += run["cost"]
                self.spent_by_key[run["key"]] -= run["cost"]
        else:
            out["status"] = "succeeded"
            if not run["counted"]:
                run["counted"] = True
                self.counters["runs_succeeded"] += 1
            exp = int((time.time() + self.config.url_ttl_s) * 1000)
            run["views"] = run.get("views", 0) + 1
            if self.config.stale_first_url and run["views"] == 1:
                exp = 1
            out["output"] = {"urls": [f"{self.base_url}/files/{run['id']}.mp4?exp={exp}"]}
        out["createdAt"] = _iso(run["created"])
        if out["status"] in ("succeeded", "failed"):
            out["completedAt"] = _iso(run["end"])
        return out

    async def _create(self, request: web.Request) -> web.StreamResponse:
        route = "POST /api/v1/runs"
        key, refusal = self._gate(request, route)
        if refusal is not None:
            return refusal
        assert key is not None
        body = await request.json()
        spec = load_model(body.get("model", ""))
        problems = spec.problems(body.get("input") or {})
        if problems:
            self._count(route, 400)
            return self._err(400, "invalid_input", "; ".join(problems))
        idem = request.headers.get("Idempotency-Key")
        if idem and not self.config.ignore_idempotency and (key, idem) in self.idem:
            self.counters["idempotent_replays"] += 1
            self._count(route, 200)
            return web.json_response(self._view(self.runs[self.idem[(key, idem)]]))
        if self.config.usage_quota is not None and self.counters["runs_created"] >= (
            self.config.usage_quota
        ):
            self._count(route, 429)
            return self._err(429, "USAGE_EXCEEDED", "Usage quota exceeded")
        cost = spec.price_micro_usd(body["input"])
        if cost > self.balance:
            self._count(route, 402)
            return self._err(402, "insufficient_balance", "Insufficient balance")
        limit = self.config.spend_limit_usd
        if limit is not None and self.spent_by_key.get(key, 0) + cost > limit * 1e6:
            self._count(route, 403)
            return self._err(403, "api_key_spend_limit_exceeded", "Spend limit exceeded")
        now = time.time()
        gen = spec.typical_seconds(body["input"]) * self.config.time_scale
        gen *= self.rng.uniform(0.8, 1.2)
        run_id = f"run_{len(self.runs) + 1:05d}"
        self.runs[run_id] = {
            "id": run_id, "model": body["model"], "cost": cost, "key": key, "created": now,
            "start": now, "end": now + gen, "fail": self.rng.random() < self.config.fail_rate,
            "refunded": False, "counted": False,
        }  # fmt: skip
        if idem:
            self.idem[(key, idem)] = run_id
        self.counters["runs_created"] += 1
        self.counters["charged_micro_usd"] += cost
        self.balance -= cost
        self.spent_by_key[key] = self.spent_by_key.get(key, 0) + cost
        if self.rng.random() < self.config.slow_rate:
            self.slow_answers += 1  # created and charged; the answer is slow to come
            try:
                await asyncio.sleep(0.3)
            finally:
                self.slow_answers -= 1
        if self.rng.random() < self.config.drop_rate:
            self._count(route, 0)
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        self._count(route, 200)
        return web.json_response(self._view(self.runs[run_id]))

    async def _get(self, request: web.Request) -> web.Response:
        route = "GET /api/v1/runs/{id}"
        key, refusal = self._gate(request, route)
        if refusal is not None:
            return refusal
        run = self.runs.get(request.match_info["id"])
        if run is None or run["key"] != key:
            self._count(route, 404)
            return self._err(404, "run_not_found", "Run not found")
        self._count(route, 200)
        return web.json_response(self._view(run))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        exp = int(request.query.get("exp", "0"))
        if exp and time.time() * 1000 > exp:
            return web.Response(status=403, text="expired")
        body = real_mp4()
        if self.rng.random() < self.config.cut_rate:
            resp = web.StreamResponse(headers={"Content-Length": str(len(body))})
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.abort()
            return resp
        return web.Response(body=body, content_type="video/mp4")


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


# ------------------------------------------------------------------ batches


def make_batch(
    db_path: Path,
    inputs: list[dict[str, Any]],
    out_dir: Path,
    *,
    name: str = "test-batch",
    settings: dict[str, Any] | None = None,
) -> tuple[Engine, Batch]:
    db = open_db(db_path)
    with Session(db, expire_on_commit=False) as s:
        batch = Batch(
            name=name,
            model=MODEL,
            manifest_path="",
            manifest_sha256="",
            out_dir=str(out_dir),
            filename_template="{index}",
            settings_json=json.dumps(settings or {}),
        )
        s.add(batch)
        s.commit()
        for i, inp in enumerate(inputs):
            key = hashlib.sha256(json.dumps([MODEL, inp, i]).encode()).hexdigest()
            assert batch.id is not None
            s.add(Job(batch_id=batch.id, key=key, idx=i, input_json=json.dumps(inp)))
        s.commit()
    return db, batch


def bid(batch: Batch) -> int:
    assert batch.id is not None
    return batch.id


def prompts(n: int, **extra: str) -> list[dict[str, Any]]:
    return [{"prompt": f"a red fox, take {i}", **extra} for i in range(n)]


def simple_collect(session: aiohttp.ClientSession, out_dir: Path) -> Any:
    """A minimal collect step: fetch the first URL (refreshing on 403), write atomically."""

    async def collect(job: Job, urls: list[str], refresh: Any) -> dict[str, Any]:
        for _ in range(5):
            async with session.get(urls[0]) as resp:
                if resp.status == 403:
                    urls = await refresh()
                    continue
                resp.raise_for_status()
                data = await resp.read()
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"{job.idx:04d}.mp4"
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
            return {
                "output_paths_json": json.dumps([path.name]),
                "checksums_json": json.dumps([hashlib.sha256(data).hexdigest()]),
            }
        raise RuntimeError("URLs keep expiring")

    return collect


@dataclass
class Drive:
    """One engine run against a server; ``outcome`` and ``engine`` afterwards."""

    db: Engine
    batch: Batch
    base_url: str
    out_dir: Path
    key: str = KEY
    rate: tuple[int, float] = (20, 0.5)
    config: EngineConfig = field(default_factory=EngineConfig)
    budget_usd: float | None = None
    min_interval_s: float = 0.01
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base_s=0.01, cap_s=0.05))
    collect: Any = None
    observers: list[Any] = field(default_factory=list)

    async def run(self, *, timeout: float = 30.0, during: Any = None) -> tuple[Outcome, RunEngine]:
        assert self.batch.id is not None
        limiter = RequestLimiter(*self.rate)
        budget = Budget(
            None if self.budget_usd is None else round(self.budget_usd * 1e6),
            spent_micro_usd=store.spent_micro_usd(self.db, self.batch.id),
        )
        async with (
            aiohttp.ClientSession() as files,
            RunbaseClient(self.base_url, self.key, limiter=limiter, timeout_s=5) as client,
        ):
            engine = RunEngine(
                self.db,
                store.get_batch(self.db, self.batch.id),
                client=client,
                limiter=limiter,
                collect=self.collect or simple_collect(files, self.out_dir),
                materialize=lambda x: x,
                config=self.config,
                budget=budget,
                durations=DurationModel(PollPolicy(min_interval_s=self.min_interval_s)),
                retry=self.retry,
                observers=self.observers,
            )
            task = asyncio.ensure_future(engine.run())
            if during is not None:
                await during(engine)
            outcome = await asyncio.wait_for(task, timeout)
        return outcome, engine


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)

"""`make bench`: the run engine against the simulator, side by side with the naive client.

Everything is the real-world scenario compressed in time by ``--time-scale`` (default
0.1): the simulator's generation times and latencies, the key's rate window (20
requests per 10 s becomes 20 per 1 s), the naive client's 2 s poll interval and its
429 backoff, and the engine's minimum poll interval. So the figures read as if at
full scale, with wall times divided by 1/time-scale.

Figures, for each client, over the same jobs on a fresh simulator:
- requests per succeeded job (every request the server saw, 429s included);
- share of the allowed request rate used while work remained (from the first request
  to the last submission, accepted requests only);
- wall time against the lower bound jobs x 2 / rate + typical generation time.

Run: ``python -m bench.bench_engine [--jobs 120] [--time-scale 0.1] [--concurrency 100]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import sys
import tempfile
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlmodel import Session

from batchgen.engine.budget import Budget
from batchgen.engine.collect import make_collect
from batchgen.engine.dispatcher import EngineConfig, RunEngine
from batchgen.engine.schedule import DurationModel, PollPolicy
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.retry import RetryPolicy
from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.models import load_model
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.store import jobs as store
from batchgen.store.schema import Batch, Job, open_db
from batchgen.store.sqlite_store import SqliteStore

MODEL = "bytedance/seedance-1-pro"
WINDOW_S = 10.0
LIMIT = 20


def job_inputs(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    aspects = ["16:9", "9:16", "1:1", "4:3"]
    out = []
    for i in range(n):
        res = "720p" if i % 3 == 2 else "1080p"
        out.append(
            {"prompt": f"bench clip {i}: {rng.choice(['fox', 'owl', 'cat'])} at dawn",
             "aspect_ratio": aspects[i % 4], "resolution": res, "duration": "5"}
        )  # fmt: skip
    return out


@dataclass
class Figures:
    name: str
    jobs: int
    succeeded: int = 0
    requests: int = 0
    rate_limited: int = 0
    wall_s: float = 0.0
    used_share: float = 0.0
    window_share: float = 0.0
    runs_created: int = 0
    charged_minus_refunded: int = 0
    times: list[tuple[float, str, int | None]] = field(default_factory=list)

    def note(self, at: float, route: str, status: int | None) -> None:
        self.times.append((at, route, status))

    def finish(self, rate_per_s: float, window_s: float) -> None:
        if not self.times:
            return
        start = min(t for t, _, _ in self.times)
        posts = [t for t, r, s in self.times if r.startswith("POST") and s == 200]
        end = max(posts) if posts else max(t for t, _, _ in self.times)
        ok = [t for t, _, s in self.times if s != 429 and start <= t <= end]
        span = max(end - start, 1e-9)
        self.used_share = len(ok) / (rate_per_s * span)
        # the most a sliding window lets through in the span: a full window per window
        self.window_share = len(ok) / (rate_per_s * window_s * math.ceil(span / window_s))


class _Recorder:
    def __init__(self, figures: Figures) -> None:
        self.figures = figures

    def request(self, ev: RequestEvent) -> None:
        self.figures.note(time.monotonic(), ev.route, ev.status)

    def transition(self, ev: TransitionEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        pass


def make_batch(db_path: Path, inputs: list[dict[str, Any]], out: Path) -> tuple[Any, Batch]:
    db = open_db(db_path)
    with Session(db, expire_on_commit=False) as s:
        batch = Batch(name="bench", model=MODEL, manifest_path="", manifest_sha256="",
                      out_dir=str(out), filename_template="{index}")  # fmt: skip
        s.add(batch)
        s.commit()
        assert batch.id is not None
        for i, inp in enumerate(inputs):
            key = hashlib.sha256(json.dumps([MODEL, inp, i]).encode()).hexdigest()
            s.add(Job(batch_id=batch.id, key=key, idx=i, input_json=json.dumps(inp)))
        s.commit()
    return db, batch


async def bench_engine(args: argparse.Namespace, inputs: list[dict[str, Any]]) -> Figures:
    key = DEFAULT_KEY
    ts = args.time_scale
    figures = Figures("batchgen engine", len(inputs))
    config = SimConfig(rate=(LIMIT, WINDOW_S * ts), time_scale=ts, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        db, batch = make_batch(Path(tmp) / "state.db", inputs, out)
        async with Simulator(config) as sim:
            limiter = RequestLimiter(LIMIT, WINDOW_S * ts, margin_s=0.15 * ts)
            async with (
                aclosing(SqliteStore(db)) as job_store,
                aiohttp.ClientSession() as files,
                RunbaseClient(
                    sim.base_url, key, limiter=limiter, observers=[_Recorder(figures)]
                ) as client,
            ):
                assert batch.id is not None
                record = await job_store.batch(batch.id)
                collect = make_collect(files, record, out_dir=out)
                engine = RunEngine(
                    job_store, record, client=client, limiter=limiter, collect=collect,
                    materialize=lambda x: x,
                    config=EngineConfig(concurrency=args.concurrency, max_attempts=5),
                    budget=Budget(None),
                    durations=DurationModel(PollPolicy(min_interval_s=1.0 * ts)),
                    retry=RetryPolicy(base_s=1.0 * ts, cap_s=60.0 * ts),
                )  # fmt: skip
                started = time.monotonic()
                await engine.run()
                figures.wall_s = time.monotonic() - started
            stats = sim.stats()
        assert batch.id is not None
        figures.succeeded = store.counts(db, batch.id).get("succeeded", 0)
    _from_stats(figures, stats)
    figures.finish(LIMIT / (WINDOW_S * ts), WINDOW_S * ts)
    return figures


def _from_stats(figures: Figures, stats: dict[str, Any]) -> None:
    # API requests only: file downloads do not spend the key's rate limit.
    api = {route: per for route, per in stats["requests"].items() if "/api/" in route}
    figures.requests = sum(sum(v.values()) for v in api.values())
    figures.rate_limited = sum(int(n) for per in api.values() for s, n in per.items() if s == "429")
    figures.runs_created = stats["runs_created"]
    figures.charged_minus_refunded = stats["charged_micro_usd"] - stats["refunded_micro_usd"]


async def bench_naive(args: argparse.Namespace, inputs: list[dict[str, Any]]) -> Figures:
    """The provider's suggested pattern: poll every 2 s, exponential backoff on 429."""
    key = DEFAULT_KEY
    ts = args.time_scale
    figures = Figures("naive (poll every 2 s)", len(inputs))
    config = SimConfig(rate=(LIMIT, WINDOW_S * ts), time_scale=ts, seed=args.seed)
    headers = {"Authorization": f"Bearer {key}"}
    queue: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
    for item in enumerate(inputs):
        queue.put_nowait(item)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        async with Simulator(config) as sim, aiohttp.ClientSession(headers=headers) as http:
            base = sim.base_url

            async def call(method: str, path: str, route: str, **kw: Any) -> dict[str, Any]:
                backoff = 1.0
                while True:
                    async with http.request(method, base + path, **kw) as resp:
                        figures.note(time.monotonic(), route, resp.status)
                        if resp.status == 429:
                            await asyncio.sleep(backoff * ts * random.uniform(0.5, 1.5))
                            backoff = min(backoff * 2, 64)
                            continue
                        if resp.status >= 500:
                            await asyncio.sleep(1.0 * ts)
                            continue
                        resp.raise_for_status()
                        data: dict[str, Any] = await resp.json()
                        return data

            async def worker() -> None:
                while not queue.empty():
                    idx, inp = queue.get_nowait()
                    body = {"model": MODEL, "input": inp}
                    idem = {"Idempotency-Key": f"naive-{idx}"}
                    run = await call("POST", "/api/v1/runs", "POST", json=body, headers=idem)
                    while run.get("status") not in ("succeeded", "failed"):
                        await asyncio.sleep(2.0 * ts)
                        run = await call("GET", f"/api/v1/runs/{run['id']}", "GET")
                    if run["status"] == "succeeded":
                        for n, url in enumerate(run["output"]["urls"]):
                            async with aiohttp.ClientSession() as plain, plain.get(url) as resp:
                                (out / f"{idx}_{n}.mp4").write_bytes(await resp.read())
                        figures.succeeded += 1

            started = time.monotonic()
            workers = [asyncio.ensure_future(worker()) for _ in range(args.concurrency)]
            try:
                await asyncio.wait_for(asyncio.gather(*workers), args.naive_timeout)
            except TimeoutError:
                print(f"naive client: stopped after {args.naive_timeout:.0f} s", file=sys.stderr)
            figures.wall_s = time.monotonic() - started
            stats = sim.stats()
    _from_stats(figures, stats)
    figures.finish(LIMIT / (WINDOW_S * ts), WINDOW_S * ts)
    return figures


def report(rows: list[Figures], args: argparse.Namespace) -> str:
    ts = args.time_scale
    rate = LIMIT / WINDOW_S  # at full scale
    typical = load_model(MODEL).typical_seconds({"resolution": "1080p", "duration": "5"})
    bound = args.jobs * 2 / rate + typical  # full-scale seconds
    lines = [
        "rate used: accepted requests / (rate x time) from the first request to the last",
        "submission; of max: the same over the most whole windows could let through.",
        f"jobs={args.jobs} time_scale={ts} rate={LIMIT}/{WINDOW_S:g}s (simulated as "
        f"{LIMIT}/{WINDOW_S * ts:g}s) concurrency={args.concurrency} seed={args.seed}",
        f"lower bound: {args.jobs} x 2 / {rate:g} req/s + {typical:g} s = {bound:.0f} s "
        f"(full scale) = {bound * ts:.1f} s here",
        "",
        f"{'client':<26}{'ok':>5}{'req/job':>9}{'429s':>7}{'rate used':>11}{'of max':>8}"
        f"{'wall s':>9}{'full-scale s':>14}{'x bound':>9}{'runs':>6}",
    ]
    for f in rows:
        per_job = f.requests / max(1, f.succeeded)
        lines.append(
            f"{f.name:<26}{f.succeeded:>5}{per_job:>9.2f}{f.rate_limited:>7}"
            f"{f.used_share:>10.1%}{f.window_share:>8.1%}{f.wall_s:>9.1f}{f.wall_s / ts:>14.0f}"
            f"{f.wall_s / ts / bound:>9.2f}{f.runs_created:>6}"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    inputs = job_inputs(args.jobs, args.seed)
    rows = [await bench_engine(args, inputs)]
    if args.naive:
        rows.append(await bench_naive(args, inputs))
    print(report(rows, args))
    engine = rows[0]
    per_job = engine.requests / max(1, engine.succeeded)
    ok = engine.succeeded == args.jobs and per_job <= 2.3 and engine.used_share >= 0.95
    print(
        f"\ntargets: <= 2.3 requests per job: {per_job:.2f}; >= 95% of the rate used "
        f"while work remains: {engine.used_share:.1%} -> {'MET' if ok else 'NOT MET'}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--time-scale", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-naive", dest="naive", action="store_false")
    parser.add_argument("--naive-timeout", type=float, default=200.0)
    args, _ = parser.parse_known_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""Batches written straight into the state DB, a simple collect step, and one engine run
(`Drive`) against the simulator (the real ``batchgen.sim``, over loopback).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import Engine
from sqlmodel import Session

from batchgen.engine.budget import Budget
from batchgen.engine.dispatcher import EngineConfig, Outcome, RunEngine
from batchgen.engine.schedule import DurationModel, PollPolicy
from batchgen.retry import RetryPolicy
from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.sim import DEFAULT_KEY, SimConfig
from batchgen.store import jobs as store
from batchgen.store.records import JobChanges, JobRecord
from batchgen.store.schema import Batch, Job, open_db
from batchgen.store.sqlite_store import SqliteStore

MODEL = "bytedance/seedance-1-pro"
KEY = DEFAULT_KEY  # the key a simulator without configured keys accepts


def tiny_sim_config(**kw: Any) -> SimConfig:
    """The simulator the engine tests use: tiny clips, since they test the engine."""
    kw.setdefault("tiny_videos", True)
    return SimConfig(**kw)


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

    async def collect(job: JobRecord, urls: list[str], refresh: Any) -> JobChanges:
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
                "output_paths": (path.name,),
                "checksums": (hashlib.sha256(data).hexdigest(),),
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
            aclosing(SqliteStore(self.db)) as job_store,
            aiohttp.ClientSession() as files,
            RunbaseClient(self.base_url, self.key, limiter=limiter, timeout_s=5) as client,
        ):
            engine = RunEngine(
                job_store,
                await job_store.batch(self.batch.id),
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

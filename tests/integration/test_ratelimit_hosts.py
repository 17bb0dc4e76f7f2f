"""One key's limit across hosts: limiters that share no window file (each its own state
folder, each in a process of its own, as on hosts of their own) take every request's
slot in one real PostgreSQL, and the simulator, which counts what arrives, never sees
more than the key's limit in a window (no 429) while they use most of the key's rate.

Compressed time: 20 requests per 1 s, the slots' margin 10 % of the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import psycopg
import pytest

from batchgen.clock import SystemClock
from batchgen.errors import ExitCode, RunNotFound, StateWriteError
from batchgen.run.keys import open_pool
from batchgen.run.options import RunOptions
from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.runbase.shared_window import SharedWindow, key_fingerprint
from batchgen.sim import SimConfig, Simulator
from batchgen.store.pg.db import ensure_schema
from batchgen.store.pg.slots import KeySlots
from tests.support.pgkit import sql
from tests.support.runs import Recorder
from tests.support.slot_taker import INPUT, MODEL, Plan, Tally, result, start

LIMIT, WINDOW = 20, 1.0
MARGIN = 0.1 * WINDOW
ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 2.0  # a taker process imports batchgen before the common start


@pytest.fixture
def key() -> str:
    """A key of this test's own: its advisory lock and its connections' labels are
    the server's, shared by the tests running beside it."""
    return f"sk-hosts-{uuid.uuid4().hex}"


@pytest.fixture
async def sim(key: str) -> AsyncIterator[Simulator]:
    config = SimConfig(keys=[key], rate=(LIMIT, WINDOW), time_scale=0.002, tiny_videos=True)
    async with Simulator(config) as s:
        yield s


def plans(
    sim: Simulator, key: str, url: str, tmp_path: Path, n: int, run_s: float
) -> tuple[list[Plan], float]:
    start_at = time.time() + STARTUP_S
    made = [
        Plan(
            base_url=sim.base_url,
            key=key,
            pg_url=url,
            state_dir=str(tmp_path / f"host{i}"),  # no window file shared
            limit=LIMIT,
            window_s=WINDOW,
            margin_s=MARGIN,
            start_at=start_at,
            until=start_at + run_s,
            name=f"taker{i}-{key_fingerprint(key)}",
        )
        for i in range(n)
    ]
    return made, start_at


def admitted(sim: Simulator) -> int:
    stats = sim.stats()
    return sum(n for by in stats["requests"].values() for k, n in by.items() if k != "429")


async def test_takers_on_three_hosts_hold_one_keys_limit_and_use_it(
    sim: Simulator, key: str, postgres_url: str, tmp_path: Path
) -> None:
    await ensure_schema(postgres_url)
    run_s = 3.0
    made, _ = plans(sim, key, postgres_url, tmp_path, 3, run_s)
    procs = [await start(p, ROOT) for p in made]
    tallies = [await result(p) for p in procs]
    stats = sim.stats()
    assert stats["rate_limited"] == 0, stats["requests"]  # no window held more than 20
    assert stats["max_in_window"] <= LIMIT
    assert all(t.sent > 0 for t in tallies)  # every host got its share
    # together they use most of the key: at most LIMIT per window, and the slots' span
    # is a window and a tenth (sent_in_run: granted between the start and the end)
    in_run = sum(t.sent_in_run for t in tallies)
    assert in_run >= 0.8 * LIMIT * run_s / WINDOW, (in_run, tallies)
    assert admitted(sim) >= in_run  # the simulator got them all (and the stragglers)


async def wait_for_lock(url: str, name: str) -> None:
    """Until the backend labelled ``name`` waits for a lock (its slot's statement)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(500):
            cur = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = %s AND wait_event_type = 'Lock'",
                (name,),
            )
            row = await cur.fetchone()
            if row and row[0]:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"{name} never waited for its slot")


async def test_a_host_paused_with_a_slot_in_hand_does_not_pass_the_limit(
    sim: Simulator, key: str, postgres_url: str, tmp_path: Path
) -> None:
    """The worst moment to pause: the database has recorded the slot, the process has
    not read the answer. Held there (SIGSTOP) longer than a window while two other
    hosts fill the key, it wakes with a slot too old to use: it gives it back."""
    await ensure_schema(postgres_url)
    made, start_at = plans(sim, key, postgres_url, tmp_path, 3, 4.0)
    procs = [await start(p, ROOT) for p in made]
    paused = procs[0]
    await asyncio.sleep(max(0.0, start_at + 1.0 - time.time()))  # all three running
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as holder:
        # hold the key's slot lock (as a slow database would): every taker's next slot
        # statement waits in the server
        lock = "SELECT pg_advisory_lock(hashtextextended(%s, 20))"
        await holder.execute(lock, (key_fingerprint(key),))
        await wait_for_lock(postgres_url, made[0].name)
        # nothing is recorded while the lock is held: slots free up, so the paused
        # taker's statement will record one (not be told to wait)
        await asyncio.sleep(0.3 * WINDOW)
        os.kill(paused.pid, signal.SIGSTOP)
        unlock = "SELECT pg_advisory_unlock(hashtextextended(%s, 20))"
        await holder.execute(unlock, (key_fingerprint(key),))
    try:
        await asyncio.sleep(1.5 * WINDOW)  # the others fill the key meanwhile
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    tallies: list[Tally] = [await result(p) for p in procs]
    stats = sim.stats()
    assert stats["rate_limited"] == 0, (stats["requests"], tallies)
    assert stats["max_in_window"] <= LIMIT
    assert tallies[0].given_back >= 1  # the slot it woke with was never used
    assert tallies[0].sent > 0  # ... and it went on after the pause


async def test_the_database_gone_fails_the_request_unsent(
    sim: Simulator, key: str, postgres_url: str, tmp_path: Path
) -> None:
    """No slot, no request: the database unreachable is a state write that failed (75)."""
    await ensure_schema(postgres_url)
    name = f"slots-{key_fingerprint(key)}"
    slots = await KeySlots.open(
        f"{postgres_url}&application_name={name}",
        limit=LIMIT,
        window_s=WINDOW,
        margin_s=MARGIN,
    )
    limiter = RequestLimiter(
        LIMIT,
        WINDOW,
        shared=SharedWindow.for_key(key, tmp_path),
        slots=slots.for_key(key_fingerprint(key)),
    )
    async with RunbaseClient(sim.base_url, key, limiter=limiter, timeout_s=5.0) as client:
        with pytest.raises(RunNotFound):
            await client.get_run("run_none")  # the slot taken, the request sent
        before = sim.stats()["requests"]
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            # the server drops our slots' connection, as a restart or a network cut does
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (name,),
            )
        with pytest.raises(StateWriteError) as gone:
            await client.get_run("run_none")
    await slots.aclose()
    assert gone.value.exit_code == ExitCode.INTERRUPTED  # 75: resume once it answers
    assert "batchgen resume" in str(gone.value)
    assert sim.stats()["requests"] == before  # nothing was sent without its slot


async def test_open_pool_given_the_database_takes_every_requests_slot_there(
    sim: Simulator, key: str, postgres_url: str, tmp_path: Path
) -> None:
    """The runner's hook: ``open_pool(..., slots_url=URL)``; a POST and a GET, two slots
    under the key's fingerprint, on the database's clock."""
    await ensure_schema(postgres_url)
    async with AsyncExitStack() as stack:
        pool = await open_pool(
            stack,
            [key],
            (LIMIT, WINDOW),
            sim.base_url,
            RunOptions(state_dir=tmp_path),
            SystemClock(),
            [],
            slots_url=postgres_url,
        )
        client = pool.first.client
        run = await client.create_run(MODEL, INPUT, idempotency_key="one")
        await client.get_run(run.id)
    rows = sql(postgres_url, "SELECT key_fingerprint FROM key_slot")
    assert [r["key_fingerprint"] for r in rows] == [key_fingerprint(key)] * 2


async def test_full_rate_is_back_within_three_windows_after_a_429_with_slots(
    sim: Simulator, key: str, postgres_url: str, tmp_path: Path
) -> None:
    """Another client of the key, outside any limiter, fills the simulator's window: our
    next request is answered 429. The pause and the halved rate are this process's; the
    third window from the 429 is at the full rate again, slots and all."""
    await ensure_schema(postgres_url)
    slots = await KeySlots.open(postgres_url, limit=LIMIT, window_s=WINDOW, margin_s=MARGIN)
    limiter = RequestLimiter(
        LIMIT,
        WINDOW,
        shared=SharedWindow.for_key(key, tmp_path),
        slots=slots.for_key(key_fingerprint(key)),
    )
    rec = Recorder()
    end = time.monotonic() + 5.0

    async def demand() -> None:
        while time.monotonic() < end:
            with contextlib.suppress(RunNotFound):
                await client.get_run("run_none", priority=1)

    async def rogue() -> None:
        await asyncio.sleep(1.0)
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers) as session:

            async def get() -> None:
                async with session.get(f"{sim.base_url}/api/v1/runs/run_none") as resp:
                    await resp.read()

            # flood until one of ours is answered 429, then leave the key alone
            while not any(e.status == 429 for e in rec.events) and time.monotonic() < end:
                await asyncio.gather(*(get() for _ in range(LIMIT)))

    async with RunbaseClient(
        sim.base_url, key, limiter=limiter, timeout_s=5.0, observers=[rec]
    ) as client:
        await asyncio.gather(rogue(), *(demand() for _ in range(4)))
    await slots.aclose()
    ours = [(e.at - e.elapsed_s, e.status) for e in rec.events]
    hits = [t for t, status in ours if status == 429]
    assert hits, "the rogue client did not fill the window"
    sent = sorted(t for t, status in ours if status != 429)
    pause_end = max(hits) + WINDOW  # the pause: a window (plus jitter) after the 429
    span = WINDOW + limiter.margin_s
    third = [t for t in sent if pause_end + span <= t < pause_end + 2 * span]
    # the full rate (20), less what the pause's jitter (up to 10 % of a window) and the
    # slots' span (1.1 windows) may shift out of it
    assert len(third) >= LIMIT - 2, (len(third), limiter.stats())


async def test_a_database_too_slow_for_its_slots_stops_the_request(
    sim: Simulator, key: str, postgres_url: str, tmp_path: Path
) -> None:
    """Every slot late (here: a margin of 0.1 ms, which no round trip meets): not a
    run that hangs asking forever, but a state failure (75) after ten in a row, and no
    request sent on a late slot."""
    await ensure_schema(postgres_url)
    slots = await KeySlots.open(postgres_url, limit=LIMIT, window_s=WINDOW, margin_s=0.0001)
    limiter = RequestLimiter(LIMIT, WINDOW, slots=slots.for_key(key_fingerprint(key)))
    async with RunbaseClient(sim.base_url, key, limiter=limiter, timeout_s=5.0) as client:
        with pytest.raises(StateWriteError) as slow:
            await client.get_run("run_none")
    await slots.aclose()
    assert slow.value.exit_code == ExitCode.INTERRUPTED
    assert "too slow" in str(slow.value)
    assert slots.given_back == 10
    assert sim.stats()["requests"] == {}  # nothing left on a late slot
    assert sql(postgres_url, "SELECT count(*) AS n FROM key_slot")[0]["n"] == 0

"""One key's limit held across workers by ``KeySlots`` on a real PostgreSQL: three
takers hammering one key never put more than ``limit`` requests in any span of the
database's clock, still get close to the whole rate, and another key is not slowed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from batchgen.store.pg.slots import KeySlots
from batchgen.store.pg.store import PostgresStore
from tests.support.pgkit import sql

LIMIT, WINDOW, MARGIN = 5, 0.6, 0.1
SPAN = WINDOW + MARGIN
RUN_S = 2.5


@pytest.fixture
async def takers(postgres_url: str) -> AsyncIterator[list[KeySlots]]:
    await (await PostgresStore.open(postgres_url, heartbeat_every=0)).aclose()  # the schema
    made = [
        await KeySlots.open(postgres_url, limit=LIMIT, window_s=WINDOW, margin_s=MARGIN)
        for _ in range(3)
    ]
    yield made
    for taker in made:
        await taker.aclose()


async def hammer(taker: KeySlots, key: str, until: float) -> int:
    sent = 0
    while time.monotonic() < until:
        wait = await taker.take(key)
        if wait:
            await asyncio.sleep(wait)
        else:
            sent += 1
    return sent


async def test_three_takers_share_one_keys_limit(postgres_url: str, takers: list[KeySlots]) -> None:
    until = time.monotonic() + RUN_S
    counts = await asyncio.gather(
        *(hammer(t, "key-a", until) for t in takers), hammer(takers[0], "key-b", until)
    )
    rows = sql(
        postgres_url,
        "SELECT extract(epoch FROM at)::float8 AS t FROM key_slot "
        "WHERE key_fingerprint = 'key-a' ORDER BY at",
    )
    times = [r["t"] for r in rows]
    assert len(times) == sum(counts[:3])
    # no span of the database's clock holds more than LIMIT requests of the key
    for i, start in enumerate(times):
        assert sum(1 for t in times[i:] if t < start + SPAN) <= LIMIT
    # ... and the key is used: close to LIMIT per span over the run
    assert len(times) >= 0.7 * LIMIT * RUN_S / SPAN
    assert all(n > 0 for n in counts[:3])  # every taker got slots
    assert counts[3] >= 0.7 * LIMIT * RUN_S / SPAN  # another key has a limit of its own

"""A PostgreSQL state database that stops answering does not hang the run.

A server that stops answering without closing the connection (a network cut, a host
frozen) looks, from the client, like a statement that never ends; a statement stuck
behind a lock looks the same, and that is how these tests make one, on a real
PostgreSQL: a second connection holds the key's advisory lock (the slot statement
waits for it) or the ``job`` table's lock (the store's writes and reads wait). The
statement is cancelled at its bound and the caller gets ``StateWriteError`` (exit 75,
resumable, one line, the URL's password masked): the request whose slot it was is not
sent, the write changed nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest

from batchgen.errors import ExitCode, StateWriteError
from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.runbase.shared_window import key_fingerprint
from batchgen.sim import SimConfig, Simulator
from batchgen.states import JobState
from batchgen.store.pg.db import ensure_schema
from batchgen.store.pg.slots import KeySlots
from batchgen.store.pg.store import PostgresStore
from tests.integration.test_engine_postgres_takeover import make_batch
from tests.support.pgkit import sql

BOUND_S = 0.5
SECRET = "pw-Tq55vE"


def with_password(url: str) -> str:
    """The URL with a password (the test server trusts 127.0.0.1: sent, ignored)."""
    out = url.replace("postgres@", f"postgres:{SECRET}@", 1)
    assert SECRET in out
    return out


def one_masked_line(exc: StateWriteError) -> str:
    text = str(exc)
    assert exc.exit_code == ExitCode.INTERRUPTED  # 75: resume once it answers
    assert "\n" not in text and SECRET not in text and "postgres:***@" in text, text
    assert f"within {BOUND_S:g}s" in text and "batchgen resume" in text, text
    return text


async def test_a_slot_statement_without_an_answer_fails_the_request_unsent(
    postgres_url: str,
) -> None:
    key = f"sk-timeout-{uuid.uuid4().hex}"
    fingerprint = key_fingerprint(key)
    await ensure_schema(postgres_url)
    slots = await KeySlots.open(with_password(postgres_url), window_s=1.0, timeout_s=BOUND_S)
    limiter = RequestLimiter(20, 1.0, slots=slots.for_key(fingerprint))
    config = SimConfig(keys=[key], rate=(20, 1.0), time_scale=0.002, tiny_videos=True)
    lock = "SELECT pg_advisory_lock(hashtextextended(%s, 20))"
    try:
        async with (
            Simulator(config) as sim,
            RunbaseClient(sim.base_url, key, limiter=limiter, timeout_s=5.0) as client,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as holder,
        ):
            await holder.execute(lock, (fingerprint,))  # the slot statement waits for it
            started = time.monotonic()
            with pytest.raises(StateWriteError) as hung:
                await client.get_run("run_none")
            took = time.monotonic() - started
            await holder.execute("SELECT pg_advisory_unlock_all()")
            await asyncio.sleep(0.2)  # a statement still waiting would record its slot now
            sent = sim.stats()["requests"]
    finally:
        await slots.aclose()
    assert "a request slot" in one_masked_line(hung.value)
    assert BOUND_S <= took < BOUND_S + 1.5, took
    assert sent == {}  # no request without its slot
    # the statement was cancelled in the server, not left to record a slot later
    rows = sql(postgres_url, "SELECT count(*) AS n FROM key_slot WHERE key_fingerprint = %(k)s",
               {"k": fingerprint})  # fmt: skip
    assert rows[0]["n"] == 0


async def test_a_store_write_or_read_without_an_answer_stops_and_changes_nothing(
    postgres_url: str,
) -> None:
    store = await PostgresStore.open(
        with_password(postgres_url), heartbeat_every=0, timeout_s=BOUND_S
    )
    try:
        b = make_batch(postgres_url, 1)
        (job,) = await store.page_queued(b, limit=1)
        async with await psycopg.AsyncConnection.connect(postgres_url) as holder:
            await holder.execute("LOCK TABLE job IN ACCESS EXCLUSIVE MODE")  # until rollback
            started = time.monotonic()
            with pytest.raises(StateWriteError) as write:
                await store.move(job, JobState.CANCELED, at=1.0)
            wrote = time.monotonic() - started
            with pytest.raises(StateWriteError) as read:
                await store.counts(b)
            await holder.rollback()
        await asyncio.sleep(0.2)  # a statement still waiting would move the job now
    finally:
        await store.aclose()
    assert "a write" in one_masked_line(write.value)
    assert "a read" in one_masked_line(read.value)
    assert BOUND_S <= wrote < BOUND_S + 1.5, wrote
    (row,) = sql(postgres_url, "SELECT state FROM job WHERE id = %(id)s", {"id": job.id})
    assert row["state"] == "queued"
    assert sql(postgres_url, "SELECT count(*) AS n FROM event")[0]["n"] == 0

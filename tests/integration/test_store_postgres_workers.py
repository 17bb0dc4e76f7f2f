"""Three workers on one PostgreSQL batch of 300 jobs, one of them dying with a POST in
flight: every job succeeds once, no idempotency key is sent by two live claims, the
dead worker's jobs go to the others after its lease, and the ledger adds up.

Each worker is a small loop over the store, in the engine's order (intent committed,
then the POST; run id; poll; download), against a stand-in API that answers a replayed
idempotency key with the run it made for it. It is the store's claim protocol under
concurrency, not the engine: the engine has its own tests.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from batchgen.states import JobState
from batchgen.store.pg.store import PostgresStore
from batchgen.store.records import JobRecord, LedgerEntry
from tests.support.pgkit import sql

JOBS = 300
PRICE = 100
LEASE = 1.5
T0 = 1_700_000_000.0


@dataclass
class Api:
    """Runs by idempotency key (a replay answers the same run); every POST counted."""

    runs: dict[str, str] = field(default_factory=dict)
    posts: Counter[str] = field(default_factory=Counter)
    #: keys whose POST is being sent now, and by which worker
    in_flight: dict[str, str] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)

    async def create(self, key: str, owner: str) -> str:
        if key in self.in_flight and self.in_flight[key] != owner:
            self.overlaps.append(key)
        self.in_flight[key] = owner
        self.posts[key] += 1
        await asyncio.sleep(0)
        self.in_flight.pop(key, None)
        return self.runs.setdefault(key, f"run-{len(self.runs)}")


class Died(Exception):
    """The worker stops dead: no aclose, no heartbeat, its claims left to expire."""


async def finish(store: PostgresStore, api: Api, job: JobRecord, die: bool) -> None:
    """Take one claimed job (queued, in doubt, running or downloading) to succeeded."""
    if job.state in (JobState.QUEUED, JobState.IN_DOUBT):
        resend = job.state is JobState.IN_DOUBT
        key = job.idem_key if resend and job.idem_key else f"{job.key}-1"
        sent = await store.record_intent(job, at=T0, attempt=1, idem_key=key,
                                         estimate_micro_usd=PRICE)  # fmt: skip
        if sent is None:
            return
        if die:
            raise Died  # its POST may or may not have left: the others cannot know
        run_id = await api.create(key, store.owner)
        ledger = [LedgerEntry("charge", PRICE, run_id)]
        if resend:  # the replay answered: the possible charge is settled
            ledger.append(LedgerEntry("possible", -PRICE, None, "replay answered"))
        running = await store.record_run_id(sent, at=T0, run_id=run_id,
                                            cost_micro_usd=PRICE, ledger=ledger)  # fmt: skip
        if running is None:
            await store.record_ledger(sent, ledger, at=T0)  # money learnt is money spent
            return
        job = running
    if job.state is JobState.RUNNING:
        polled = await store.record_poll(job, at=T0, created_at="c", completed_at="d")
        if polled is None:
            return
        job = polled
    if job.state is JobState.DOWNLOADING:
        await store.record_download(job, at=T0, output_paths=[f"{job.idx}.mp4"], checksums=["x"])


async def worker(store: PostgresStore, api: Api, batch_id: int, *, die_after: int = 0) -> int:
    """Work the batch until nothing is left to any live worker; returns jobs touched."""
    touched = 0
    while True:
        await store.recover_submitting(batch_id, now=T0)
        work = await store.load_active(batch_id) + await store.page_queued(batch_id, limit=5)
        if not work:
            counts = await store.counts(batch_id)
            if counts["succeeded"] == JOBS:
                return touched
            await asyncio.sleep(0.05)  # others hold the rest: wait for them or their leases
            continue
        for job in work:
            touched += 1
            await finish(store, api, job, die=die_after > 0 and touched >= die_after)


@pytest.fixture
async def stores(postgres_url: str) -> AsyncIterator[list[PostgresStore]]:
    made = [await PostgresStore.open(postgres_url, lease_seconds=LEASE) for _ in range(3)]
    yield made
    for store in made:
        await store.aclose()


async def test_three_workers_one_dying_finish_every_job_once(
    postgres_url: str, stores: list[PostgresStore]
) -> None:
    (row,) = sql(
        postgres_url,
        "INSERT INTO batch (name, model, manifest_path, manifest_sha256, out_dir, "
        "filename_template, created_at, updated_at) VALUES ('b', 'm', '', '', 'out', "
        "'{index}', 0, 0) RETURNING id",
    )
    b = int(row["id"])
    sql(postgres_url, "INSERT INTO job (batch_id, key, idx, input_json, updated_at) "
        "SELECT %(b)s, 'k' || i, i, %(input)s, 0 FROM generate_series(0, %(n)s - 1) AS i",
        {"b": b, "n": JOBS, "input": json.dumps({"prompt": "p"})})  # fmt: skip
    api = Api()
    dying, *alive = stores

    async def die() -> None:
        try:
            await worker(dying, api, b, die_after=10)
        except Died:
            assert dying._heart is not None
            dying._heart.cancel()  # kill -9: no heartbeat, no goodbye

    await asyncio.wait_for(asyncio.gather(die(), *(worker(s, api, b) for s in alive)), timeout=90)
    counts = await alive[0].counts(b)
    assert counts["succeeded"] == JOBS
    assert api.overlaps == []  # no key was being sent by two workers at once
    assert len(api.runs) == JOBS  # the dead worker's POST was replayed with its key
    # with the API ignoring keys, the paid runs would exceed the jobs by the one kill
    assert sum(api.posts.values()) - JOBS <= 1
    totals = await alive[0].totals(b)
    assert (totals.charged, totals.refunded, totals.possible) == (JOBS * PRICE, 0, 0)
    events = sql(postgres_url, "SELECT count(*) AS n FROM event WHERE to_state = 'succeeded'")
    assert events == [{"n": JOBS}]
    took = sql(postgres_url, "SELECT count(DISTINCT job_id) AS n FROM event "
               "WHERE from_state = 'submitting' AND to_state = 'in_doubt'")  # fmt: skip
    assert took == [{"n": 1}]  # the one intent the dead worker left, taken over

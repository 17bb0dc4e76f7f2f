"""A worker killed with SIGKILL on a PostgreSQL batch: no goodbye, no clean-up. Its jobs
stay its own until its lease runs out on the database's clock, then another worker
takes them over: its paid run is polled with its run id (never submitted again), its
POST in flight is in doubt with a possible charge, its queued jobs are free."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys

from batchgen.states import JobState
from batchgen.store.pg.store import PostgresStore
from tests.support.pgkit import sql

LEASE = 1.5
T0 = 1_700_000_000.0

#: the worker to kill: claims the batch, leaves one job running (a paid run) and one
#: submitting (its POST in flight), says so, and waits to be killed
WORKER = """
import asyncio, sys
from batchgen.store.pg.store import PostgresStore
from batchgen.store.records import LedgerEntry

async def main(url, batch_id):
    store = await PostgresStore.open(url, lease_seconds=float(sys.argv[3]))
    first, second, *_ = await store.page_queued(batch_id, limit=10)
    sent = await store.record_intent(first, at=1.0, attempt=1, idem_key="k0",
                                     estimate_micro_usd=500)
    await store.record_run_id(sent, at=2.0, run_id="run-0", cost_micro_usd=500,
                              ledger=[LedgerEntry("charge", 500, "run-0")])
    await store.record_intent(second, at=3.0, attempt=1, idem_key="k1",
                              estimate_micro_usd=500)
    print(store.owner, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def add_batch(url: str, jobs: int) -> int:
    (row,) = sql(
        url,
        "INSERT INTO batch (name, model, manifest_path, manifest_sha256, out_dir, "
        "filename_template, created_at, updated_at) VALUES ('b', 'm', '', '', 'out', "
        "'{index}', 0, 0) RETURNING id",
    )
    for idx in range(jobs):
        sql(url, "INSERT INTO job (batch_id, key, idx, input_json, estimate_micro_usd, "
            "updated_at) VALUES (%(b)s, %(k)s, %(i)s, %(input)s, 500, 0)",
            {"b": row["id"], "k": f"k{idx}", "i": idx,
             "input": json.dumps({"prompt": f"p{idx}"})})  # fmt: skip
    return int(row["id"])


async def test_a_killed_workers_jobs_go_to_another_once_its_lease_is_out(
    postgres_url: str,
) -> None:
    survivor = await PostgresStore.open(postgres_url, lease_seconds=LEASE)
    try:
        b = add_batch(postgres_url, 4)
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, postgres_url, str(b), str(LEASE)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert worker.stdout is not None
            killed_owner = worker.stdout.readline().strip()
            assert killed_owner
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        # its lease still runs: nothing is taken from it yet
        assert await survivor.load_active(b) == []
        assert await survivor.page_queued(b, limit=10) == []
        assert sql(postgres_url, "SELECT id FROM worker WHERE id = %(id)s",
                   {"id": killed_owner}) == [{"id": killed_owner}]  # fmt: skip
        await asyncio.sleep(LEASE + 0.5)
        (doubt,) = await survivor.recover_submitting(b, now=T0)
        assert (doubt.idx, doubt.state, doubt.idem_key) == (1, JobState.IN_DOUBT, "k1")
        active = await survivor.load_active(b)
        assert [(j.idx, j.state, j.run_id) for j in active] == [
            (0, JobState.RUNNING, "run-0"),
            (1, JobState.IN_DOUBT, None),
        ]
        assert [j.idx for j in await survivor.page_queued(b, limit=10)] == [2, 3]
        totals = await survivor.totals(b)
        assert (totals.spent, totals.possible) == (500, 500)  # the run paid, the POST maybe
        owners = sql(postgres_url, "SELECT DISTINCT owner FROM job")
        assert owners == [{"owner": survivor.owner}]
    finally:
        await survivor.aclose()

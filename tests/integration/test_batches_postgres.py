"""``sync_batch`` and the synchronous store on a real PostgreSQL schema: the same
results as on SQLite, one batch and each job once when workers sync together."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from batchgen.files import on_disk
from batchgen.manifest.loader import load_manifest
from batchgen.states import JobState
from batchgen.store import batches, commands, reports
from batchgen.store import jobs as store
from batchgen.store.schema import open_db
from tests.support.manifests import write_manifest
from tests.support.pgkit import sql
from tests.support.stored import finish

#: what a job row says, as both databases spell it
_COLUMNS = ("key", "idx", "listed", "state", "input_json", "axes_json", "estimate_micro_usd")


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Engine]:
    engine = open_db(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def lite(tmp_path: Path) -> Iterator[Engine]:
    engine = open_db(tmp_path / "state.db")
    yield engine
    engine.dispose()


def jobs_of(db: Engine) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT {', '.join(_COLUMNS)} FROM job ORDER BY idx, key")
        return [(*r[:2], bool(r[2]), *r[3:]) for r in rows]


def sync(db: Engine, manifest: Path) -> batches.SyncResult:
    return batches.sync_batch(db, load_manifest(manifest))


def both(tmp_path: Path, lite: Engine, pg: Engine, subjects: list[str]) -> tuple[Any, Any]:
    """The same manifest synced into both; the two results without the batch id."""
    manifest = write_manifest(tmp_path, subjects)
    a, b = sync(lite, manifest), sync(pg, manifest)
    return a.__class__(0, *[getattr(a, f) for f in _RESULT]), b.__class__(
        0, *[getattr(b, f) for f in _RESULT]
    )


_RESULT = ("created", "added", "unlisted", "relisted", "total")


def test_the_same_manifest_twice_changes_nothing(tmp_path, pg, postgres_url):
    manifest = write_manifest(tmp_path, ["fox", "owl"])
    first = sync(pg, manifest)
    assert (first.created, first.added, first.total) == (True, 4, 4)
    before = sql(postgres_url, "SELECT * FROM job ORDER BY id")
    again = sync(pg, manifest)
    assert again == batches.SyncResult(first.batch_id, False, 0, 0, 0, 4)
    assert sql(postgres_url, "SELECT * FROM job ORDER BY id") == before
    assert [b["name"] for b in sql(postgres_url, "SELECT name FROM batch")] == ["sweep"]


def test_changes_to_the_manifest_are_stored_as_on_sqlite(tmp_path, lite, pg):
    steps = (["fox", "owl", "heron"], ["fox", "heron", "lynx"], ["lynx", "owl", "fox", "heron"])
    for n, subjects in enumerate(steps):
        on_sqlite, on_pg = both(tmp_path, lite, pg, subjects)
        assert on_pg == on_sqlite, subjects
        assert jobs_of(pg) == jobs_of(lite), subjects
        if n == 0:  # a job that ran keeps its index and state when the order changes
            for db in (lite, pg):
                fox = store.page_queued(db, batches.find_batch(db, "sweep").id or 0, limit=1)[0]
                finish(db, fox.id or 0)
    unlisted = sum(1 for row in jobs_of(pg) if not row[2])
    assert unlisted == 0
    assert {row[3] for row in jobs_of(pg)} == {"queued", "succeeded"}


def test_two_syncs_at_once_store_one_batch_with_each_job_once(tmp_path, postgres_url):
    manifest = write_manifest(tmp_path, [f"animal {i}" for i in range(60)])
    loaded = load_manifest(manifest)
    start = threading.Barrier(3)
    results: list[batches.SyncResult] = []
    errors: list[BaseException] = []

    def worker() -> None:
        engine = open_db(postgres_url)  # each its own engine, as each process would
        try:
            start.wait()
            results.append(batches.sync_batch(engine, loaded))
        except BaseException as exc:
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert sorted(r.added for r in results) == [0, 0, 120]
    assert [r.created for r in results].count(True) == 1
    assert {r.batch_id for r in results} == {results[0].batch_id}
    assert sql(postgres_url, "SELECT count(*) AS n FROM batch")[0]["n"] == 1
    keys = sql(postgres_url, "SELECT key, count(*) AS n FROM job GROUP BY key")
    assert len(keys) == 120 and {k["n"] for k in keys} == {1}


def test_finding_looking_up_and_counting_answer_as_on_sqlite(tmp_path, lite, pg):
    both(tmp_path, lite, pg, ["fox", "owl", "heron"])
    for db in (lite, pg):
        batch = batches.find_batch(db, None)
        assert batch.id is not None and batch.name == "sweep" and batch.canceled is False
        keys = [row[0] for row in jobs_of(db)]
        assert reports.lookup_states(db, batch.id, [*keys[:2], "nope"]) == dict.fromkeys(
            keys[:2], "queued"
        )
        assert reports.job_total(db, batch.id) == 6
        assert reports.batch_id_named(db, "sweep") == batch.id
        assert batches.find_jobs(db, batch.id, [keys[0][:10]]) == {
            keys[0][:10]: (store.page_queued(db, batch.id, limit=1)[0].id, "queued")
        }
        job = store.page_queued(db, batch.id, limit=1)[0]
        finish(db, job.id or 0, JobState.FAILED)
        counts = batches.batch_counts(db, batch.id)
        assert counts.by_state["failed"] == 1 and counts.by_state["queued"] == 5
        assert counts.cost_micro_usd == 242_000
        assert counts.estimate_queued_micro_usd == 5 * 242_000
        assert [f.key for f in counts.failed] == [job.key]
        assert store.spent_micro_usd(db, batch.id) == 242_000
        # retry: the failed job's run is paid (charged, never refunded): left alone
        done = commands.requeue(db, batch.id, failed=True, in_doubt=True, now=1.0)
        assert done["paid"] == 1
        canceled = commands.cancel(db, batch.id, abandon=False, now=2.0)
        assert canceled["queued"] == 5
        assert batches.find_batch(db, "sweep").canceled is True
        assert commands.uncancel(db, batch.id, now=3.0) == 5
        assert store.counts(db, batch.id)["queued"] == 5


def test_a_changed_manifest_unlists_and_the_runner_skips_those(tmp_path, lite, pg):
    both(tmp_path, lite, pg, ["fox", "owl", "heron"])
    on_sqlite, on_pg = both(tmp_path, lite, pg, ["fox"])
    assert on_pg == on_sqlite and on_pg.unlisted == 4
    batch = batches.find_batch(pg, "sweep")
    queued = store.page_queued(pg, batch.id or 0, limit=100)
    assert {json.loads(j.axes_json)["subject"] for j in queued} == {"fox"}


def test_the_engine_reads_and_the_output_check_answer_as_on_sqlite(tmp_path, lite, pg):
    both(tmp_path, lite, pg, ["fox", "owl", "heron"])
    seen = []
    for db in (lite, pg):
        batch_id = batches.find_batch(db, "sweep").id or 0
        first, second, third = store.page_queued(db, batch_id, limit=3)
        finish(db, first.id or 0)
        finish(db, second.id or 0, JobState.FAILED)
        # a job left submitting by a process that died: in doubt, a possible charge
        assert store.move(db, third, JobState.SUBMITTING, attempts=1, idem_key="k") is not None
        recovered = store.recover_submitting(db, batch_id, now=10.0)
        assert [j.id for j in recovered] == [third.id]
        store.set_canceled(db, batch_id, canceled=True, abandon=False)
        flags = store.batch_flags(db, batch_id)
        store.set_canceled(db, batch_id, canceled=False, abandon=False)
        store.touch_batch(db, batch_id, 20.0)
        # the succeeded job's file is not on disk: the output check sends it back
        damaged = on_disk.find_damaged(db, batch_id, tmp_path / "out", verify=False)
        moved = on_disk.mark_for_repair(db, damaged, now=30.0)
        seen.append(
            (
                flags,
                store.counts(db, batch_id),
                [(j.key, j.state) for j in store.load_active(db, batch_id)],
                [(f.key, f.code) for f in store.failures(db, batch_id)],
                store.in_doubt_since(db, batch_id, 0.0),
                len(store.recent_durations(db, "bytedance/seedance-1-pro")),
                [j.key for j in store.iter_jobs(db, batch_id, states=[JobState.QUEUED])],
                [d.reason for d in damaged],
                on_disk.repaired(db, moved),
                store.get_batch(db, batch_id).updated_at,
                batches.batch_counts(db, batch_id).possible_micro_usd,
            )
        )
    assert seen[0] == seen[1]
    assert seen[1][0] == (True, False) and seen[1][4] == 1 and seen[1][8] == 0
    assert len(seen[1][7]) == 1 and "is missing" in seen[1][7][0]

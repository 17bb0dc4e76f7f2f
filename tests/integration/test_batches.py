"""Storing a manifest's jobs (``sync_batch``) and finding batches, on real SQLite files
and real YAML manifests."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from batchgen.errors import StateError
from batchgen.manifest.loader import Overrides, load_manifest
from batchgen.states import JobState
from batchgen.store import batches
from batchgen.store import jobs as store
from batchgen.store.schema import SCHEMA_VERSION, open_db
from tests.support.manifests import write_manifest
from tests.support.stored import by_subject, finish, rows


def sync(db: Engine, manifest: Path) -> batches.SyncResult:
    return batches.sync_batch(db, load_manifest(manifest))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def db(db_path: Path) -> Engine:
    return open_db(db_path)


def test_a_new_manifest_creates_the_batch_and_its_queued_jobs(tmp_path, db, db_path):
    manifest = write_manifest(tmp_path, ["fox", "owl", "heron"])
    loaded = load_manifest(manifest)
    result = batches.sync_batch(db, loaded)
    assert result == batches.SyncResult(
        batch_id=result.batch_id, created=True, added=6, unlisted=0, relisted=0, total=6
    )
    batch = batches.find_batch(db, "sweep")
    assert batch.id == result.batch_id
    assert batch.model == "bytedance/seedance-1-pro"
    assert batch.manifest_path == str(manifest.absolute())
    assert batch.manifest_sha256 == loaded.sha256
    assert batch.out_dir == str(tmp_path / "out")
    assert batch.filename_template == "{index:03d}-{subject}"
    assert json.loads(batch.settings_json) == json.loads(json.dumps(loaded.settings))
    assert batch.run_date == loaded.run_date.isoformat()
    stored = rows(db_path)
    expanded = list(loaded.jobs())
    assert [r["key"] for r in stored] == [j.key for j in expanded]
    assert [r["idx"] for r in stored] == [j.idx for j in expanded]
    assert [json.loads(r["input_json"]) for r in stored] == [j.input for j in expanded]
    assert [json.loads(r["axes_json"]) for r in stored] == [j.axes for j in expanded]
    assert {r["state"] for r in stored} == {"queued"}
    assert all(r["listed"] == 1 for r in stored)
    # the price table's estimate is stored with each job (720p, 5 s)
    assert {r["estimate_micro_usd"] for r in stored} == {242_000}


def test_the_same_manifest_again_adds_nothing_and_changes_no_row(tmp_path, db, db_path):
    manifest = write_manifest(tmp_path, ["fox", "owl"])
    first = sync(db, manifest)
    before = rows(db_path)
    again = sync(db, manifest)
    assert again == batches.SyncResult(first.batch_id, False, 0, 0, 0, 4)
    assert rows(db_path) == before


def test_a_changed_manifest_adds_unlists_and_relists(tmp_path, db, db_path):
    manifest = write_manifest(tmp_path, ["fox", "owl", "heron"])
    sync(db, manifest)
    write_manifest(tmp_path, ["fox", "heron", "lynx"])  # owl gone, lynx new
    changed = sync(db, manifest)
    assert (changed.created, changed.added, changed.unlisted, changed.relisted) == (
        False,
        2,
        2,
        0,
    )
    assert changed.total == 8
    listed = {k: r["listed"] for k, r in by_subject(db_path).items()}
    assert listed[("owl", "16:9")] == 0 and listed[("owl", "9:16")] == 0
    assert listed[("lynx", "16:9")] == 1 and listed[("fox", "9:16")] == 1
    # the runner never pages an unlisted job that has not started
    assert changed.batch_id is not None
    queued = store.page_queued(db, changed.batch_id, limit=100)
    assert {json.loads(j.axes_json)["subject"] for j in queued} == {"fox", "heron", "lynx"}

    write_manifest(tmp_path, ["fox", "owl", "heron", "lynx"])  # owl back
    back = sync(db, manifest)
    assert (back.added, back.unlisted, back.relisted, back.total) == (0, 0, 2, 8)
    assert all(r["listed"] == 1 for r in rows(db_path))


def test_jobs_already_run_are_never_touched(tmp_path, db, db_path):
    manifest = write_manifest(tmp_path, ["fox", "owl", "heron"])
    result = sync(db, manifest)
    stored = by_subject(db_path)
    finish(db, stored[("fox", "16:9")]["id"])
    finish(db, stored[("owl", "16:9")]["id"], JobState.FAILED)
    ran = {k: r for k, r in by_subject(db_path).items() if r["state"] != "queued"}
    # reorder and drop: owl (failed) leaves the manifest, fox moves to the end
    write_manifest(tmp_path, ["heron", "fox", "lynx"])
    changed = sync(db, manifest)
    assert changed.batch_id == result.batch_id
    after = by_subject(db_path)
    for k, before in ran.items():
        now = after[k]
        for column in ("state", "run_id", "attempts", "idem_key", "cost_micro_usd", "idx"):
            assert now[column] == before[column], (k, column)
        assert now["output_paths_json"] == before["output_paths_json"]
    assert after[("owl", "16:9")]["listed"] == 0  # noted, nothing else
    assert after[("owl", "16:9")]["state"] == "failed"
    assert after[("fox", "16:9")]["listed"] == 1


def test_queued_jobs_follow_the_new_order_and_started_ones_keep_their_index(tmp_path, db, db_path):
    manifest = write_manifest(tmp_path, ["fox", "owl"], ratios=("16:9",))
    sync(db, manifest)
    finish(db, by_subject(db_path)[("fox", "16:9")]["id"])
    write_manifest(tmp_path, ["owl", "fox"], ratios=("16:9",))
    result = sync(db, manifest)
    assert (result.added, result.unlisted, result.relisted) == (0, 0, 0)
    after = by_subject(db_path)
    assert after[("owl", "16:9")]["idx"] == 0  # queued: takes its new place
    assert after[("fox", "16:9")]["idx"] == 0  # succeeded: keeps the index it ran with


def test_reordering_a_prompts_file_stores_nothing_new(tmp_path, db, db_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox at dawn\nan owl at dusk\na heron in the rain\n")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "name: prompts\nout_dir: out\nfilename: '{index}'\n"
        "defaults: {resolution: 720p, duration: '5'}\n"
        "matrix:\n  prompt: {file: prompts.txt}\n"
    )
    sync(db, manifest)
    keys = {r["key"]: r["id"] for r in rows(db_path)}
    prompts.write_text("a heron in the rain\n\na fox at dawn\nan owl at dusk\n")
    again = sync(db, manifest)
    assert (again.added, again.unlisted, again.relisted, again.total) == (0, 0, 0, 3)
    assert {r["key"]: r["id"] for r in rows(db_path)} == keys


def test_two_batches_keep_their_jobs_apart(tmp_path, db):
    a = sync(db, write_manifest(tmp_path, ["fox"], name="a", file="a.yaml"))
    b = sync(db, write_manifest(tmp_path, ["fox"], name="b", file="b.yaml"))
    assert a.batch_id != b.batch_id
    assert (b.created, b.added, b.total) == (True, 2, 2)
    # shrinking b unlists only b's jobs
    smaller = write_manifest(tmp_path, ["fox"], name="b", file="b.yaml", ratios=("16:9",))
    assert sync(db, smaller).unlisted == 1
    assert batches.batch_counts(db, a.batch_id).unlisted == {}


def test_find_batch_picks_the_most_recent_and_names_the_known_ones(tmp_path, db):
    sync(db, write_manifest(tmp_path, ["fox"], name="first", file="a.yaml"))
    sync(db, write_manifest(tmp_path, ["fox"], name="second", file="b.yaml"))
    assert batches.find_batch(db, None).name == "second"
    sync(db, tmp_path / "a.yaml")  # syncing again makes it the most recent
    assert batches.find_batch(db, None).name == "first"
    with pytest.raises(StateError) as err:
        batches.find_batch(db, "thrid")
    assert "'thrid'" in str(err.value)
    assert "first, second" in str(err.value)
    assert err.value.exit_code == 2


def test_find_batch_in_an_empty_database_says_what_to_do(db):
    with pytest.raises(StateError, match="batchgen run"):
        batches.find_batch(db, None)


def test_batch_counts_group_by_state_with_cost_and_failures(tmp_path, db, db_path):
    result = sync(db, write_manifest(tmp_path, ["fox", "owl", "heron"]))
    stored = by_subject(db_path)
    finish(db, stored[("fox", "16:9")]["id"])
    finish(db, stored[("owl", "16:9")]["id"], JobState.FAILED)
    finish(db, stored[("owl", "9:16")]["id"], JobState.FAILED)
    write_manifest(tmp_path, ["fox", "owl"])
    sync(db, tmp_path / "sweep.yaml")  # heron unlisted (2 queued)
    counts = batches.batch_counts(db, result.batch_id)
    assert counts.total == 6
    assert counts.by_state["succeeded"] == 1
    assert counts.by_state["failed"] == 2
    assert counts.by_state["queued"] == 3
    assert counts.unlisted == {"queued": 2}
    assert counts.cost_micro_usd == 3 * 242_000
    assert counts.estimate_queued_micro_usd == 242_000  # the one listed queued job
    assert counts.errors == [batches.ErrorGroup("model_error", "the model refused", 2)]
    assert [f.idx for f in counts.failed] == sorted(f.idx for f in counts.failed)
    assert len(counts.failed) == 2


def test_an_old_database_gains_the_status_index_through_the_migration(tmp_path):
    path = tmp_path / "old.db"
    open_db(path).dispose()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX ix_job_batch_status")
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    open_db(path).dispose()
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    conn.close()
    assert "ix_job_batch_status" in names
    assert version == str(SCHEMA_VERSION)


def test_a_newer_or_foreign_database_is_refused_untouched(tmp_path):
    newer = tmp_path / "newer.db"
    open_db(newer).dispose()
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    before = newer.read_bytes()
    for readonly in (False, True):
        with pytest.raises(StateError, match=r"schema version 99 is newer.*upgrade batchgen"):
            open_db(newer, readonly=readonly)
    assert newer.read_bytes() == before
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE notes (x)")
    conn.close()
    with pytest.raises(StateError, match="not a batchgen state database"):
        open_db(foreign, readonly=True)


def test_wal_full_sync_and_writers_that_queue_instead_of_deadlocking(db_path):
    """Two processes' read-then-write transactions: with BEGIN IMMEDIATE the second
    waits for the first (busy_timeout) instead of failing on a stale read snapshot."""
    first, second = open_db(db_path), open_db(db_path)
    with first.connect() as conn:
        raw: Any = conn.connection.driver_connection
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with first.begin() as conn:
        conn.exec_driver_sql("INSERT INTO meta (key, value) VALUES ('counter', '0')")
    a_read = threading.Event()

    def bump(engine: Engine, hold_s: float) -> None:
        with engine.begin() as conn:
            (value,) = conn.exec_driver_sql("SELECT value FROM meta WHERE key='counter'").one()
            a_read.set()
            time.sleep(hold_s)  # the other writer tries to start meanwhile
            conn.exec_driver_sql(
                "UPDATE meta SET value = ? WHERE key='counter'", (str(int(value) + 1),)
            )

    errors: list[BaseException] = []

    def guarded(engine: Engine, hold_s: float) -> None:
        try:
            bump(engine, hold_s)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    a = threading.Thread(target=guarded, args=(first, 0.3))
    a.start()
    a_read.wait(5)
    b = threading.Thread(target=guarded, args=(second, 0.0))
    b.start()
    a.join(10)
    b.join(10)
    assert errors == []
    with first.connect() as conn:
        value = conn.exec_driver_sql("SELECT value FROM meta WHERE key='counter'").scalar_one()
    assert value == "2"  # neither increment was lost
    first.dispose()
    second.dispose()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    versions=st.lists(
        st.lists(st.sampled_from(["fox", "owl", "heron", "lynx", "wren"]), min_size=1),
        min_size=1,
        max_size=4,
    )
)
def test_re_running_never_duplicates_a_job(tmp_path_factory, versions):
    folder = tmp_path_factory.mktemp("h")
    db = open_db(folder / "state.db")
    seen: set[str] = set()
    for subjects in versions:
        manifest = write_manifest(folder, subjects)
        loaded = load_manifest(manifest)
        keys = {j.key for j in loaded.jobs()}
        result = batches.sync_batch(db, loaded)
        again = batches.sync_batch(db, loaded)
        assert (again.added, again.unlisted, again.relisted) == (0, 0, 0)
        seen |= keys
        stored = rows(folder / "state.db")
        assert len(stored) == len({r["key"] for r in stored}) == len(seen) == result.total
        assert {r["key"] for r in stored if r["listed"]} == keys
    db.dispose()


def test_chunk_boundaries_change_nothing(tmp_path, db, db_path, monkeypatch):
    monkeypatch.setattr(batches, "CHUNK", 3)
    subjects = [f"s{i}" for i in range(10)]
    manifest = write_manifest(tmp_path, subjects)
    assert sync(db, manifest).added == 20
    write_manifest(tmp_path, [*subjects[2:], "x", "y"])
    changed = sync(db, manifest)
    assert (changed.added, changed.unlisted, changed.relisted, changed.total) == (4, 4, 0, 24)
    write_manifest(tmp_path, subjects)
    back = sync(db, manifest)
    assert (back.added, back.unlisted, back.relisted, back.total) == (0, 4, 4, 24)
    assert len({r["key"] for r in rows(db_path)}) == 24


class Interrupted(Exception):
    pass


class StopsAfter:
    """A loaded manifest whose job stream breaks after ``n`` jobs, like a crash mid-sync."""

    def __init__(self, loaded: Any, n: int) -> None:
        self._loaded = loaded
        self._n = n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loaded, name)

    def jobs(self) -> Any:
        for i, job in enumerate(self._loaded.jobs()):
            if i == self._n:
                raise Interrupted
            yield job


def test_a_sync_cut_short_keeps_whole_chunks_and_the_next_one_completes(
    tmp_path, db, db_path, monkeypatch
):
    monkeypatch.setattr(batches, "CHUNK", 4)
    manifest = write_manifest(tmp_path, [f"s{i}" for i in range(5)])
    loaded = load_manifest(manifest)
    with pytest.raises(Interrupted):
        batches.sync_batch(db, StopsAfter(loaded, 6))  # type: ignore[arg-type]
    assert len(rows(db_path)) == 4  # the first chunk committed, the second never began
    result = batches.sync_batch(db, loaded)
    assert (result.created, result.added, result.unlisted, result.total) == (False, 6, 0, 10)
    assert [r["key"] for r in rows(db_path)] == [j.key for j in loaded.jobs()]


def test_expanding_and_storing_stream_instead_of_holding_every_job(tmp_path, monkeypatch):
    """Peak Python memory stays far below what a list of every job takes (~8 MB here):
    only the 16-byte digests and one chunk of rows are ever held."""
    from bench.bench_expand import write_manifest as bench_manifest

    monkeypatch.setattr(batches, "CHUNK", 1_000)
    jobs = 10_000
    loaded = load_manifest(bench_manifest(tmp_path, jobs), overrides=Overrides(max_jobs=jobs))
    db = open_db(tmp_path / "state.db")
    tracemalloc.start()
    try:
        assert sum(1 for _ in loaded.jobs()) == jobs
        expand_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert batches.sync_batch(db, loaded).added == jobs
        sync_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        held = list(loaded.jobs())
        list_peak = tracemalloc.get_traced_memory()[1]
        del held
    finally:
        tracemalloc.stop()
    db.dispose()
    assert list_peak > 6e6, list_peak  # the yardstick: what holding every job costs
    assert expand_peak < list_peak / 3, (expand_peak, list_peak)
    assert sync_peak < list_peak / 2, (sync_peak, list_peak)

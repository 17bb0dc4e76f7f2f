"""A worker among others on a PostgreSQL batch (``run.workers``): a URL is never a file
an output must spare, and the engine's settings for a shared batch."""

from __future__ import annotations

from pathlib import Path

from batchgen.run.options import RunOptions
from batchgen.run.workers import protected_files, shared_work

URL = "postgresql://bob:s3cret@db.example/batches"


def test_a_url_is_no_file_to_protect_a_sqlite_path_is() -> None:
    assert protected_files(Path(URL)).files == ()
    assert protected_files(Path(URL), "m.yaml").files == (("the manifest", Path("m.yaml")),)
    sqlite = [what for what, _ in protected_files(Path("state.db")).files]
    assert sqlite[0] == "the state database" and len(sqlite) > 1  # -wal, -shm, .lock...


def test_a_shared_batch_is_claimed_in_small_pages_and_taken_over_every_third_lease() -> None:
    # a gone worker's jobs wait for its lease anyway; the end of the batch does not wait
    # for this period (engine.takeover.Lookout: test_engine_postgres_takeover)
    assert shared_work(RunOptions(lease_s=30.0), 10) == {"takeover_every_s": 10.0, "page_size": 10}
    assert shared_work(RunOptions(lease_s=1.5), 2) == {"takeover_every_s": 0.5, "page_size": 10}
    # ten queued jobs per key at a time, never more than twice the jobs in flight: the
    # first worker of several must not claim a whole small batch (default concurrency 100)
    assert shared_work(RunOptions(), 100, keys=3)["page_size"] == 30
    assert shared_work(RunOptions(), 100, keys=1)["page_size"] == 10
    assert shared_work(RunOptions(), 8, keys=16)["page_size"] == 16

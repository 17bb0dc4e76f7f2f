"""The read-only readers on real SQLite files, in-process."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from batchgen.manifest.loader import load_manifest
from batchgen.store import batches
from batchgen.store.schema import open_db
from tests.support.manifests import write_manifest
from tests.support.stored import SUBJECTS, files, stored


def test_a_read_stays_consistent_while_a_writer_starts_and_checkpoints(tmp_path):
    """The hazard of ``immutable=1``: a writer folding its WAL into the file mid-read."""
    db_path = stored(tmp_path)
    reader = open_db(db_path, readonly=True)
    with reader.connect() as conn:
        result = conn.exec_driver_sql("SELECT key, last_error FROM job ORDER BY id")
        head = result.fetchmany(50)
        # A run starts meanwhile: every row grows (pages split and move), half go away,
        # and the WAL is folded back into the main file.
        writer = open_db(db_path)
        with writer.begin() as w:
            w.exec_driver_sql("UPDATE job SET last_error = printf('%.2000c', 'x')")
            w.exec_driver_sql("DELETE FROM job WHERE id % 2 = 0")
        raw = writer.raw_connection()
        # PASSIVE: copy into the main file every frame no reader still needs.
        raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
        raw.close()
        rest = result.fetchall()
    # The read saw the database as it was when it began, whole and unchanged.
    assert len(head) + len(rest) == 2 * len(SUBJECTS)
    assert {error for _key, error in [*head, *rest]} == {None}
    # The next read sees the writer's commits.
    with reader.connect() as conn:
        n, errors = conn.exec_driver_sql(
            "SELECT count(*), count(DISTINCT last_error) FROM job"
        ).one()
    assert (n, errors) == (len(SUBJECTS), 1)
    writer.dispose()


def test_a_read_writes_nothing_and_leaves_no_file(tmp_path):
    db_path = stored(tmp_path)
    before = files(tmp_path)
    reader = open_db(db_path, readonly=True)
    batch = batches.find_batch(reader, None)
    assert batch.id is not None
    assert batches.batch_counts(reader, batch.id).total == 2 * len(SUBJECTS)
    with pytest.raises(OperationalError, match="readonly"), reader.begin() as conn:
        conn.exec_driver_sql("UPDATE job SET state = 'failed'")
    assert files(tmp_path) == before  # same bytes and mtimes, no -wal, no -shm
    reader.dispose()
    assert files(tmp_path) == before


def test_a_path_with_url_characters_is_the_file_it_names(tmp_path):
    folder = tmp_path / "a #b?c"
    folder.mkdir()
    db_path = folder / "state 100%20?.db"
    batches.sync_batch(open_db(db_path), load_manifest(write_manifest(tmp_path, ["fox"])))
    assert sorted(p.name for p in folder.iterdir() if ".db" in p.name)[0] == "state 100%20?.db"
    reader = open_db(db_path, readonly=True)
    assert batches.find_batch(reader, "sweep").name == "sweep"
    reader.dispose()

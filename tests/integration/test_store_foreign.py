"""A database that is not batchgen's (or is newer) is refused by every command, exit 2,
and left byte for byte: no table added, no -wal/-shm left, the mtime unchanged."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.errors import BatchgenError, StateError
from batchgen.manifest.loader import load_manifest
from batchgen.store import batches
from batchgen.store.reader import SCHEMA_VERSION
from batchgen.store.schema import open_db
from tests.support.manifests import write_manifest

runner = CliRunner()


def invoke(*args: str) -> int:
    env = {"RUNBASE_API_KEY": "sk-test-0123456789abcdef", "BATCHGEN_DB": None}
    result = runner.invoke(app, list(args), env={**env, "RUNBASE_BASE_URL": "http://127.0.0.1:9"})
    if isinstance(result.exception, BatchgenError):  # what main() turns into the exit code
        return int(result.exception.exit_code)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code


def fingerprint(db: Path) -> tuple[str, int, list[str]]:
    siblings = sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name))
    return hashlib.sha256(db.read_bytes()).hexdigest(), db.stat().st_mtime_ns, siblings


def foreign(db: Path, *, wal: bool = False, meta: bool = False) -> Path:
    conn = sqlite3.connect(db)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('my precious data')")
    if meta:  # a table named like ours, without our version in it
        conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', 'banana')")
    conn.commit()
    conn.close()
    return db


def newer(folder: Path, db: Path) -> Path:
    engine = open_db(db)
    batches.sync_batch(engine, load_manifest(write_manifest(folder, ["fox"], name="b")))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE meta SET value='{SCHEMA_VERSION + 1}'")
    engine.dispose()
    return db


COMMANDS: list[tuple[str, ...]] = [
    ("run", "{manifest}"),
    ("resume",),
    ("retry", "b", "--failed"),
    ("cancel", "b"),
    ("status",),
    ("plan", "{manifest}"),
    ("report", "--out", "{folder}/r.html"),
    ("export", "--out", "{folder}/e.csv"),
]


@pytest.mark.parametrize("kind", ["foreign", "foreign-wal", "foreign-meta", "newer"])
def test_every_command_refuses_a_database_that_is_not_ours(tmp_path: Path, kind: str) -> None:
    manifest = write_manifest(tmp_path, ["fox"], name="b")
    db = tmp_path / "other.db"
    if kind == "newer":
        newer(tmp_path, db)
    else:
        foreign(db, wal=kind == "foreign-wal", meta=kind == "foreign-meta")
    before = fingerprint(db)
    for cmd in COMMANDS:
        args = [a.format(manifest=manifest, folder=tmp_path) for a in cmd]
        assert invoke(*args, "--db", str(db)) == 2, (kind, cmd)
        assert fingerprint(db) == before, (kind, cmd)
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "e.csv").exists()


def test_open_db_names_the_file_and_adds_nothing(tmp_path: Path) -> None:
    db = foreign(tmp_path / "other.db")
    with pytest.raises(StateError, match="not a batchgen state database"):
        open_db(db)
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert tables == ["notes"]


@pytest.mark.parametrize("make", ["missing", "empty-file", "empty-sqlite"])
def test_a_fresh_or_empty_file_becomes_ours(tmp_path: Path, make: str) -> None:
    db = tmp_path / "state.db"
    if make == "empty-file":
        db.write_bytes(b"")
    elif make == "empty-sqlite":
        sqlite3.connect(db).close()
    engine: Any = open_db(db)
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT value FROM meta").scalar_one()
    assert int(version) == SCHEMA_VERSION
    engine.dispose()
    open_db(db).dispose()  # and opens again as ours

"""``batchgen db copy SRC DST`` moves batches from SQLite to PostgreSQL and back losing
nothing: after SQLite -> PostgreSQL -> a new SQLite file, ``status --json`` and
``export`` answer byte for byte what they answered from the first file, every row of
``batch``, ``job``, ``event`` and the ledger ``charge`` is there (ids aside), and what
PostgreSQL holds between is the same rows. A batch DST already has is never
overwritten (exit 2, DST as it was); the URL's password is masked in every output.
The real PostgreSQL of the tests (``postgres_url``); a real run on the simulator."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from batchgen.errors import ExitCode
from batchgen.run.runner import arun_batch
from batchgen.sim import Simulator
from tests.support.engine import KEY, make_batch, prompts
from tests.support.runs import FAST, opts

TABLES = ("batch", "job", "event", "charge")
ALL = "SELECT * FROM {} ORDER BY id"
IDS = {"id", "batch_id", "job_id", "owner", "lease_until", "epoch"}


def batchgen(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        env=env, cwd=folder, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def with_password(url: str) -> str:
    """The test server trusts local connections: a password in the URL is ignored by
    it, and must never be shown by batchgen."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    return urlunsplit(parts._replace(netloc=f"{user}:s3cret@{parts.netloc.split('@')[-1]}"))


def content(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows without their ids (new in DST), booleans as 0/1, in their order."""
    return [
        tuple(int(v) if isinstance(v, bool) else v for k, v in sorted(r.items()) if k not in IDS)
        for r in rows
    ]


def sqlite_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return {t: content([dict(r) for r in conn.execute(ALL.format(t))]) for t in TABLES}
    finally:
        conn.close()


def pg_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        return {t: content(conn.execute(ALL.format(t)).fetchall()) for t in TABLES}


def readers(folder: Path, db: Path) -> list[str]:
    out = []
    for args in (("status", "--json"), *(("export", "--format", f) for f in ("csv", "jsonl"))):
        proc = batchgen(folder, *args, "--db", str(db))
        assert proc.returncode == 0, proc.stderr
        out.append(proc.stdout)
    return out


async def test_sqlite_to_postgres_and_back_loses_nothing(tmp_path: Path, postgres_url: str) -> None:
    first = tmp_path / "first.db"
    async with Simulator(FAST) as sim:
        _db, batch = make_batch(first, prompts(6), tmp_path / "out")
        summary = await arun_batch(first, api_key=KEY, batch=batch.name, options=opts(sim.base_url))
    assert summary.exit_code == 0
    url = with_password(postgres_url)

    there = batchgen(tmp_path, "db", "copy", str(first), url)
    assert there.returncode == 0, there.stderr
    assert f"copied batch {batch.name}: 6 jobs" in there.stdout
    assert "s3cret" not in there.stdout + there.stderr and ":***@" in there.stdout
    assert pg_rows(postgres_url) == sqlite_rows(first)

    back = tmp_path / "back.db"
    home = batchgen(tmp_path, "db", "copy", url, str(back), "--batch", batch.name)
    assert home.returncode == 0, home.stderr
    assert sqlite_rows(back) == sqlite_rows(first)
    assert sqlite_rows(first)["charge"]  # the ledger was there to copy
    assert readers(tmp_path, back) == readers(tmp_path, first)

    # the batch is in both: never overwritten, the destination as it was
    before = pg_rows(postgres_url)
    again = batchgen(tmp_path, "db", "copy", str(first), url)
    assert again.returncode == ExitCode.USAGE
    assert "already has batch" in again.stderr and "s3cret" not in again.stdout + again.stderr
    assert pg_rows(postgres_url) == before
    again = batchgen(tmp_path, "db", "copy", url, str(back))
    assert again.returncode == ExitCode.USAGE and sqlite_rows(back) == sqlite_rows(first)


async def test_an_unknown_batch_is_refused(tmp_path: Path, postgres_url: str) -> None:
    first = tmp_path / "first.db"
    make_batch(first, prompts(2), tmp_path / "out")
    proc = batchgen(tmp_path, "db", "copy", str(first), postgres_url, "--batch", "nope")
    assert proc.returncode == ExitCode.USAGE and "no batch named 'nope'" in proc.stderr

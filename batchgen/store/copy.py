"""``batchgen db copy SRC DST``: batches moved between SQLite files and PostgreSQL.

What a batch is, is four tables: ``batch``, ``job``, ``event`` and the spend ledger
``charge``. Every row of each is copied, column for column; only the row ids are new
(DST may hold other batches), and the ``batch_id``/``job_id`` of events and ledger
rows are mapped to them (a job is found again by its content key, unique in its batch).
So the readers (``status``, ``report``, ``export``, the ledger's sums) answer the same
from DST as from SRC.

Losing nothing is checked, not hoped for: a SRC column that DST does not have refuses
the copy (exit 2), except the claim columns of PostgreSQL (``owner``, ``lease_until``,
``epoch``: which worker holds a job now, meaningless anywhere else). A batch whose name
DST already has refuses the whole copy before anything is written; the copy is one
transaction on DST, so a failure leaves DST as it was. SRC is only read.

SQLite is read and written with the standard library (DST created or migrated by
``schema.open_db`` first); PostgreSQL through ``batchgen.store.pg.db``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.errors import StateError
from batchgen.redact import mask_url
from batchgen.store.reader import open_readonly
from batchgen.store.target import postgres_url

__all__ = ["Copied", "copy_batches"]

TABLES = ("batch", "job", "event", "charge")
#: PostgreSQL's claim columns: who holds a job now, left behind on purpose
CLAIMS = frozenset({"owner", "lease_until", "epoch"})
Row = dict[str, Any]


@dataclass
class Copied:
    """What one copy moved, per batch name: (jobs, events, ledger rows)."""

    batches: dict[str, tuple[int, int, int]] = field(default_factory=dict)


@dataclass
class _Batch:
    row: Row
    jobs: list[Row]
    events: list[Row]
    charges: list[Row]


def shown(target: str) -> str:
    """A SRC/DST as it may be printed: a URL's password masked."""
    url = postgres_url(target)
    return mask_url(url) if url is not None else target


async def copy_batches(src: str, dst: str, *, batch: str | None = None) -> Copied:
    """Copy ``batch`` (None: every batch) from ``src`` to ``dst`` (module docstring)."""
    if src == dst or postgres_url(src) == postgres_url(dst) is not None:
        raise StateError(f"db copy: {shown(src)} is both the source and the destination")
    source = await _read(src, batch)
    if not source:
        what = f"no batch named {batch!r}" if batch else "no batch"
        raise StateError(f"db copy: {shown(src)} has {what}")
    url = postgres_url(dst)
    if url is not None:
        return await _write_pg(url, source, src)
    return _write_sqlite(Path(dst), source, src)


# ---------------------------------------------------------------- reading SRC


async def _read(src: str, batch: str | None) -> list[_Batch]:
    url = postgres_url(src)
    if url is None:
        conn = open_readonly(Path(src))  # missing, foreign, too new: a StateError
        conn.row_factory = sqlite3.Row
        try:
            return _read_sqlite(conn, batch)
        finally:
            conn.close()
    from batchgen.store.pg import db  # psycopg only when PostgreSQL is named

    pg = await db.connect(url)
    try:
        out = []
        where, args = ("WHERE name = %(name)s", {"name": batch}) if batch else ("", {})
        cur = await pg.execute(f"SELECT * FROM batch {where} ORDER BY id", args)
        for b in await cur.fetchall():
            parts = []
            for table in TABLES[1:]:
                cur = await pg.execute(_of_batch(table, "%s"), (b["id"],))
                parts.append(await cur.fetchall())
            out.append(_Batch(b, *parts))
        return out
    except Exception as exc:
        raise db.pg_failure(exc, url) or exc from exc
    finally:
        await pg.close()


def _of_batch(table: str, mark: str) -> str:
    return f"SELECT * FROM {table} WHERE batch_id = {mark} ORDER BY id"


def _read_sqlite(conn: sqlite3.Connection, batch: str | None) -> list[_Batch]:
    where, args = ("WHERE name = ?", (batch,)) if batch else ("", ())
    out = []
    for b in conn.execute(f"SELECT * FROM batch {where} ORDER BY id", args):
        parts = [[dict(r) for r in conn.execute(_of_batch(t, "?"), (b["id"],))] for t in TABLES[1:]]
        out.append(_Batch(dict(b), *parts))
    return out


# ---------------------------------------------------------------- what goes where


def _plan(
    source: Sequence[_Batch], dst_cols: dict[str, dict[str, str]], src: str
) -> dict[str, list[str]]:
    """The columns copied per table; refuses a SRC column DST would lose."""
    cols: dict[str, list[str]] = {}
    for table, sample in zip(TABLES, _samples(source), strict=True):
        have = list(sample) if sample else list(dst_cols[table])
        lost = [c for c in have if c not in dst_cols[table] and c not in CLAIMS]
        if lost:
            raise StateError(
                f"db copy: the destination's {table} table has no {', '.join(lost)} "
                f"(from {shown(src)}): upgrade batchgen where the destination was made"
            )
        cols[table] = [c for c in have if c in dst_cols[table] and c != "id"]
    return cols


def _samples(source: Sequence[_Batch]) -> list[Row | None]:
    first = source[0]
    return [
        first.row,
        next((b.jobs[0] for b in source if b.jobs), None),
        next((b.events[0] for b in source if b.events), None),
        next((b.charges[0] for b in source if b.charges), None),
    ]


def _refuse_existing(names: set[str], source: Sequence[_Batch], dst: str) -> None:
    clash = sorted(b.row["name"] for b in source if b.row["name"] in names)
    if clash:
        raise StateError(
            f"db copy: {shown(dst)} already has batch {', '.join(clash)}; nothing was copied "
            "(never overwritten: pick another destination, or --batch another one)"
        )


def _mapped(row: Row, cols: list[str], batch_id: int, job_ids: dict[int, int]) -> list[Any]:
    values = {**row, "batch_id": batch_id}
    if "job_id" in row:
        values["job_id"] = job_ids[row["job_id"]]
    return [values[c] for c in cols]


# ---------------------------------------------------------------- writing DST


def _write_sqlite(path: Path, source: Sequence[_Batch], src: str) -> Copied:
    from batchgen.store.schema import open_db  # creates or migrates DST

    open_db(path).dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        dst_cols = {
            t: {r[1]: r[2] for r in conn.execute(f"PRAGMA table_info({t})")} for t in TABLES
        }
        cols = _plan(source, dst_cols, src)
        _refuse_existing({r[0] for r in conn.execute("SELECT name FROM batch")}, source, str(path))
        copied = Copied()
        for b in source:
            copied.batches[b.row["name"]] = _insert_sqlite(conn, b, cols)
        conn.execute("COMMIT")
        return copied
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()


def _insert(table: str, cols: list[str], mark: str) -> str:
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"


def _insert_sqlite(
    conn: sqlite3.Connection, b: _Batch, cols: dict[str, list[str]]
) -> tuple[int, int, int]:
    cur = conn.execute(_insert("batch", cols["batch"], "?"), [b.row[c] for c in cols["batch"]])
    new = cur.lastrowid
    assert new is not None
    conn.executemany(
        _insert("job", cols["job"], "?"), [_mapped(j, cols["job"], new, {}) for j in b.jobs]
    )
    by_key = dict(conn.execute("SELECT key, id FROM job WHERE batch_id = ?", (new,)).fetchall())
    job_ids = {j["id"]: by_key[j["key"]] for j in b.jobs}
    for table, rows in (("event", b.events), ("charge", b.charges)):
        conn.executemany(
            _insert(table, cols[table], "?"), [_mapped(r, cols[table], new, job_ids) for r in rows]
        )
    return len(b.jobs), len(b.events), len(b.charges)


async def _write_pg(url: str, source: Sequence[_Batch], src: str) -> Copied:
    from batchgen.store.pg import db

    conn = await db.connect(url)
    try:
        await db.ensure_schema(url)
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = ANY(%(t)s)",
                {"t": list(TABLES)},
            )
            dst_cols: dict[str, dict[str, str]] = {t: {} for t in TABLES}
            for r in await cur.fetchall():
                dst_cols[r["table_name"]][r["column_name"]] = r["data_type"]
            cols = _plan(source, dst_cols, src)
            # the batch table locked: a batch of the same name cannot appear meanwhile
            await conn.execute("LOCK TABLE batch IN SHARE ROW EXCLUSIVE MODE")
            cur = await conn.execute("SELECT name FROM batch")
            _refuse_existing({r["name"] for r in await cur.fetchall()}, source, url)
            copied = Copied()
            for b in source:
                copied.batches[b.row["name"]] = await _insert_pg(conn, b, cols, dst_cols)
            return copied
    except Exception as exc:
        raise db.pg_failure(exc, url) or exc from exc
    finally:
        await conn.close()


def _typed(values: list[Any], cols: list[str], types: dict[str, str]) -> list[Any]:
    """SQLite keeps booleans as 0/1; PostgreSQL's boolean columns want True/False."""
    return [
        bool(v) if v is not None and types[c] == "boolean" else v
        for v, c in zip(values, cols, strict=True)
    ]


async def _insert_pg(
    conn: Any, b: _Batch, cols: dict[str, list[str]], types: dict[str, dict[str, str]]
) -> tuple[int, int, int]:
    def sql(table: str) -> str:
        return _insert(table, cols[table], "%s")

    def rows(table: str, items: list[Row], new: int, job_ids: dict[int, int]) -> list[list[Any]]:
        names = cols[table]
        return [_typed(_mapped(r, names, new, job_ids), names, types[table]) for r in items]

    values = _typed([b.row[c] for c in cols["batch"]], cols["batch"], types["batch"])
    cur = await conn.execute(sql("batch") + " RETURNING id", values)
    new = (await cur.fetchone())["id"]
    async with conn.cursor() as many:
        await many.executemany(sql("job"), rows("job", b.jobs, new, {}))
        cur = await conn.execute("SELECT key, id FROM job WHERE batch_id = %s", (new,))
        by_key = {r["key"]: r["id"] for r in await cur.fetchall()}
        job_ids = {j["id"]: by_key[j["key"]] for j in b.jobs}
        await many.executemany(sql("event"), rows("event", b.events, new, job_ids))
        await many.executemany(sql("charge"), rows("charge", b.charges, new, job_ids))
    return len(b.jobs), len(b.events), len(b.charges)

"""Reading the spend ledger (the ``charge`` table) with the standard library alone.

Spend is a sum over ledger rows: charges minus refunds, and apart from them the
*possible* charges (POSTs whose answer was lost; settled rows cancel them out). The
budget counts all three. Every read takes a DB-API connection (sqlite3 for ``status``,
psycopg on PostgreSQL) or a SQLAlchemy engine (the engine, the report), read through
its DB-API connection; the SQL means the same on both (``store.dbapi``).

A job found ``submitting`` counts as a possible charge of its estimate (its POST is in
flight, or the process that sent it died) until a run recovers it and writes its row.

A database of schema version 2 (no ledger yet) opened by a read-only command is not
migrated (never written): it is read as the migration would backfill it, from each
job's run id and cost and its in-doubt state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from batchgen.store.dbapi import is_sqlite, qmark

#: a DB-API connection (sqlite3, psycopg), or a SQLAlchemy engine (read through its own)
Db = Any

#: what version 3's migration backfills, for a version-2 database read in place
_LEGACY = (
    "(SELECT batch_id, id AS job_id, run_id, idem_key, 'charge' AS kind, "
    "cost_micro_usd AS amount_micro_usd, coalesce(submitted_at, updated_at) AS at "
    "FROM job WHERE run_id IS NOT NULL AND cost_micro_usd > 0 "
    "UNION ALL SELECT batch_id, id, NULL, idem_key, 'possible', estimate_micro_usd, "
    "updated_at FROM job WHERE run_id IS NULL AND state IN ('in_doubt', 'submitting'))"
)


@dataclass(frozen=True, slots=True)
class Totals:
    charged: int = 0
    refunded: int = 0
    possible: int = 0  # net: lost answers not settled by a run

    @property
    def spent(self) -> int:
        """What the service charged and kept, as far as its answers tell."""
        return self.charged - self.refunded

    @property
    def budgeted(self) -> int:
        """What the budget counts: the spend plus every possible charge."""
        return self.spent + self.possible


@dataclass(frozen=True, slots=True)
class PossibleJob:
    """A job with a POST whose answer was lost and was not shown to be a replay."""

    key: str
    idx: int
    possible_micro_usd: int
    paid_runs: int  # runs known to be charged for this job

    @property
    def paid_twice(self) -> bool:
        """A run is known and an earlier POST may have made (and charged) another."""
        return self.paid_runs > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "idx": self.idx,
            "possible_usd": self.possible_micro_usd / 1_000_000,
            "possible_micro_usd": self.possible_micro_usd,
            "paid_runs": self.paid_runs,
        }


def has_ledger(conn: Any) -> bool:
    """Whether the database has the ledger (PostgreSQL's schema always has it; SQLite's
    before version 3 does not)."""
    if not is_sqlite(conn):
        return True
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='charge'"
    ).fetchone()
    return row is not None


@contextmanager
def _connection(db: Db) -> Iterator[Any]:
    """A connection taking ``?`` placeholders (``dbapi.qmark``): ``db`` itself when it
    is a DB-API connection, else one of the engine's for the time of the read."""
    if not hasattr(db, "raw_connection"):
        yield qmark(db)
        return
    conn = db.raw_connection()
    try:
        yield qmark(conn.driver_connection)
    finally:
        conn.close()


#: jobs found ``submitting``: their POST is in flight, or its process died; either way it
#: may have charged a run, and their ``possible`` row comes only when a run recovers them
_SUBMITTING = (
    "(SELECT batch_id, id AS job_id, estimate_micro_usd AS amount_micro_usd FROM job "
    "WHERE state = 'submitting')"
)
#: the schema-2 backfill counts them already
_NONE = "(SELECT batch_id, id AS job_id, 0 AS amount_micro_usd FROM job WHERE 1 = 0)"


def _query(db: Db, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """``sql`` with ``{ledger}`` standing for the ledger (or a schema-2 backfill of it)
    and ``{submitting}`` for the possible charges of jobs found submitting."""
    with _connection(db) as conn:
        if has_ledger(conn):
            text = sql.format(ledger="charge", submitting=_SUBMITTING)
        else:
            text = sql.format(ledger=_LEGACY, submitting=_NONE)
        rows: list[tuple[Any, ...]] = conn.execute(text, params).fetchall()
        return rows


_NET = (
    "sum(CASE kind WHEN 'charge' THEN amount_micro_usd "
    "WHEN 'refund' THEN -amount_micro_usd ELSE 0 END)"
)


def totals(db: Db, batch_id: int) -> Totals:
    """The batch's charges, refunds and possible charges (jobs found submitting too)."""
    sums = {"charge": 0, "refund": 0, "possible": 0}
    for kind, amount in _query(
        db,
        "SELECT kind, sum(amount_micro_usd) FROM {ledger} WHERE batch_id = ? GROUP BY kind "
        "UNION ALL SELECT 'possible', sum(amount_micro_usd) FROM {submitting} AS s "
        "WHERE batch_id = ?",
        (batch_id, batch_id),
    ):
        sums[str(kind)] += int(amount or 0)
    return Totals(sums["charge"], sums["refund"], max(0, sums["possible"]))


def possible_jobs(db: Db, batch_id: int, *, limit: int = 100) -> list[PossibleJob]:
    """Jobs whose possible charges are not settled, in ``idx`` order."""
    rows = _query(
        db,
        "SELECT j.key, j.idx, l.possible, (SELECT count(DISTINCT c.run_id) FROM {ledger} AS c "
        "WHERE c.job_id = l.job_id AND c.kind = 'charge') FROM ("
        "SELECT job_id, sum(amount_micro_usd) AS possible FROM ("
        "SELECT job_id, amount_micro_usd FROM {ledger} WHERE batch_id = ? AND kind = 'possible' "
        "UNION ALL SELECT job_id, amount_micro_usd FROM {submitting} AS s WHERE batch_id = ?) "
        "AS p GROUP BY job_id) AS l "
        "JOIN job AS j ON j.id = l.job_id WHERE l.possible > 0 ORDER BY j.idx, j.id LIMIT ?",
        (batch_id, batch_id, limit),
    )
    return [PossibleJob(str(k), int(i), int(p), int(r)) for k, i, p, r in rows]


def job_spend(db: Db, batch_id: int) -> dict[int, int]:
    """job id -> charges minus refunds, every attempt of it."""
    rows = _query(
        db,
        f"SELECT job_id, {_NET} FROM {{ledger}} WHERE batch_id = ? GROUP BY job_id",
        (batch_id,),
    )
    return {int(job_id): int(net or 0) for job_id, net in rows}


def by_key(db: Db, batch_id: int) -> dict[str | None, tuple[int, int]]:
    """key fingerprint -> (runs charged, charges minus refunds); None: the rows written
    before the key pool (or of a caller without fingerprints)."""
    with _connection(db) as conn:
        if not has_ledger(conn):
            return {}
        rows = conn.execute(
            "SELECT key_fingerprint, count(DISTINCT CASE WHEN kind = 'charge' THEN run_id END), "
            f"{_NET} FROM charge WHERE batch_id = ? GROUP BY key_fingerprint",
            (batch_id,),
        ).fetchall()
    return {fp: (int(runs or 0), int(net or 0)) for fp, runs, net in rows}


def run_net(db: Db, job_id: int, run_id: str) -> int:
    """What the run was charged, minus what was refunded of it."""
    rows = _query(
        db, f"SELECT {_NET} FROM {{ledger}} WHERE job_id = ? AND run_id = ?", (job_id, run_id)
    )
    return int(rows[0][0] or 0) if rows else 0


def run_paid(db: Db, job_id: int, run_id: str) -> bool:
    """Whether the run was charged and not refunded (so it must not be paid again).

    A failed run of a migrated database has no row (schema 2 zeroed its cost): unpaid.
    """
    return run_net(db, job_id, run_id) > 0


def possible_for_key(db: Db, job_id: int, idem_key: str) -> tuple[int, float]:
    """(net possible amount, time of the last possible row) for one idempotency key."""
    rows = _query(
        db,
        "SELECT sum(amount_micro_usd), max(CASE WHEN amount_micro_usd > 0 THEN at END) "
        "FROM {ledger} WHERE job_id = ? AND idem_key = ? AND kind = 'possible'",
        (job_id, idem_key),
    )
    if not rows or rows[0][0] is None:
        return 0, 0.0
    return int(rows[0][0]), float(rows[0][1] or 0.0)

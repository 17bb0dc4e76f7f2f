"""Storing a manifest's batch and jobs in a PostgreSQL state database (``batchgen run``).

``store.batches.sync_batch`` builds the rows and keeps SQLite's path; this module is
PostgreSQL's, with the same decisions (identity is the job key, a queued job follows the
manifest's order, a job no longer listed gets ``listed = false`` and nothing else
changes, a job that ran is never touched) and the same counts back.

Differences, and why:

- One transaction for the whole sync. PostgreSQL has no database-wide write lock, so
  a long transaction holds back no other worker (it locks only the rows it changes,
  and an unchanged manifest changes none); and all or nothing means a crash never
  leaves a prefix of the jobs.
- Several workers may start ``batchgen run MANIFEST --db URL`` at the same moment.
  The transaction first takes an advisory lock on the batch's name
  (``pg_advisory_xact_lock``, released at commit): the syncs of one batch follow one
  another, the second finds the first's rows and changes nothing. The upserts use
  ``ON CONFLICT`` as well, so a batch or a job can never be stored twice whatever else
  writes (``batchgen db copy``).
- The rows go in with ``COPY`` into a temporary table, then one
  ``INSERT … SELECT … ON CONFLICT`` (measured far faster than one INSERT a row); the
  same table holds the manifest's keys for the unlisting, so no second pass over the
  manifest is needed.

The SQL lives here rather than in ``queries.sql``: it is the synchronous side's, sent on
a SQLAlchemy engine's psycopg connection, never by ``PostgresStore``. No psycopg import
either: the connection brings its driver (``batchgen plan`` imports this module).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import Engine

__all__ = ["Rows", "sync_jobs"]

#: ``batch_id -> rows (batch_id, key, idx, variant, input_json, axes_json, price, now)``
Rows = Callable[[int], Iterable[tuple[Any, ...]]]

_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"

_UPSERT_BATCH = """
INSERT INTO batch (name, model, manifest_path, manifest_sha256, out_dir, filename_template,
                   settings_json, run_date, canceled, abandon, created_at, updated_at)
VALUES (%(name)s, %(model)s, %(manifest_path)s, %(manifest_sha256)s, %(out_dir)s,
        %(filename_template)s, %(settings_json)s, %(run_date)s, false, false, %(now)s, %(now)s)
ON CONFLICT (name) DO UPDATE SET
    model = excluded.model, manifest_path = excluded.manifest_path,
    manifest_sha256 = excluded.manifest_sha256, out_dir = excluded.out_dir,
    filename_template = excluded.filename_template, settings_json = excluded.settings_json,
    updated_at = excluded.updated_at
RETURNING id, (xmax = 0) AS created
"""

_LISTING = "SELECT count(*), count(*) FILTER (WHERE NOT listed) FROM job WHERE batch_id = %s"

_TEMP = """
CREATE TEMPORARY TABLE sync_rows (
    key text NOT NULL, idx integer NOT NULL, variant integer NOT NULL,
    input_json text NOT NULL, axes_json text NOT NULL,
    estimate_micro_usd bigint NOT NULL, updated_at double precision NOT NULL
) ON COMMIT DROP
"""

_COPY = (
    "COPY sync_rows (key, idx, variant, input_json, axes_json, estimate_micro_usd, "
    "updated_at) FROM STDIN"
)

# DISTINCT ON: one row per key (ON CONFLICT may not touch a row twice in one statement)
_UPSERT_JOBS = """
INSERT INTO job (batch_id, key, idx, variant, input_json, axes_json, listed, state,
                 attempts, errors, next_attempt_at, estimate_micro_usd, cost_micro_usd,
                 output_paths_json, checksums_json, updated_at)
SELECT DISTINCT ON (key) %(batch_id)s, key, idx, variant, input_json, axes_json, true,
       'queued', 0, 0, 0, estimate_micro_usd, 0, '[]', '[]', updated_at
FROM sync_rows ORDER BY key, idx
ON CONFLICT (batch_id, key) DO UPDATE SET
    listed = true,
    idx = CASE WHEN job.state = 'queued' THEN excluded.idx ELSE job.idx END,
    updated_at = excluded.updated_at
WHERE NOT job.listed OR (job.state = 'queued' AND job.idx <> excluded.idx)
"""

_UNLIST = """
UPDATE job SET listed = false, updated_at = %(now)s
WHERE batch_id = %(batch_id)s AND listed
  AND NOT EXISTS (SELECT 1 FROM sync_rows AS s WHERE s.key = job.key)
"""


def sync_jobs(
    db: Engine, batch: dict[str, Any], rows: Rows
) -> tuple[int, bool, int, int, int, int]:
    """Store ``batch`` (the batch row's columns, ``store.batches._batch_values``) and
    its jobs, in one transaction. Returns ``(batch_id, created, added, unlisted,
    relisted, total)``: ``store.batches.SyncResult``'s fields."""
    proxy = db.raw_connection()
    try:
        conn: Any = proxy.driver_connection
        try:
            result = _sync(conn, batch, rows)
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    finally:
        proxy.close()
    return result


def _sync(conn: Any, batch: dict[str, Any], rows: Rows) -> tuple[int, bool, int, int, int, int]:
    with conn.cursor() as cur:
        cur.execute(_LOCK, ("batchgen sync " + str(batch["name"]),))
        batch_id, created = cur.execute(_UPSERT_BATCH, batch).fetchone()
        total0, unlisted0 = (0, 0) if created else cur.execute(_LISTING, (batch_id,)).fetchone()
        cur.execute(_TEMP)
        streamed = 0
        with cur.copy(_COPY) as copy:
            for row in rows(int(batch_id)):
                copy.write_row(row[1:])
                streamed += 1
        cur.execute(_UPSERT_JOBS, {"batch_id": batch_id})
        total1, unlisted1 = cur.execute(_LISTING, (batch_id,)).fetchone()
        unlisted = 0
        # Every streamed key is now listed: more listed rows than keys means some are gone.
        if total1 - unlisted1 != streamed:
            cur.execute(_UNLIST, {"now": batch["now"], "batch_id": batch_id})
            unlisted = cur.rowcount
    return (
        int(batch_id),
        bool(created),
        int(total1 - total0),
        int(unlisted),
        int(unlisted0 - unlisted1),
        int(total1),
    )

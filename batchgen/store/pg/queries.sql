-- Every SQL statement of the PostgreSQL store, one named block each (procrastinate's
-- layout): a block starts with a line "-- name --", then a line of what it does.
-- Parameters are psycopg's %(name)s; {changes} in move_job is the SET list of the
-- fields a move changes, composed from the JobChanges names only (batchgen.store.pg.queries).
--
-- Times: the job's own times (at, updated_at, next_attempt_at...) are the engine's clock,
-- as in SQLite; a claim's lease is on the DATABASE's clock (now()), the one clock every
-- worker on every host shares.

-- lock_schema --
-- Serialise schema creation between workers starting together (held to commit)
SELECT pg_advisory_xact_lock(4710521925146330245);

-- schema_version --
-- The schema version of this database (None: no batchgen schema yet)
SELECT value FROM meta WHERE key = 'schema_version';

-- has_meta --
-- Whether the meta table exists
SELECT to_regclass('meta') IS NOT NULL;

-- create_schema --
-- The same tables as SQLite's schema 3, plus the claim columns and the workers
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE batch (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    model text NOT NULL,
    manifest_path text NOT NULL,
    manifest_sha256 text NOT NULL,
    out_dir text NOT NULL,
    filename_template text NOT NULL,
    settings_json text NOT NULL DEFAULT '{}',
    run_date text,
    canceled boolean NOT NULL DEFAULT false,
    abandon boolean NOT NULL DEFAULT false,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE TABLE job (
    id bigserial PRIMARY KEY,
    batch_id bigint NOT NULL REFERENCES batch (id),
    key text NOT NULL,
    idx integer NOT NULL,
    variant integer NOT NULL DEFAULT 0,
    input_json text NOT NULL,
    axes_json text NOT NULL DEFAULT '{}',
    listed boolean NOT NULL DEFAULT true,
    state text NOT NULL DEFAULT 'queued',
    run_id text,
    attempts integer NOT NULL DEFAULT 0,
    errors integer NOT NULL DEFAULT 0,
    idem_key text,
    next_attempt_at double precision NOT NULL DEFAULT 0,
    last_error text,
    error_code text,
    estimate_micro_usd bigint NOT NULL DEFAULT 0,
    cost_micro_usd bigint NOT NULL DEFAULT 0,
    submitted_at double precision,
    run_created_at text,
    run_completed_at text,
    finished_at double precision,
    output_paths_json text NOT NULL DEFAULT '[]',
    checksums_json text NOT NULL DEFAULT '[]',
    media_note text,
    updated_at double precision NOT NULL,
    key_fingerprint text,
    -- the claim: which worker holds the job, until when (database clock), and how many
    -- times it has been claimed (a write of an older claim matches no row)
    owner text,
    lease_until timestamptz,
    epoch bigint NOT NULL DEFAULT 0,
    UNIQUE (batch_id, key)
);
CREATE INDEX ix_job_batch_state ON job (batch_id, state, idx, id);
CREATE INDEX ix_job_batch_status
    ON job (batch_id, state, listed, cost_micro_usd, estimate_micro_usd);
CREATE INDEX ix_job_owner ON job (owner) WHERE owner IS NOT NULL;
CREATE TABLE event (
    id bigserial PRIMARY KEY,
    batch_id bigint NOT NULL,
    job_id bigint NOT NULL,
    at double precision NOT NULL,
    from_state text NOT NULL,
    to_state text NOT NULL,
    detail text
);
CREATE INDEX ix_event_job ON event (job_id);
CREATE INDEX ix_event_batch_at ON event (batch_id, at);
CREATE TABLE charge (
    id bigserial PRIMARY KEY,
    batch_id bigint NOT NULL,
    job_id bigint NOT NULL,
    run_id text,
    attempt integer NOT NULL,
    idem_key text,
    kind text NOT NULL,
    amount_micro_usd bigint NOT NULL,
    key_fingerprint text,
    at double precision NOT NULL,
    detail text
);
CREATE INDEX ix_charge_batch ON charge (batch_id, kind, amount_micro_usd);
CREATE INDEX ix_charge_job ON charge (job_id, kind, run_id, amount_micro_usd);
-- one row per request a key sent (the per-key limit across hosts: batchgen.store.pg.slots)
CREATE TABLE key_slot (
    key_fingerprint text NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX ix_key_slot ON key_slot (key_fingerprint, at);
CREATE TABLE worker (
    id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL
);

-- set_schema_version --
-- Record the schema version
INSERT INTO meta (key, value) VALUES ('schema_version', %(version)s);

-- migrate_4 --
-- Schema 3 -> 4: the fingerprint of the key that made each job's run (the key pool)
ALTER TABLE job ADD COLUMN IF NOT EXISTS key_fingerprint text;

-- bump_schema_version --
-- Record a newer schema version
UPDATE meta SET value = %(version)s WHERE key = 'schema_version';

-- register_worker --
-- A worker announces itself (its lease starts now, on the database's clock)
INSERT INTO worker (id, host, pid, lease_until)
VALUES (%(owner)s, %(host)s, %(pid)s, now() + make_interval(secs => %(lease)s));

-- prune_workers --
-- Forget workers gone for an hour (their jobs were free since their lease ran out)
DELETE FROM worker WHERE lease_until < now() - interval '1 hour';

-- heartbeat_worker --
-- The worker is alive: push its lease on
UPDATE worker SET heartbeat_at = now(), lease_until = now() + make_interval(secs => %(lease)s)
WHERE id = %(owner)s;

-- heartbeat_jobs --
-- ...and the lease of every job it holds, in the same transaction
UPDATE job SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE owner = %(owner)s;

-- release_jobs --
-- A worker leaving cleanly hands its jobs back at once (no lease to wait out)
UPDATE job SET owner = NULL, lease_until = NULL WHERE owner = %(owner)s;

-- remove_worker --
-- ...and leaves the worker table
DELETE FROM worker WHERE id = %(owner)s;

-- claim_queued --
-- The next listed queued jobs after the cursor that no live worker holds, claimed for
-- this one; rows another transaction is claiming are skipped, never waited for
WITH picked AS (
    SELECT id FROM job
    WHERE batch_id = %(batch_id)s AND state = 'queued' AND listed
        AND (idx, id) > (%(after_idx)s, %(after_id)s)
        AND (owner IS NULL OR owner = %(owner)s OR lease_until < now())
    ORDER BY idx, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE job SET owner = %(owner)s,
    epoch = CASE WHEN job.owner IS NOT DISTINCT FROM %(owner)s THEN job.epoch
        ELSE job.epoch + 1 END,
    lease_until = now() + make_interval(secs => %(lease)s)
FROM picked WHERE job.id = picked.id
RETURNING job.*;

-- claim_active --
-- Jobs being worked (submitting, in doubt, running, downloading) whose worker is gone
-- (lease expired) or that nobody holds, taken over by this one (epoch + 1)
WITH picked AS (
    SELECT id FROM job
    WHERE batch_id = %(batch_id)s AND state = ANY(%(states)s)
        AND (owner IS NULL OR owner = %(owner)s OR lease_until < now())
    ORDER BY idx, id
    FOR UPDATE SKIP LOCKED
)
UPDATE job SET owner = %(owner)s,
    epoch = CASE WHEN job.owner IS NOT DISTINCT FROM %(owner)s THEN job.epoch
        ELSE job.epoch + 1 END,
    lease_until = now() + make_interval(secs => %(lease)s)
FROM picked WHERE job.id = picked.id
RETURNING job.*;

-- move_job --
-- The check-and-set: the job moves only if it is still in the state the caller saw and
-- the caller's claim still holds (same owner, same epoch); a job nobody live holds is
-- claimed by the move itself. Returns the moved row and the attempt and key it had.
WITH old AS (
    SELECT id, attempts, idem_key FROM job
    WHERE id = %(id)s AND state = %(old)s
        AND CASE WHEN %(epoch)s::bigint IS NULL
            THEN owner IS NULL OR owner = %(owner)s OR lease_until < now()
            ELSE owner = %(owner)s AND epoch = %(epoch)s::bigint END
    FOR UPDATE
), moved AS (
    UPDATE job SET {changes}
        state = %(new)s,
        updated_at = %(at)s,
        owner = CASE WHEN %(release)s THEN NULL ELSE %(owner)s END,
        lease_until = CASE WHEN %(release)s THEN NULL
            ELSE now() + make_interval(secs => %(lease)s) END,
        epoch = CASE WHEN %(epoch)s::bigint IS NULL THEN job.epoch + 1 ELSE job.epoch END
    FROM old WHERE job.id = old.id
    RETURNING job.*
)
SELECT moved.*, old.attempts AS old_attempts, old.idem_key AS old_idem_key
FROM moved JOIN old USING (id);

-- insert_event --
-- One event per move, in the move's transaction
INSERT INTO event (batch_id, job_id, at, from_state, to_state, detail)
VALUES (%(batch_id)s, %(job_id)s, %(at)s, %(from_state)s, %(to_state)s, %(detail)s);

-- insert_charge --
-- One ledger row (never updated: spend is a sum over these)
INSERT INTO charge (batch_id, job_id, run_id, attempt, idem_key, kind, amount_micro_usd,
    key_fingerprint, at, detail)
VALUES (%(batch_id)s, %(job_id)s, %(run_id)s, %(attempt)s, %(idem_key)s, %(kind)s,
    %(amount)s, %(key_fingerprint)s, %(at)s, %(detail)s);

-- lock_batch --
-- The batch row, locked to the end of the transaction: one intent at a time per batch
-- checks and reserves the budget, across every worker
SELECT id FROM batch WHERE id = %(batch_id)s FOR UPDATE;

-- budgeted --
-- What the budget counts: charges - refunds + possible charges + the estimates of the
-- jobs being submitted now (their POST may charge a run)
SELECT coalesce((SELECT sum(CASE kind WHEN 'refund' THEN -amount_micro_usd
                                 ELSE amount_micro_usd END)
                 FROM charge WHERE batch_id = %(batch_id)s), 0)
     + coalesce((SELECT sum(estimate_micro_usd) FROM job
                 WHERE batch_id = %(batch_id)s AND state = 'submitting'), 0);

-- get_batch --
-- One batch
SELECT * FROM batch WHERE id = %(batch_id)s;

-- batch_flags --
-- (canceled, abandon) as stored now
SELECT canceled, abandon FROM batch WHERE id = %(batch_id)s;

-- touch_batch --
-- The batch's updated_at
UPDATE batch SET updated_at = %(now)s WHERE id = %(batch_id)s;

-- counts --
-- Jobs by state (unlisted queued jobs not counted)
SELECT state, count(*) FROM job
WHERE batch_id = %(batch_id)s AND (listed OR state <> 'queued')
GROUP BY state;

-- in_doubt_since --
-- Distinct jobs in doubt at some moment since a time (entered, left, held)
SELECT count(*) FROM (
    SELECT job_id FROM event
    WHERE batch_id = %(batch_id)s AND at >= %(since)s
        AND (to_state = 'in_doubt' OR from_state = 'in_doubt')
    UNION
    SELECT id FROM job WHERE batch_id = %(batch_id)s AND state = 'in_doubt'
) AS seen;

-- failures --
-- Failed jobs, by idx
SELECT key, idx, last_error, error_code FROM job
WHERE batch_id = %(batch_id)s AND state = 'failed'
ORDER BY idx, id LIMIT %(limit)s;

-- recent_durations --
-- The latest finished runs of a model (any batch), latest finished first
SELECT j.input_json, j.run_created_at, j.run_completed_at FROM job AS j
JOIN batch AS b ON b.id = j.batch_id
WHERE b.model = %(model)s AND j.run_created_at IS NOT NULL
    AND j.run_completed_at IS NOT NULL
ORDER BY j.finished_at DESC NULLS LAST LIMIT %(limit)s;

-- totals --
-- Charges, refunds and possible charges of a batch (jobs submitting count their estimate)
SELECT kind, sum(amount_micro_usd) FROM charge WHERE batch_id = %(batch_id)s GROUP BY kind
UNION ALL
SELECT 'possible', sum(estimate_micro_usd) FROM job
WHERE batch_id = %(batch_id)s AND state = 'submitting';

-- possible_jobs --
-- Jobs whose possible charges are not settled, by idx
SELECT j.key, j.idx, l.possible,
    (SELECT count(DISTINCT c.run_id) FROM charge AS c
     WHERE c.job_id = l.job_id AND c.kind = 'charge')
FROM (
    SELECT job_id, sum(amount) AS possible FROM (
        SELECT job_id, amount_micro_usd AS amount FROM charge
        WHERE batch_id = %(batch_id)s AND kind = 'possible'
        UNION ALL
        SELECT id, estimate_micro_usd FROM job
        WHERE batch_id = %(batch_id)s AND state = 'submitting'
    ) AS rows GROUP BY job_id
) AS l
JOIN job AS j ON j.id = l.job_id
WHERE l.possible > 0 ORDER BY j.idx, j.id LIMIT %(limit)s;

-- run_net --
-- What a run was charged, minus what was refunded of it
SELECT coalesce(sum(CASE kind WHEN 'charge' THEN amount_micro_usd
                              WHEN 'refund' THEN -amount_micro_usd ELSE 0 END), 0)
FROM charge WHERE job_id = %(job_id)s AND run_id = %(run_id)s;

-- possible_for_key --
-- (net possible amount, time of the last positive possible row) of one idempotency key
SELECT sum(amount_micro_usd), max(CASE WHEN amount_micro_usd > 0 THEN at END)
FROM charge WHERE job_id = %(job_id)s AND idem_key = %(idem_key)s AND kind = 'possible';

-- submitting_to_recover --
-- Jobs left submitting by a worker that is gone (or by nobody), locked for recovery
SELECT * FROM job
WHERE batch_id = %(batch_id)s AND state = 'submitting'
    AND (owner IS NULL OR lease_until < now())
ORDER BY idx, id
FOR UPDATE SKIP LOCKED;

-- lock_key --
-- One slot taker at a time per key, to the end of the transaction (every host, one clock).
-- Sent with take_slot in one query message: the implicit transaction of that message
-- holds the lock, so it is never held while the server waits for the client
-- (batchgen.store.pg.slots)
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 20));

-- take_slot --
-- Take a slot for one request of a key if fewer than limit were taken in the last span
-- seconds (the window plus the margin for the send-to-arrival delay), on the database's
-- clock at this moment; else how long until the oldest of them leaves the span
WITH recent AS (
    SELECT at FROM key_slot
    WHERE key_fingerprint = %(key)s AND at > clock_timestamp() - make_interval(secs => %(span)s)
    ORDER BY at DESC LIMIT %(limit)s
), verdict AS (
    SELECT count(*) AS n, min(at) AS oldest FROM recent
), taken AS (
    INSERT INTO key_slot (key_fingerprint, at)
    SELECT %(key)s, clock_timestamp() FROM verdict WHERE n < %(limit)s
    RETURNING at
)
SELECT (SELECT count(*) FROM taken) AS taken, (SELECT at FROM taken) AS at,
    extract(epoch FROM (SELECT oldest FROM verdict) + make_interval(secs => %(span)s)
        - clock_timestamp())::float8 AS wait;

-- give_back_slot --
-- A slot taken but not used (its request was never sent): one row of the key at that time
DELETE FROM key_slot WHERE ctid = (
    SELECT ctid FROM key_slot WHERE key_fingerprint = %(key)s AND at = %(at)s LIMIT 1
);

-- prune_slots --
-- Forget a key's requests older than two spans
DELETE FROM key_slot
WHERE key_fingerprint = %(key)s AND at < clock_timestamp() - make_interval(secs => 2 * %(span)s);

"""What a run tells the outside while it runs and when it ends.

The observers a run's own options add (log file, summary file, metrics, notification),
the progress snapshot, the ``RunSummary`` built on every exit path (from what the
database holds, whatever failed before), and the observers' ``finished``/``aclose``,
where one failing observer never keeps the others from hearing the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from batchgen.clock import Clock
from batchgen.engine.dispatcher import RunEngine
from batchgen.errors import ExitCode, Problem
from batchgen.events import Observer, RunSummary
from batchgen.files import on_disk
from batchgen.observe.progress import RequestTally, Snapshot
from batchgen.observe.watch import build_observers
from batchgen.run.failures import one_line
from batchgen.run.options import RunOptions
from batchgen.store import jobs as store
from batchgen.store import ledger
from batchgen.store.schema import Batch

# the run's own logger: these lines belong to the run (and to its --log-file) as before
log = logging.getLogger("batchgen.run.runner")


def unattended_observers(opts: RunOptions, problems: list[Problem]) -> list[Observer]:
    """The observers ``--log-file``, ``--summary-file``, ``--metrics-file`` and
    ``--notify-url`` ask for; a bad one is a problem (exit 2), the others still hear."""
    if not (opts.log_file or opts.summary_file or opts.metrics_file or opts.notify_url):
        return []
    return list(
        build_observers(
            log_file=opts.log_file,
            summary_file=opts.summary_file,
            metrics_file=opts.metrics_file,
            notify_url=opts.notify_url,
            problems=problems,
        )
    )


async def finish(observers: Sequence[Observer], summary: RunSummary) -> None:
    """Every observer hears the end and is closed, whatever another one raises."""
    for obs in observers:
        try:
            obs.finished(summary)
        except Exception as exc:
            log.error("observer %r failed at the end: %s", obs, one_line(str(exc)))
            log.debug("observer failure", exc_info=exc)
        aclose = getattr(obs, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception as exc:
                log.error("observer %r failed to close: %s", obs, one_line(str(exc)))
                log.debug("observer failure", exc_info=exc)


def snapshot(engine: RunEngine, tally: RequestTally, clock: Clock, started: float) -> Snapshot:
    """The progress line's figures now (``started``: the engine's monotonic start)."""
    counts = engine.counts
    remaining = sum(counts.get(s, 0) for s in ("queued", "in_doubt", "submitting"))
    per_job = tally.total / max(1, counts.get("succeeded", 0)) if tally.total else 2.2
    # every key's rate (one key: its limiter's, as always)
    limit_per_s = sum(k.limiter.max_requests / k.limiter.window_s for k in engine.state.keys.keys)
    eta: float | None = 0.0  # nothing left
    if remaining or engine.active:
        eta = remaining * max(2.0, min(per_job, 10.0)) / limit_per_s
    # until the API answers once, neither a rate (of failed connections) nor an eta
    # from it is known
    answered = tally.answered > 0
    unanswered = tally.total > 0 and not answered
    return Snapshot(
        batch=engine.batch.name,
        counts=dict(counts),
        requests_per_s=None if unanswered else tally.per_second(),
        limit_per_s=limit_per_s,
        requests=tally.total,
        spend_micro_usd=engine.budget.spent,
        budget_micro_usd=engine.budget.limit,
        elapsed_s=clock.monotonic() - started,
        eta_s=eta if answered or not eta else None,
        note=engine.stopping,
    )


@dataclass
class Ended:
    """What a run got as far as opening, for its summary (any field may be missing)."""

    batch_name: str
    tally: RequestTally
    clock: Clock
    db: Engine | None = None
    batch: Batch | None = None
    engine: RunEngine | None = None
    out_dir: str = ""
    #: succeeded jobs whose files were missing or damaged, sent back to downloading
    repairs: list[int] = field(default_factory=list)
    #: on PostgreSQL, this worker's id (``host:pid:nonce``); "" on SQLite
    worker: str = ""
    #: the batch's spend when this process started (its own spend is what came after)
    spent_before: int = 0


def build_summary(run: Ended, code: ExitCode, reason: str, started: float) -> RunSummary:
    """The summary of ``run``; what the database cannot tell (it failed) stays empty."""
    counts: dict[str, int] = {}
    keys: list[dict[str, Any]] = []
    spend = possible = 0
    maybe_twice: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    in_doubt = repaired = 0
    out_dir = run.out_dir
    if run.db is not None and run.batch is not None and run.batch.id is not None:
        db, batch_id = run.db, run.batch.id
        try:
            counts = {k: v for k, v in store.counts(db, batch_id).items() if v}
            money = ledger.totals(db, batch_id)
            spend, possible = money.spent, money.possible
            maybe_twice = [p.to_json() for p in ledger.possible_jobs(db, batch_id)]
            failures = [
                {"key": f.key, "idx": f.idx, "error": f.error, "code": f.code}
                for f in store.failures(db, batch_id)
            ]
            in_doubt = store.in_doubt_since(db, batch_id, started)
            repaired = on_disk.repaired(db, run.repairs)
        except Exception as exc:
            log.debug("could not read the final counts: %s", one_line(str(exc)))
        out_dir = out_dir or run.batch.out_dir
    if run.engine is not None:
        in_doubt = max(in_doubt, len(run.engine.in_doubt_seen))
        keys = _key_figures(run)
    finished = run.clock.now()
    return RunSummary(
        batch=run.batch_name,
        exit_code=int(code),
        reason=reason,
        counts=counts,
        in_doubt=in_doubt,
        requests={k: dict(v) for k, v in run.tally.by_route.items()},
        spend_micro_usd=spend,
        wall_s=finished - started,
        out_dir=out_dir,
        started_at=started,
        finished_at=finished,
        failures=failures,
        repaired=repaired,
        possible_micro_usd=possible,
        maybe_paid_twice=maybe_twice,
        keys=keys,
        worker=_worker(run) if run.worker else None,
    )


def _worker(run: Ended) -> dict[str, Any]:
    """This worker of a shared batch: who it is, what it sent and spent itself (the
    engine's budget starts from the batch's spend and adds this process's answers)."""
    host, _, rest = run.worker.partition(":")
    pid = rest.partition(":")[0]
    own = 0 if run.engine is None else max(0, run.engine.budget.spent - run.spent_before)
    return {
        "id": run.worker,
        "host": host,
        "pid": int(pid) if pid.isdigit() else None,
        "requests_total": run.tally.total,
        "spend_micro_usd": own,
        "spend_usd": own / 1e6,
    }


def _key_figures(run: Ended) -> list[dict[str, Any]]:
    """Several keys: each key's requests, runs and spend (``KeyPool.figures`` and the
    ledger); empty with one key."""
    assert run.engine is not None
    figures = run.engine.state.keys.figures()
    if not figures or run.db is None or run.batch is None or run.batch.id is None:
        return figures
    try:
        money = ledger.by_key(run.db, run.batch.id)
    except Exception as exc:
        log.debug("could not read the spend per key: %s", one_line(str(exc)))
        money = {}
    for f in figures:
        runs, spent = money.get(f["key"], (0, 0))
        f.update(runs=runs, spend_usd=spent / 1e6, spend_micro_usd=spent)
    return figures


__all__ = ["Ended", "build_summary", "finish", "snapshot", "unattended_observers"]

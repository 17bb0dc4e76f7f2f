"""Commands: validate, plan, status. Parsing and printing; the work is in the library.

The manifest loader, the schema and the planner are imported inside the commands that
use them, so that ``status`` starts without SQLAlchemy (``batchgen.cli``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from batchgen.cli._app import (
    DbOption,
    JsonOption,
    app,
    finite_option,
    parse_date,
    parse_rate,
)
from batchgen.errors import CommandError, UsageError
from batchgen.redact import mask_urls_deep, mask_urls_in
from batchgen.states import JobState
from batchgen.store import reader
from batchgen.store import status as status_store
from batchgen.store.reader import DEFAULT_DB
from batchgen.store.target import postgres_url
from batchgen.textsafe import printable, printable_json, printable_lines

if TYPE_CHECKING:
    from batchgen.manifest.loader import LoadedManifest

# The manifest code (pydantic, jsonschema) and the store's engine (SQLAlchemy) are
# imported by the commands that need them: `batchgen status` reads with the standard
# library's sqlite3 alone and starts fast.

ManifestArg = Annotated[Path, typer.Argument(help="The YAML manifest.", show_default=False)]
DateOpt = Annotated[
    str | None,
    typer.Option("--date", help="Evaluate date templates for this day (YYYY-MM-DD)."),
]
MaxJobsOpt = Annotated[
    int | None,
    typer.Option("--max-jobs", min=1, help="Refuse a matrix larger than this (default 100,000)."),
]


@contextmanager
def _exit_on_error() -> Iterator[None]:
    """A CommandError becomes its message on stderr and its exit code (2 for bad input)."""
    try:
        yield
    except CommandError as exc:
        print(f"batchgen: {printable_lines(mask_urls_in(str(exc)))}", file=sys.stderr)
        raise typer.Exit(int(exc.exit_code)) from None


def _load(
    manifest: Path, date: str | None, max_jobs: int | None, **overrides: Any
) -> LoadedManifest:
    from batchgen.manifest.loader import Overrides, load_manifest

    return load_manifest(
        manifest,
        date=parse_date(date),
        overrides=Overrides(max_jobs=max_jobs, **overrides),
    )


@app.command()
def validate(
    manifest: ManifestArg,
    date: DateOpt = None,
    max_jobs: MaxJobsOpt = None,
    json_out: JsonOption = False,
) -> None:
    """Check MANIFEST and count its jobs; every problem is listed with file, line and fix.

    Reads nothing but the manifest and the files it names; writes nothing.
    Exit 0 when the manifest is valid, 2 otherwise. With --json, stdout carries
    {"ok": true, "jobs": N, ...} or {"ok": false, "problems": [...]}.

    Example: batchgen validate manifests/example.yaml
    """
    try:
        loaded = _load(manifest, date, max_jobs)
    except UsageError as exc:
        if json_out:
            problems = [mask_urls_deep(dataclasses.asdict(p)) for p in exc.problems]
            _print_json({"ok": False, "problems": problems})
        for problem in exc.problems:
            print(f"error: {mask_urls_in(str(problem))}", file=sys.stderr)
        n = len(exc.problems)
        shown = printable(str(manifest))
        print(f"batchgen: {shown}: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
        raise typer.Exit(int(exc.exit_code)) from None
    if json_out:
        _print_json(
            {
                "ok": True,
                "batch": loaded.name,
                "jobs": loaded.job_count,
                "collapsed": loaded.collapsed,
                "warnings": mask_urls_deep(loaded.warnings),
            }
        )
        return
    for warning in loaded.warnings:
        print(f"warning: {printable(mask_urls_in(warning))}", file=sys.stderr)
    collapsed = (
        f", {loaded.collapsed:,} identical combinations collapsed" if loaded.collapsed else ""
    )
    print(
        f"{printable(str(manifest))}: valid, {loaded.job_count:,} jobs{collapsed} "
        f"(batch {printable(loaded.name)})"
    )


@app.command()
def plan(
    manifest: ManifestArg,
    db: DbOption = Path(DEFAULT_DB),
    date: DateOpt = None,
    max_jobs: MaxJobsOpt = None,
    rate: Annotated[
        str | None, typer.Option("--rate", help="Plan for this request limit, e.g. 20/10s.")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, help="Plan for this many in flight.")
    ] = None,
    budget_usd: Annotated[
        float | None,
        typer.Option(
            "--budget-usd", min=0.0, callback=finite_option, help="Plan against this budget."
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Show what MANIFEST will do and cost: jobs by axis, samples, seconds of video,
    estimated USD and wall time, and a warning past the budget.

    No network, no writes. When the state database already holds the batch, the plan
    says which jobs are new, waiting, in progress, done or no longer listed, and
    prices only those a run would submit.

    Example: batchgen plan manifests/prompt-sweep.yaml --budget-usd 50 --json
    """
    with _exit_on_error():
        loaded = _load(
            manifest,
            date,
            max_jobs,
            rate=parse_rate(rate),
            concurrency=concurrency,
            budget_usd=budget_usd,
        )
        from batchgen.store.schema import open_db

        # Read-only, and only if it exists: plan must never create or change a file. A
        # PostgreSQL URL is always read (one without batchgen's schema: exit 2, untouched).
        engine = open_db(db, readonly=True) if postgres_url(db) or db.exists() else None
        try:
            from batchgen.report.plan import build_plan, render_plan

            result = build_plan(loaded, engine)
        finally:
            if engine is not None:
                engine.dispose()
    # the inputs as shown: an image URL's password masked (batchgen.redact)
    if json_out:
        _print_json(mask_urls_deep(result.to_dict()))
    else:
        print(mask_urls_in(render_plan(result)))


@app.command()
def status(
    batch: Annotated[
        str | None,
        typer.Argument(help="Batch name (default: the most recent one).", show_default=False),
    ] = None,
    db: DbOption = Path(DEFAULT_DB),
    failures: Annotated[
        int, typer.Option("--failures", min=0, help="Failed jobs and error kinds to list.")
    ] = 10,
    json_out: JsonOption = False,
) -> None:
    """Counts by state, jobs in doubt, cost so far, and the failures with their errors.

    Reads the state database only (never the network), fast on a million jobs.
    Exit 2 when the database or the batch does not exist.

    Example: batchgen status nightly-2024-05-01 --json
    """
    with _exit_on_error(), _reading(db) as conn:
        found = status_store.find_batch(conn, batch)
        counts = status_store.batch_counts(conn, found.id, failures=failures)
    report = mask_urls_deep(_status_dict(found, counts))
    if json_out:
        _print_json(report)
    else:
        print(_status_text(report))


def _reading(db: Path) -> AbstractContextManager[Any]:
    """A read-only DB-API connection taking ``?`` (``store.dbapi``): the standard
    library's sqlite3 for a file, psycopg (no SQLAlchemy either) for a PostgreSQL URL."""
    url = postgres_url(db)
    if url is None:
        return reader.reading(db)
    from batchgen.store.pg.db import reading  # psycopg: only for a PostgreSQL database

    return reading(url)


def _print_json(value: Any) -> None:
    print(printable_json(json.dumps(value, indent=2, ensure_ascii=False)))


def _usd(micro: int) -> float:
    return round(micro / 1_000_000, 6)


def _status_dict(batch: status_store.BatchInfo, counts: status_store.BatchCounts) -> dict[str, Any]:
    return {
        "batch": batch.name,
        "model": batch.model,
        "manifest": batch.manifest_path,
        "out_dir": batch.out_dir,
        "canceled": batch.canceled,
        "jobs": counts.total,
        "by_state": counts.by_state,
        "in_doubt": counts.by_state.get(JobState.IN_DOUBT.value, 0),
        "unlisted": counts.unlisted,
        "cost_usd": _usd(counts.cost_micro_usd),
        "estimate_queued_usd": _usd(counts.estimate_queued_micro_usd),
        "possible_usd": _usd(counts.possible_micro_usd),
        "maybe_paid_twice": [j.to_json() for j in counts.maybe_paid_twice],
        "errors": [{"code": g.code, "error": g.error, "jobs": g.jobs} for g in counts.errors],
        "failures": [
            {"idx": f.idx, "key": f.key, "code": f.code, "error": f.error} for f in counts.failed
        ],
        **({"keys": [_key_dict(k) for k in counts.keys]} if counts.keys else {}),
    }


def _key_dict(k: status_store.KeyCounts) -> dict[str, Any]:
    """One key of several (its fingerprint: the key itself is never stored)."""
    return {"key": k.fingerprint, "jobs": k.jobs, "runs": k.runs,
            "spend_usd": _usd(k.spent_micro_usd), "unfinished_paid_runs": k.unfinished}  # fmt: skip


def _status_text(r: dict[str, Any]) -> str:
    by_state: dict[str, int] = r["by_state"]
    shown = ", ".join(f"{state} {n:,}" for state, n in by_state.items() if n) or "none"
    out = [
        f"batch     {r['batch']}" + ("  (canceled)" if r["canceled"] else ""),
        f"model     {r['model']}",
        f"outputs   {r['out_dir']}",
        f"jobs      {r['jobs']:,}: {shown}",
        f"cost      ${r['cost_usd']:,.2f} so far; "
        f"${r['estimate_queued_usd']:,.2f} estimated for the queued jobs",
    ]
    out += [_key_line(k) for k in r.get("keys", [])]
    name = r["batch"]
    if r["maybe_paid_twice"]:
        out.append(
            f"may have been paid twice: up to ${r['possible_usd']:,.2f} more, POST answers "
            "lost (counted against the budget):"
        )
        out += [
            f"  #{j['idx']} {j['key'][:12]}  ${j['possible_usd']:,.2f}"
            + ("" if j["paid_runs"] else " (no run known)")
            for j in r["maybe_paid_twice"]
        ]
    if r["in_doubt"]:
        out.append(
            f"in doubt  {r['in_doubt']:,} (a submission whose outcome is unknown): "
            f"`batchgen retry {name} --in-doubt` resends them with the same key"
        )
    unlisted: dict[str, int] = r["unlisted"]
    if unlisted:
        parts = ", ".join(f"{state} {n:,}" for state, n in unlisted.items())
        out.append(f"unlisted  {sum(unlisted.values()):,} no longer in the manifest ({parts})")
    failed = by_state.get(JobState.FAILED.value, 0)
    if failed:
        out.append(f"failures  {failed:,}; by error:")
        out += [f"  {g['jobs']:>7,}  {_error(g)}" for g in r["errors"]]
        out.append("first failed jobs:")
        out += [f"  #{f['idx']} {f['key'][:12]}  {_error(f)}" for f in r["failures"]]
        # store.jobs.OUTPUT_LOST (not imported: status starts without SQLAlchemy)
        lost = sum(g["jobs"] for g in r["errors"] if g["code"] == "output_lost")
        if failed > lost:
            out.append(f"retry them: batchgen retry {name} --failed")
        if lost:
            out.append(
                f"{lost:,} paid run(s) are gone with their videos (output_lost): "
                f"`retry --failed` leaves them; `batchgen retry {name} --job KEY --pay-again` "
                "pays for a new run"
            )
    return "\n".join(printable(line) for line in out)


def _key_line(k: dict[str, Any]) -> str:
    """One key of several: its jobs, runs and spend, and its paid runs not done."""
    left = k["unfinished_paid_runs"]
    line = f"key {k['key']}  {k['jobs']:,} jobs, {k['runs']:,} runs, ${k['spend_usd']:,.2f}"
    return line + (f", {left:,} paid runs not done" if left else "")


def _error(d: dict[str, Any]) -> str:
    message = d["error"] or "(no message)"
    return f"{d['code']}: {message}" if d["code"] else str(message)

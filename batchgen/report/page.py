"""The HTML contact sheet of a batch: what goes into it, and writing it (once or live).

``write_report`` reads the batch's jobs (streamed, lock-free: ``store.reports``),
lays them out as grids (``report.layout``: rows and columns are the manifest's first
two varying axes, one grid per value of the rest), finds a poster for every video,
and writes one self-contained HTML file atomically (``report.html`` renders it).
Videos, posters and sidecars are linked relative to the HTML file, so the folder can
be zipped and shared.

``LiveReport`` is an observer of ``batchgen run --report PATH``: it rewrites the
report in a background thread, at most every ~2 s while jobs change, and always
once more when the run finishes.
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine

from batchgen.clock import api_duration
from batchgen.errors import Problem
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.files.sidecar import atomic_write_text
from batchgen.report.data import Clip, ReportData
from batchgen.report.html import render
from batchgen.report.layout import axis_value, choose_layout, find_axes
from batchgen.report.posters import PosterMode, poster_for
from batchgen.states import JobState
from batchgen.store import ledger
from batchgen.store.reports import JobRow, get_batch_row, iter_job_rows

log = logging.getLogger(__name__)

_ACTIVE = frozenset(
    {JobState.SUBMITTING, JobState.IN_DOUBT, JobState.RUNNING, JobState.DOWNLOADING}
)


class _Links:
    """Hrefs relative to the report, computed from the folder's relative path once
    (5,000 jobs: a ``relpath`` per file would dominate the time to write)."""

    def __init__(self, out_dir: Path, base: Path, posters: PosterMode) -> None:
        self.out_dir = str(out_dir)
        self.base = str(base)
        self.prefix = Path(os.path.relpath(out_dir, base)).as_posix()
        self.posters = posters
        self._poster_cache: dict[str, str | None] = {}

    def href(self, rel: str) -> str:
        if os.path.isabs(rel):
            target = Path(os.path.relpath(rel, self.base)).as_posix()
        else:
            target = posixpath.normpath(posixpath.join(self.prefix, rel.replace(os.sep, "/")))
        return urllib.parse.quote(target, safe="/")

    def poster(self, rel: str, checksum: str | None) -> str | None:
        key = checksum or rel
        if key not in self._poster_cache:
            found = poster_for(Path(self.out_dir, rel), checksum, mode=self.posters)
            if isinstance(found, Path):
                try:
                    found_rel = found.relative_to(self.out_dir).as_posix()
                except ValueError:
                    found_rel = str(found)
                self._poster_cache[key] = self.href(found_rel)
            else:
                self._poster_cache[key] = found
        return self._poster_cache[key]


def gather(
    db: Engine,
    batch_id: int,
    out: Path,
    *,
    rows: str | None = None,
    cols: str | None = None,
    posters: PosterMode = "file",
) -> ReportData:
    """Everything the page shows. Raises ``UsageError`` for an unknown axis (before
    any poster is written)."""
    batch = get_batch_row(db, batch_id)
    jobs = list(iter_job_rows(db, batch_id))
    axes, _values, names = find_axes(jobs)
    layout = choose_layout(axes, rows, cols, f"batch {batch.name}", jobs=jobs, names=names)
    row_axis, col_axis = layout.rows, layout.cols
    links = _Links(Path(batch.out_dir).resolve(), out.resolve().parent, posters)
    spend_axis = col_axis or row_axis
    cells: dict[tuple[tuple[str, ...], str, str], list[Clip]] = {}
    row_values: dict[str, None] = {}
    col_values: dict[str, None] = {}
    grid_values: dict[tuple[str, ...], None] = {}
    counts: Counter[str] = Counter()
    spend_by: Counter[str] = Counter()
    gen_times: list[float] = []
    # money from the ledger: every attempt's charge and refund, never a job field
    paid = ledger.job_spend(db, batch_id)
    money = ledger.totals(db, batch_id)
    maybe = ledger.possible_jobs(db, batch_id) if money.possible else []
    for job in jobs:
        clip = _clip(job, links)
        clip.other_axes = {a: axis_value(job, a) for a in job.axes if a not in (row_axis, col_axis)}
        grid = tuple(axis_value(job, a) for a in layout.grids)
        row = axis_value(job, row_axis) if row_axis else ""
        col = axis_value(job, col_axis) if col_axis else ""
        grid_values[grid] = row_values[row] = col_values[col] = None
        cells.setdefault((grid, row, col), []).append(clip)
        counts[job.state] += 1
        if spend_axis:
            spend_by[axis_value(job, spend_axis)] += paid.get(job.id, 0)
        if clip.gen_s is not None:
            gen_times.append(clip.gen_s)
    now = time.time()
    return ReportData(
        batch=batch,
        rows_axis=row_axis,
        cols_axis=col_axis,
        axes=axes,
        grid_axes=layout.grids,
        grid_values=list(grid_values),
        row_values=list(row_values),
        col_values=list(col_values) or [""],
        cells=cells,
        counts=dict(counts),
        jobs=len(jobs),
        spend_micro_usd=money.spent,
        wall_s=_wall_s(jobs, now),
        gen_times=gen_times,
        spend_by=list(spend_by.items()),
        spend_axis=spend_axis if jobs else None,
        generated_at=now,
        possible_micro_usd=money.possible,
        maybe_paid_twice=maybe,
        by_key=_by_key(ledger.by_key(db, batch_id)),
    )


def _by_key(money: dict[str | None, tuple[int, int]]) -> list[tuple[str, int, int]]:
    """Runs and spend per key fingerprint, when the batch used several keys."""
    keys = sorted((fp, runs, spent) for fp, (runs, spent) in money.items() if fp is not None)
    return keys if len(keys) > 1 else []


def _wall_s(jobs: list[JobRow], now: float) -> float | None:
    """First submission to last finish; to ``now`` while a job is still under way."""
    starts = [j.submitted_at for j in jobs if j.submitted_at is not None]
    ends = [j.finished_at for j in jobs if j.finished_at is not None]
    end = now if any(j.state in _ACTIVE for j in jobs) else max(ends, default=None)
    if not starts or end is None:
        return None
    return max(0.0, end - min(starts))


def _clip(job: JobRow, links: _Links) -> Clip:
    clip = Clip(job=job, gen_s=api_duration(job.run_created_at, job.run_completed_at))
    if job.submitted_at is not None and job.finished_at is not None:
        clip.total_s = max(0.0, job.finished_at - job.submitted_at)
    for i, rel in enumerate(job.output_paths):
        if not os.path.isfile(os.path.join(links.out_dir, rel)):
            clip.missing.append(rel)
            continue
        clip.videos.append(links.href(rel))
        # sidecar_path's rule (name + ".json"), on the relative string: no Path per job
        clip.sidecars.append(links.href(rel + ".json"))
        if clip.poster is None:
            clip.poster = links.poster(rel, job.checksums[i] if i < len(job.checksums) else None)
    return clip


def write_report(
    db: Engine,
    batch_id: int,
    out: Path,
    *,
    rows: str | None = None,
    cols: str | None = None,
    posters: PosterMode = "file",
) -> Path:
    """Write the batch's HTML report to ``out`` (atomically) and return its path.

    ``rows``/``cols``: the axes to lay the grid out by (``UsageError``, exit 2, when
    the batch has no such axis; nothing is written then).
    """
    out = Path(out)
    data = gather(db, batch_id, out, rows=rows, cols=cols, posters=posters)
    page = render(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out


def report_path_problems(path: Path | None) -> list[Problem]:
    """What would keep ``--report PATH`` from being written, found before a run starts
    (a folder there, a file in the way of its folder, a folder we cannot write)."""
    if path is None:
        return []
    where = f"--report {path}"
    if path.is_dir():
        return [
            Problem(where, "is a folder", fix=f"name a file, e.g. --report {path / 'report.html'}")
        ]
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [Problem(where, f"{parent} is a file, not a folder", fix="choose another path")]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [Problem(where, f"cannot write in {parent}", fix="choose a writable path")]
    return []


class LiveReport:
    """Keeps the report up to date during a run, without slowing the engine.

    Writes happen in one background thread (reading the database lock-free), at most
    every ``min_interval_s`` and at most a quarter of the time (a report of 5,000
    jobs takes a while to render; the engine shares the GIL with it). ``finished``
    waits for that thread and writes the final report itself. Never raises.
    """

    def __init__(
        self, db: Engine, batch_id: int, path: Path, *, min_interval_s: float = 2.0
    ) -> None:
        self.db = db
        self.batch_id = batch_id
        self.path = Path(path)
        self.min_interval_s = min_interval_s
        self.writes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._dirty = False
        self._last_end = 0.0
        self._last_took = 0.0
        self._kick()  # an early page, so there is something to open at once

    def transition(self, ev: TransitionEvent) -> None:
        self._kick()

    def request(self, ev: RequestEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        self._stop.set()
        worker = self._worker
        if worker is not None:
            worker.join()
        self._write()

    def _kick(self) -> None:
        with self._lock:
            self._dirty = True
            if self._worker is None and not self._stop.is_set():
                self._worker = threading.Thread(
                    target=self._loop, name="batchgen-live-report", daemon=True
                )
                self._worker.start()

    def _loop(self) -> None:
        while True:
            gap = max(self.min_interval_s, 3 * self._last_took)
            wait = self._last_end + gap - time.monotonic()
            stopped = wait > 0 and self._stop.wait(wait)
            with self._lock:
                # decided under the lock that _kick takes: a change never goes unseen
                if stopped or not self._dirty or self._stop.is_set():
                    self._worker = None
                    return
                self._dirty = False
            self._write()

    def _write(self) -> None:
        started = time.monotonic()
        try:
            write_report(self.db, self.batch_id, self.path)
            self.writes += 1
        except Exception as exc:  # the report is a view: the run goes on (no traceback)
            log.error("could not write the live report %s: %s", self.path, exc)
            log.debug("live report failure", exc_info=exc)
        self._last_end = time.monotonic()
        self._last_took = self._last_end - started


__all__ = [
    "LiveReport",
    "ReportData",
    "axis_value",
    "choose_layout",
    "gather",
    "report_path_problems",
    "write_report",
]

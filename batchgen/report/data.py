"""What one report shows, as plain data: ``ReportData`` (the batch, its grids and
figures) made of ``Clip`` (one job in a grid).

``report.page`` fills it from the store; ``report.html`` renders it. It sits in its own
module so that the renderer needs nothing from the gatherer (and the two never import
each other).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from batchgen.store.ledger import PossibleJob
from batchgen.store.reports import JobRow
from batchgen.store.schema import Batch


@dataclass(slots=True)
class Clip:
    """One job in the grid."""

    job: JobRow
    videos: list[str] = field(default_factory=list)  # hrefs relative to the report
    sidecars: list[str] = field(default_factory=list)
    poster: str | None = None  # href or data: URI
    missing: list[str] = field(default_factory=list)  # outputs recorded but not on disk
    gen_s: float | None = None  # the API's createdAt -> completedAt
    total_s: float | None = None  # our submission -> our finish
    other_axes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class ReportData:
    batch: Batch
    rows_axis: str | None  # None: one row
    cols_axis: str | None  # None: one column
    axes: list[str]  # what varies, in the manifest's order
    grid_axes: list[str]  # one grid per combination of their values (in grid_values)
    grid_values: list[tuple[str, ...]]
    row_values: list[str]
    col_values: list[str]
    cells: dict[tuple[tuple[str, ...], str, str], list[Clip]]
    counts: dict[str, int]
    jobs: int
    spend_micro_usd: int
    wall_s: float | None
    gen_times: list[float]
    spend_by: list[tuple[str, int]]
    spend_axis: str | None
    generated_at: float
    #: lost POST answers that may have charged a run (the ledger's unsettled possibles)
    possible_micro_usd: int = 0
    maybe_paid_twice: list[PossibleJob] = field(default_factory=list)
    #: several keys: (key fingerprint, runs, spend) each (empty with one key)
    by_key: list[tuple[str, int, int]] = field(default_factory=list)

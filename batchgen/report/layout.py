"""Which axes a batch has, and how the report lays them out.

An axis is something that varies between the jobs of a batch: a manifest axis or
template variable (``job.axes``, in the manifest's order) with more than one value,
an input field that varies on its own (not decided by those axes: the rendered
prompt of ``"a {subject} ..."`` is decided by ``subject``), and ``variant`` when the
manifest repeats. Constant inputs (one resolution, one duration) are no axes.

The grid's rows and columns are the first two axes, after leaving out the ones the
other axes decide (a rows file's prompt column decided by its shot column, a duration
only an ``include`` sets); a third axis and more give one grid per combination of
their values. One axis: one row, its values as columns. ``--rows``/``--cols`` may
name any axis or input field and override the rows or columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from batchgen.errors import Problem, UsageError
from batchgen.store.reports import JobRow

PROMPT_AXIS = "prompt"
#: input fields that are not sweep axes (images are shown, never used to lay out)
_NOT_AXES = frozenset({"image_urls", "image", "images"})


@dataclass(frozen=True, slots=True)
class Layout:
    rows: str | None  # None: one row
    cols: str | None  # None: one column
    grids: list[str] = field(default_factory=list)  # one grid per combination of these


def axis_value(job: JobRow, axis: str) -> str:
    """The job's label on ``axis``: its axes entry, else the input field of that name."""
    if axis in job.axes:
        return job.axes[axis]
    if axis == "variant":
        return str(job.variant)
    value = job.input.get(axis)
    if value is None:
        return "(none)"
    return value if isinstance(value, str) else str(value)


def _values(jobs: Sequence[JobRow], name: str) -> list[str]:
    return list(dict.fromkeys(axis_value(job, name) for job in jobs))


def decided(axis: str, by: Sequence[str], jobs: Sequence[JobRow]) -> bool:
    """Every combination of ``by`` values that occurs has a single ``axis`` value."""
    seen: dict[tuple[str, ...], str] = {}
    for job in jobs:
        value = axis_value(job, axis)
        if seen.setdefault(tuple(axis_value(job, b) for b in by), value) != value:
            return False
    return True


def find_axes(jobs: Sequence[JobRow]) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """(the axes in the manifest's order, each axis's values in first-seen order, every
    name ``--rows``/``--cols`` may use)."""
    manifest: dict[str, None] = {}
    inputs: dict[str, None] = {}
    for job in jobs:
        manifest.update(dict.fromkeys(job.axes))
        for name, value in job.input.items():
            if name not in _NOT_AXES and isinstance(value, str | int | float | bool):
                inputs.setdefault(name, None)
    names = [*manifest, *(n for n in inputs if n not in manifest)]
    if any(job.variant for job in jobs):
        names.append("variant")
    values = {name: _values(jobs, name) for name in names}
    varying = [n for n in manifest if len(values[n]) > 1]
    axes = varying + [
        n
        for n in names
        if n not in manifest and len(values[n]) > 1 and not decided(n, varying, jobs)
    ]
    return axes, {a: values[a] for a in axes}, names


def _independent(axes: list[str], jobs: Sequence[JobRow]) -> list[str]:
    """``axes`` without those the others decide; a prompt goes first, then later axes."""
    keep = list(axes)
    order = [PROMPT_AXIS] if PROMPT_AXIS in keep else []
    order += [a for a in reversed(axes) if a != PROMPT_AXIS]
    for axis in order:
        others = [a for a in keep if a != axis]
        if others and jobs and decided(axis, others, jobs):
            keep.remove(axis)
    return keep


def choose_layout(
    axes: list[str],
    rows: str | None,
    cols: str | None,
    where: str,
    *,
    jobs: Sequence[JobRow] = (),
    names: Sequence[str] = (),
) -> Layout:
    """Rows and columns: ``rows``/``cols``, else the first two independent axes; the
    rest make one grid each. An unknown name is a ``UsageError`` listing the axes."""
    _check_flags(axes, set(axes) | set(names), rows, cols, where)
    free = [a for a in _independent(axes, jobs) if a not in (rows, cols)]
    if rows is None and cols is None and len(free) == 1:
        return Layout(None, free[0])  # one axis: one row
    if rows is None:
        rows = free.pop(0) if free else None
    if cols is None:
        # an axis the rows decide would only fill the diagonal
        useful = _undecided(free, [rows] if rows else [], jobs)
        cols = useful[0] if useful else None
    grids = [a for a in free if a not in (rows, cols)]
    return Layout(rows, cols, _undecided(grids, [a for a in (rows, cols) if a], jobs))


def _undecided(candidates: list[str], laid: list[str], jobs: Sequence[JobRow]) -> list[str]:
    """The candidates the axes already ``laid`` out do not decide (all of them without jobs)."""
    if not (jobs and laid):
        return candidates
    return [a for a in candidates if not decided(a, laid, jobs)]


def _check_flags(
    axes: list[str], known: set[str], rows: str | None, cols: str | None, where: str
) -> None:
    """``--rows``/``--cols`` name axes the batch has, and not the same one twice."""
    for flag, name in (("--rows", rows), ("--cols", cols)):
        if name is not None and name not in known:
            raise UsageError(
                [
                    Problem(
                        file=where,
                        message=f"{flag} {name!r}: the batch has no such axis",
                        fix="choose one of: " + (", ".join(axes) or "(no axes: nothing varies)"),
                    )
                ]
            )
    if rows is not None and rows == cols:
        raise UsageError([Problem(where, f"--rows and --cols are both {rows!r}", fix="pick two")])

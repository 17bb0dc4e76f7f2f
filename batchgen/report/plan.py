"""``batchgen plan``: what a manifest will do and cost, before a cent is spent.

``build_plan`` streams the manifest's jobs once: it counts them by axis, keeps a few
samples, adds up seconds of video and the price table's cost, and estimates the wall
time at the rate limit. Given the state database (opened read-only) it also looks every
job up by key, in chunks, to tell new jobs from the ones already done or in progress,
and counts the stored jobs the manifest no longer lists. No network, no writes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from batchgen.runbase.models import ModelSpec, load_model
from batchgen.settings import resolve_settings
from batchgen.states import JobState
from batchgen.store import ledger, reports
from batchgen.textsafe import printable

if TYPE_CHECKING:
    from batchgen.manifest.expand import ExpandedJob
    from batchgen.manifest.loader import LoadedManifest

#: axes with at most this many values get a job count per value
AXIS_DETAIL = 50
#: the label counted for a job without a value on an axis (an ``include``)
NO_LABEL = "(none)"
#: a job costs at least a POST and one poll against the key's request limit
REQUESTS_PER_JOB = 2
#: jobs looked up in the database at once
LOOKUP = 2_000

IN_PROGRESS = frozenset(
    {JobState.SUBMITTING, JobState.IN_DOUBT, JobState.RUNNING, JobState.DOWNLOADING}
)
#: stored states a new ``batchgen run`` submits (a run re-enables canceled jobs)
WILL_SUBMIT = frozenset({JobState.QUEUED, JobState.CANCELED})


@dataclass
class Totals:
    jobs: int = 0
    video_seconds: float = 0.0
    estimate_micro_usd: int = 0
    generation_s: float = 0.0  # sum of typical generation times

    def add(self, seconds: float, price: int, generation_s: float) -> None:
        self.jobs += 1
        self.video_seconds += seconds
        self.estimate_micro_usd += price
        self.generation_s += generation_s

    @property
    def estimate_usd(self) -> float:
        return self.estimate_micro_usd / 1_000_000


@dataclass
class Stored:
    """How the manifest's jobs stand in the state database."""

    new: int = 0  # not stored yet
    queued: int = 0  # stored, waiting (or canceled: a new run re-enables them)
    in_progress: int = 0
    done: int = 0
    failed: int = 0  # only `batchgen retry --failed` runs these again
    unlisted: int = 0  # stored jobs this manifest no longer lists


@dataclass
class Plan:
    batch: str
    model: str
    manifest: str
    jobs: int
    collapsed: int
    warnings: list[str]
    rate: tuple[int, float]
    concurrency: int
    budget_usd: float | None
    axes: dict[str, dict[str, Any]]  # axis -> {"values": n, "jobs": {label: n} | None}
    sample: list[dict[str, Any]]
    total: Totals
    to_submit: Totals
    wall_s: float  # estimated for ``to_submit``
    stored: Stored | None = None
    #: what the stored batch has spent so far (the budget covers the whole batch)
    spent_micro_usd: int = 0
    budget_warning: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def totals(t: Totals) -> dict[str, Any]:
            return {
                "jobs": t.jobs,
                "video_seconds": t.video_seconds,
                "estimate_usd": round(t.estimate_usd, 6),
            }

        return {
            "batch": self.batch,
            "model": self.model,
            "manifest": self.manifest,
            "jobs": self.jobs,
            "collapsed": self.collapsed,
            "warnings": self.warnings,
            "limits": {
                "rate": list(self.rate),
                "concurrency": self.concurrency,
                "budget_usd": self.budget_usd,
            },
            "axes": self.axes,
            "sample": self.sample,
            "total": totals(self.total),
            "to_submit": {**totals(self.to_submit), "wall_s": round(self.wall_s, 1)},
            "stored": None if self.stored is None else asdict(self.stored),
            "spent_usd": round(self.spent_micro_usd / 1_000_000, 6),
            "budget_warning": self.budget_warning,
            "notes": self.notes,
        }


def wall_seconds(
    jobs: int, generation_s: float, rate: tuple[int, float], concurrency: int
) -> float:
    """Lower-bound wall time: the request limit or the concurrency, whichever binds,
    plus one typical generation for the last job."""
    if jobs == 0:
        return 0.0
    requests, window_s = rate
    by_rate = jobs * REQUESTS_PER_JOB * window_s / max(requests, 1)
    by_concurrency = generation_s / max(concurrency, 1)
    return max(by_rate, by_concurrency) + generation_s / jobs


class _Pricer:
    def __init__(self, model: str) -> None:
        self.spec: ModelSpec | None
        try:
            self.spec = load_model(model)
        except KeyError:
            self.spec = None
        self.defaults = self.spec.defaults() if self.spec else {}

    def __call__(self, input_: dict[str, Any]) -> tuple[float, int, float]:
        """(seconds of video, micro-USD, typical generation seconds) of one job."""
        full = {**self.defaults, **input_}
        try:
            seconds = float(full["duration"])
        except (KeyError, TypeError, ValueError):
            seconds = 0.0
        if self.spec is None:
            return seconds, 0, 0.0
        res, dur = full.get("resolution"), full.get("duration")
        price = self.spec.prices.get(res, {}).get(dur, 0)  # type: ignore[arg-type]
        typical = self.spec.typical_s.get(res, {}).get(dur, 0.0)  # type: ignore[arg-type]
        return seconds, price, typical


def build_plan(loaded: LoadedManifest, db: Engine | None = None, *, samples: int = 5) -> Plan:
    """The plan of ``loaded``; with ``db`` (read-only is enough), against what it holds."""
    # the loader resolved the manifest's limits under `plan`'s --rate, --concurrency and
    # --budget-usd (what `run` stores): plan for those, nothing of a stored batch
    settings = resolve_settings(manifest=loaded.settings)
    rate, concurrency = settings.rate, settings.concurrency
    budget_usd = None if settings.budget_usd is None else float(settings.budget_usd)
    pricer = _Pricer(loaded.model)
    detailed = [a for a, values in loaded.axes.items() if len(values) <= AXIS_DETAIL]
    by_axis: dict[str, Counter[str]] = {a: Counter() for a in detailed}
    total, to_submit = Totals(), Totals()
    sample: list[dict[str, Any]] = []
    batch_id = None if db is None else reports.batch_id_named(db, loaded.name)
    stored = None if batch_id is None else Stored()
    pending: list[tuple[str, tuple[float, int, float]]] = []

    for job in loaded.jobs():
        cost = pricer(job.input)
        total.add(*cost)
        for axis in detailed:
            by_axis[axis][job.axes.get(axis) or NO_LABEL] += 1
        if len(sample) < samples:
            sample.append(_sample(job))
        if stored is None:
            to_submit.add(*cost)
        else:
            pending.append((job.key, cost))
            if len(pending) >= LOOKUP:
                _settle(db, batch_id, pending, stored, to_submit)
    if stored is not None:
        assert db is not None and batch_id is not None
        _settle(db, batch_id, pending, stored, to_submit)
        matched = total.jobs - stored.new
        stored.unlisted = reports.job_total(db, batch_id) - matched
    money = ledger.Totals() if db is None or batch_id is None else ledger.totals(db, batch_id)
    spent = money.spent

    plan = Plan(
        batch=loaded.name,
        model=loaded.model,
        manifest=str(loaded.path),
        jobs=total.jobs,
        collapsed=loaded.collapsed,
        warnings=list(loaded.warnings),
        rate=rate,
        concurrency=concurrency,
        budget_usd=budget_usd,
        axes=_varying_axes(loaded.axes, by_axis),
        sample=sample,
        total=total,
        to_submit=to_submit,
        wall_s=wall_seconds(to_submit.jobs, to_submit.generation_s, rate, concurrency),
        stored=stored,
        spent_micro_usd=spent,
    )
    if pricer.spec is None:
        plan.notes.append(f"no price table for model {loaded.model}: costs show as 0")
    plan.budget_warning = _budget_warning(budget_usd, money, to_submit)
    return plan


def _varying_axes(
    axes: dict[str, list[str]], by_axis: dict[str, Counter[str]]
) -> dict[str, dict[str, Any]]:
    """Axis -> its number of values and (for a short axis) jobs per value. Only what
    varies is an axis (a matrix entry with one value is a constant)."""
    return {
        axis: {
            "values": len(values),
            "jobs": dict(by_axis[axis]) if axis in by_axis else None,
        }
        for axis, values in axes.items()
        if len(values) > 1 or len(set(by_axis.get(axis, ())) - {NO_LABEL}) > 1
    }


def _settle(
    db: Engine | None,
    batch_id: int | None,
    pending: list[tuple[str, tuple[float, int, float]]],
    stored: Stored,
    to_submit: Totals,
) -> None:
    """Count the ``pending`` jobs by what the database holds of them, then forget them."""
    if not pending:
        return
    assert db is not None and batch_id is not None
    states = reports.lookup_states(db, batch_id, [key for key, _ in pending])
    for key, cost in pending:
        state = states.get(key)
        if state is None:
            stored.new += 1
        elif state in WILL_SUBMIT:
            stored.queued += 1
        elif state in IN_PROGRESS:
            stored.in_progress += 1
        elif state == JobState.SUCCEEDED:
            stored.done += 1
        else:
            stored.failed += 1
        if state is None or state in WILL_SUBMIT:
            to_submit.add(*cost)
    pending.clear()


def _budget_warning(
    budget_usd: float | None, money: ledger.Totals, to_submit: Totals
) -> str | None:
    # The budget caps the whole batch: what it spent already counts against it.
    counted = money.budgeted  # lost POST answers may have charged runs: counted too
    if budget_usd is None or (counted + to_submit.estimate_micro_usd) / 1e6 <= budget_usd:
        return None
    spent = money.spent
    already = f" plus ${spent / 1e6:,.2f} already spent" if spent else ""
    if money.possible:
        already += f" and ${money.possible / 1e6:,.2f} possibly charged (answers lost)"
    return (
        f"the estimate ${to_submit.estimate_usd:,.2f}{already} passes the budget "
        f"${budget_usd:,.2f}: the run will stop when the budget is spent "
        "(raise budget_usd or --budget-usd, or trim the matrix)"
    )


def _sample(job: ExpandedJob) -> dict[str, Any]:
    return {"idx": job.idx, "key": job.key[:12], "input": _short(job.input), "axes": job.axes}


def _short(input_: dict[str, Any]) -> dict[str, Any]:
    """Inputs as shown in a plan: ``data:`` URIs are cut, they can be megabytes."""
    out: dict[str, Any] = {}
    for name, value in input_.items():
        if isinstance(value, list):
            out[name] = [_cut(v) for v in value]
        else:
            out[name] = _cut(value)
    return out


def _cut(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:") and len(value) > 60:
        return value[:40] + f"...({len(value)} chars)"
    return value


# ------------------------------------------------------------------ text


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def render_plan(plan: Plan) -> str:
    """The plan as a person reads it."""
    out = [
        f"batch     {plan.batch}",
        f"model     {plan.model}",
        f"manifest  {plan.manifest}",
        f"jobs      {plan.jobs:,}"
        + (f" ({plan.collapsed:,} identical combinations collapsed)" if plan.collapsed else ""),
        "",
        "jobs by axis:",
    ]
    if not plan.axes:
        out.append("  (none: no axis has more than one value)")
    for axis, info in plan.axes.items():
        counts = info["jobs"]
        if counts:
            shown = ", ".join(f"{label!r} {n:,}" for label, n in list(counts.items())[:8])
            more = f", ... ({len(counts) - 8} more)" if len(counts) > 8 else ""
            out.append(f"  {axis} ({info['values']} values): {shown}{more}")
        else:
            out.append(f"  {axis}: {info['values']:,} values")
    out.append("")
    out.append(f"sample ({len(plan.sample)} of {plan.jobs:,}):")
    for s in plan.sample:
        inputs = ", ".join(f"{k}={v!r}" for k, v in s["input"].items())
        out.append(f"  #{s['idx']} {s['key']}  {inputs}")
    if plan.stored is not None:
        st = plan.stored
        out += [
            "",
            "against the state database:",
            f"  new {st.new:,}, waiting {st.queued:,}, in progress {st.in_progress:,}, "
            f"done {st.done:,}, failed {st.failed:,}, no longer listed {st.unlisted:,}",
        ]
    t, sub = plan.total, plan.to_submit
    rate = f"{plan.rate[0]}/{plan.rate[1]:g}s"
    out += [
        "",
        f"total     {t.jobs:,} jobs, {_duration(t.video_seconds)} of video, "
        f"estimated ${t.estimate_usd:,.2f}",
        f"to run    {sub.jobs:,} jobs, {_duration(sub.video_seconds)} of video, "
        f"estimated ${sub.estimate_usd:,.2f}, about {_duration(plan.wall_s)} "
        f"at {rate} with {plan.concurrency} in flight",
    ]
    if plan.stored is not None:
        out.append(f"spent     ${plan.spent_micro_usd / 1e6:,.2f} so far on this batch")
    if plan.budget_usd is not None:
        left = plan.budget_usd - plan.spent_micro_usd / 1e6
        out.append(
            f"budget    ${plan.budget_usd:,.2f}"
            + (f" (${max(left, 0):,.2f} left)" if plan.stored is not None else "")
        )
    for w in plan.warnings:
        out.append(f"warning: {w}")
    for n in plan.notes:
        out.append(f"note: {n}")
    if plan.budget_warning:
        out.append(f"warning: {plan.budget_warning}")
    return "\n".join(printable(line) for line in out)

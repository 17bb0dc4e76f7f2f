"""``--metrics-file``: Prometheus text format (0.0.4) for node_exporter's textfile collector.

Written once, atomically, when the run ends (whatever the exit), so the collector
reads the previous file or the new one, never half of one. Name it ``*.prom`` inside
the collector's ``--collector.textfile.directory``; the temporary file is a hidden
``.name.prom.tmp`` that the collector ignores.

``batchgen_last_success_timestamp_seconds`` only moves when a run exits 0; otherwise
it is carried over from the previous file, so "nothing succeeded for 25 hours" can be
alerted on even though tonight's batch has a new (dated) name: the file keeps this
batch's last success and the newest success of any other batch.
A run that never reached its batch (bad usage, database locked by another run) keeps
the previous job counts and spend of that batch instead of reporting zeros.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.files.sidecar import atomic_write_text
from batchgen.observe.files import prepare_folder
from batchgen.states import JobState

log = logging.getLogger(__name__)

Labels = dict[str, str]
Sample = tuple[str, Labels, float]

#: name -> (type, help)
FAMILIES: dict[str, tuple[str, str]] = {
    "batchgen_jobs": ("gauge", "Jobs of the batch by state when the run ended."),
    "batchgen_spend_usd": ("gauge", "Money spent on the batch so far, in USD."),
    "batchgen_possible_spend_usd": (
        "gauge",
        "POSTs of the batch whose answer was lost and may have charged a run, in USD.",
    ),
    "batchgen_requests_total": (
        "counter",
        'API requests of the last run by route and HTTP status ("network": no answer).',
    ),
    "batchgen_in_doubt_jobs": ("gauge", "Jobs whose submission was in doubt during the run."),
    "batchgen_last_success_timestamp_seconds": (
        "gauge",
        "When a run of the batch last exited 0 (Unix time).",
    ),
    "batchgen_last_run_timestamp_seconds": ("gauge", "When the last run ended (Unix time)."),
    "batchgen_run_duration_seconds": ("gauge", "Wall time of the last run, in seconds."),
    "batchgen_exit_code": (
        "gauge",
        "Exit code of the last run (0 ok, 70 internal error, 75 resumable).",
    ),
}


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(samples: list[Sample]) -> str:
    """Samples as exposition text, grouped by family in ``FAMILIES`` order."""
    lines: list[str] = []
    for name, (kind, help_text) in FAMILIES.items():
        rows = [s for s in samples if s[0] == name]
        if not rows:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for _, labels, value in rows:
            body = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{body}}} {_number(value)}")
    return "\n".join(lines) + "\n"


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse(text: str) -> Iterator[Sample]:
    """The samples of a text-format file (enough to read our own previous file back)."""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE.match(line.strip())
        if not m:
            continue
        labels: Labels = {}
        for lm in _LABEL.finditer(m.group(2) or ""):
            labels[lm.group(1)] = re.sub(
                r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), lm.group(2)
            )
        try:
            yield m.group(1), labels, float(m.group(3))
        except ValueError:
            continue


def samples_for(summary: RunSummary, previous: list[Sample]) -> list[Sample]:
    batch = summary.batch
    b: Labels = {"batch": batch}
    out: list[Sample] = []
    reached = bool(summary.counts) or summary.exit_code in (0, 1)
    if reached:
        for state in JobState:
            out.append(("batchgen_jobs", {**b, "state": state.value}, summary.counts.get(state, 0)))
        out.append(("batchgen_spend_usd", b, summary.spend_micro_usd / 1_000_000))
        out.append(("batchgen_possible_spend_usd", b, summary.possible_micro_usd / 1_000_000))
    else:  # never reached the batch: do not pretend it has no jobs and no spend
        out += [
            s
            for s in previous
            if s[0] in ("batchgen_jobs", "batchgen_spend_usd", "batchgen_possible_spend_usd")
            and s[1].get("batch") == batch
        ]
    for route, per_status in sorted(summary.requests.items()):
        for status, n in sorted(per_status.items()):
            labels = {**b, "route": route, "status": status}
            out.append(("batchgen_requests_total", labels, n))
    out.append(("batchgen_in_doubt_jobs", b, summary.in_doubt))
    out += _last_success(summary, previous)
    out.append(("batchgen_last_run_timestamp_seconds", b, round(summary.finished_at, 3)))
    out.append(("batchgen_run_duration_seconds", b, round(summary.wall_s, 3)))
    out.append(("batchgen_exit_code", b, summary.exit_code))
    return out


def _last_success(summary: RunSummary, previous: list[Sample]) -> list[Sample]:
    name = "batchgen_last_success_timestamp_seconds"
    before = {s[1].get("batch", ""): s[2] for s in previous if s[0] == name}
    if summary.exit_code == 0:
        before[summary.batch] = round(summary.finished_at, 3)
    keep: dict[str, float] = {}
    if summary.batch in before:
        keep[summary.batch] = before.pop(summary.batch)
    if before:
        newest = max(before, key=lambda k: before[k])
        keep[newest] = before[newest]
    return [(name, {"batch": k}, v) for k, v in keep.items()]


class MetricsFile:
    """The observer: writes the metrics once, when the run ends."""

    def __init__(self, path: Path) -> None:
        self.path = prepare_folder(path, "--metrics-file")

    def transition(self, ev: TransitionEvent) -> None:
        pass

    def request(self, ev: RequestEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        try:
            previous = list(parse(self.path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError):
            previous = []
        try:
            atomic_write_text(self.path, render(samples_for(summary, previous)), shared=True)
        except OSError as exc:
            log.error("--metrics-file %s: cannot write (%s)", self.path, exc)


__all__ = ["FAMILIES", "MetricsFile", "escape", "parse", "render", "samples_for"]

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

prometheus_client renders the text (a ``CollectorRegistry`` over the run's samples) and
parses the previous file back. Its ``write_to_textfile`` is not used for the last step:
it neither fsyncs the file nor its folder (a power cut can leave an empty ``.prom``),
and it opens its temporary name without checking for a link planted there; the file
goes through ``files.sidecar.atomic_write_text`` like every other output instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

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
    # several keys only; ``key`` is the key's fingerprint, never the key
    "batchgen_key_requests_total": ("counter", "API requests of the last run by key."),
    "batchgen_key_runs": ("gauge", "Runs of the batch charged to each key."),
    "batchgen_key_spend_usd": ("gauge", "Money spent on the batch by each key, in USD."),
    # PostgreSQL workers sharing a batch only; ``worker`` is host:pid:nonce
    "batchgen_worker_requests_total": ("counter", "API requests this worker sent."),
    "batchgen_worker_spend_usd": ("gauge", "Money this worker's runs cost, in USD."),
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


class _Samples(Collector):
    """A collector over samples computed once, when the run has ended (no live metric
    objects: nothing is counted while the run goes, the summary already holds it)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def collect(self) -> Iterator[Metric]:
        for name, (kind, help_text) in FAMILIES.items():
            rows = [s for s in self.samples if s[0] == name]
            if not rows:
                continue
            family: Metric
            if kind == "counter":  # named without _total: prometheus_client adds it
                family = CounterMetricFamily(name.removesuffix("_total"), help_text)
            else:
                family = GaugeMetricFamily(name, help_text)
            for _, labels, value in rows:
                family.add_sample(name, labels, value)
            yield family


def render(samples: list[Sample]) -> str:
    """Samples as exposition text (format 0.0.4), grouped by family in ``FAMILIES`` order."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Samples(samples))
    return generate_latest(registry).decode("utf-8")


def parse(text: str) -> Iterator[Sample]:
    """The samples of a text-format file (to read our own previous file back); a file
    that does not parse counts as empty, as a missing one does."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return
    for family in families:
        for sample in family.samples:
            yield sample.name, dict(sample.labels), float(sample.value)


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
    for key in summary.keys:
        labels = {**b, "key": str(key["key"])}
        out.append(("batchgen_key_requests_total", labels, key.get("requests", 0)))
        out.append(("batchgen_key_runs", labels, key.get("runs", 0)))
        out.append(("batchgen_key_spend_usd", labels, key.get("spend_usd", 0.0)))
    if summary.worker:
        labels = {**b, "worker": str(summary.worker.get("id", ""))}
        out.append(
            ("batchgen_worker_requests_total", labels, summary.worker.get("requests_total", 0))
        )
        out.append(("batchgen_worker_spend_usd", labels, summary.worker.get("spend_usd", 0.0)))
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


__all__ = ["FAMILIES", "MetricsFile", "parse", "render", "samples_for"]

"""``build_plan``: totals, axes, samples, cost, wall time, budget, and the comparison with
what the state database already holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session

from batchgen.manifest.loader import load_manifest
from batchgen.report.plan import build_plan, render_plan, wall_seconds
from batchgen.runbase.models import load_model
from batchgen.states import JobState
from batchgen.store import batches
from batchgen.store import jobs as store
from batchgen.store.schema import Job, open_db
from tests.support.manifests import write_manifest
from tests.support.stored import by_subject, finish

PRICE_720_5 = load_model("bytedance/seedance-1-pro").prices["720p"]["5"]


def test_only_what_varies_is_listed_by_axis(tmp_path):
    # resolution is a matrix entry with one value: a constant, not an axis
    loaded = load_manifest(write_manifest(tmp_path, ["fox", "owl"], ratios=("16:9",)))
    plan = build_plan(loaded)
    assert list(plan.axes) == ["subject"]
    assert "  aspect_ratio (" not in render_plan(plan)
    extra = 'include:\n  - {subject: heron, aspect_ratio: "1:1"}\n'
    varied = load_manifest(
        write_manifest(tmp_path, ["fox", "owl"], ratios=("16:9",), extra=extra, file="b.yaml")
    )
    # an include with another aspect ratio makes it vary after all
    assert build_plan(varied).axes["aspect_ratio"]["jobs"] == {"16:9": 2, "1:1": 1}


def test_totals_axes_and_samples_of_a_fresh_manifest(tmp_path):
    loaded = load_manifest(
        write_manifest(tmp_path, ["fox", "owl", "heron"], extra="limits: {budget_usd: 100}\n")
    )
    plan = build_plan(loaded)
    assert plan.jobs == 6
    assert plan.total.video_seconds == 30
    assert plan.total.estimate_micro_usd == 6 * PRICE_720_5
    assert plan.to_submit.jobs == 6
    assert plan.stored is None
    assert plan.axes["subject"] == {"values": 3, "jobs": {"fox": 2, "owl": 2, "heron": 2}}
    assert plan.axes["aspect_ratio"]["jobs"] == {"16:9": 3, "9:16": 3}
    assert [s["idx"] for s in plan.sample] == [0, 1, 2, 3, 4]
    assert plan.sample[0]["input"]["prompt"] == "a fox in a meadow"
    assert plan.budget_warning is None
    data = plan.to_dict()
    assert data["jobs"] == 6
    assert data["total"]["estimate_usd"] == pytest.approx(6 * PRICE_720_5 / 1e6)
    json.dumps(data)  # serialisable as it is


def test_a_mixed_resolution_manifest_is_priced_per_job(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "name: mixed\nout_dir: out\nfilename: '{index}'\n"
        "defaults: {prompt: a fox}\n"
        "matrix:\n  resolution: [720p, 1080p]\n  duration: ['5', '10']\n"
    )
    plan = build_plan(load_manifest(manifest))
    prices = load_model("bytedance/seedance-1-pro").prices
    assert plan.total.estimate_micro_usd == sum(
        prices[r][d] for r in ("720p", "1080p") for d in ("5", "10")
    )
    assert plan.total.video_seconds == 30


def test_the_wall_time_is_bound_by_the_rate_or_the_concurrency():
    # 100 jobs x 2 requests at 20 per 10 s = 100 s; 100 x 25 s / 10 in flight = 250 s
    assert wall_seconds(100, 100 * 25.0, (20, 10.0), 10) == pytest.approx(250 + 25)
    assert wall_seconds(100, 100 * 25.0, (20, 10.0), 1000) == pytest.approx(100 + 25)
    assert wall_seconds(0, 0.0, (20, 10.0), 10) == 0.0


def test_an_estimate_past_the_budget_warns(tmp_path):
    loaded = load_manifest(
        write_manifest(tmp_path, ["fox", "owl", "heron"], extra="limits: {budget_usd: 1}\n")
    )
    plan = build_plan(loaded)
    assert plan.budget_warning is not None
    assert "$1.00" in plan.budget_warning
    assert "warning: the estimate" in render_plan(plan)


def test_against_the_database_new_done_in_progress_and_unlisted(tmp_path):
    db = open_db(tmp_path / "state.db")
    manifest = write_manifest(tmp_path, ["fox", "owl", "heron"])
    batches.sync_batch(db, load_manifest(manifest))
    stored = by_subject(tmp_path / "state.db")
    finish(db, stored[("fox", "16:9")]["id"])
    finish(db, stored[("fox", "9:16")]["id"], JobState.FAILED)
    running = stored[("owl", "16:9")]["id"]
    finish_partly(db, running)
    # heron leaves the manifest, lynx joins
    write_manifest(tmp_path, ["fox", "owl", "lynx"])
    plan = build_plan(load_manifest(manifest), db)
    assert plan.stored is not None
    assert plan.stored.new == 2  # lynx x 2
    assert plan.stored.done == 1
    assert plan.stored.failed == 1
    assert plan.stored.in_progress == 1
    assert plan.stored.queued == 1  # owl 9:16
    assert plan.stored.unlisted == 2  # heron x 2
    assert plan.jobs == 6
    # only what a run would submit is priced: the 2 new jobs and the waiting one
    assert plan.to_submit.jobs == 3
    assert plan.to_submit.estimate_micro_usd == 3 * PRICE_720_5
    assert plan.total.estimate_micro_usd == 6 * PRICE_720_5
    text = render_plan(plan)
    assert "new 2, waiting 1, in progress 1, done 1, failed 1, no longer listed 2" in text


def test_the_budget_counts_what_the_batch_already_spent(tmp_path):
    db = open_db(tmp_path / "state.db")
    budget = "limits: {budget_usd: 1}\n"
    manifest = write_manifest(tmp_path, ["fox", "owl", "heron"], extra=budget)
    batches.sync_batch(db, load_manifest(manifest))
    stored = by_subject(tmp_path / "state.db")
    finish(db, stored[("fox", "16:9")]["id"])  # paid
    finish(db, stored[("fox", "9:16")]["id"], JobState.FAILED)  # paid too
    plan = build_plan(load_manifest(manifest), db)
    # 4 jobs left at $0.242 = $0.968 fit in $1 alone, not with the $0.484 spent
    assert plan.to_submit.estimate_micro_usd == 4 * PRICE_720_5 < 1_000_000
    assert plan.spent_micro_usd == 2 * PRICE_720_5
    assert plan.budget_warning is not None
    assert "$0.97 plus $0.48 already spent passes the budget $1.00" in plan.budget_warning
    assert plan.to_dict()["spent_usd"] == pytest.approx(0.484)
    text = render_plan(plan)
    assert "spent     $0.48 so far on this batch" in text
    assert "budget    $1.00 ($0.52 left)" in text
    fresh = build_plan(load_manifest(manifest))
    assert fresh.spent_micro_usd == 0
    assert fresh.budget_warning is not None and "already spent" not in fresh.budget_warning


def test_a_database_without_the_batch_changes_nothing(tmp_path):
    db = open_db(tmp_path / "state.db")
    batches.sync_batch(db, load_manifest(write_manifest(tmp_path, ["fox"], name="other")))
    plan = build_plan(load_manifest(write_manifest(tmp_path, ["owl"], file="b.yaml")), db)
    assert plan.stored is None
    assert plan.to_submit.jobs == 2


def test_more_jobs_than_one_lookup_chunk_are_all_classified(tmp_path, monkeypatch):
    monkeypatch.setattr("batchgen.report.plan.LOOKUP", 7)
    monkeypatch.setattr("batchgen.store.reports.LOOKUP_CHUNK", 3)
    db = open_db(tmp_path / "state.db")
    subjects = [f"s{i}" for i in range(20)]
    manifest = write_manifest(tmp_path, subjects)
    batches.sync_batch(db, load_manifest(manifest))
    write_manifest(tmp_path, [*subjects, "extra"])
    plan = build_plan(load_manifest(manifest), db)
    assert plan.stored is not None
    assert (plan.stored.new, plan.stored.queued, plan.stored.unlisted) == (2, 40, 0)


def finish_partly(db, job_id: int) -> None:
    """Submitted and running: a paid run the engine still polls."""
    with Session(db, expire_on_commit=False) as s:
        job = s.get(Job, job_id)
    assert job is not None
    job = store.move(db, job, JobState.SUBMITTING, attempts=1)
    assert job is not None
    assert store.move(db, job, JobState.RUNNING, run_id="run-x") is not None


def test_render_shows_every_part(tmp_path):
    loaded = load_manifest(write_manifest(tmp_path, ["fox", "owl"]))
    text = render_plan(build_plan(loaded))
    for part in ("jobs      4", "jobs by axis:", "'fox' 2", "sample (4 of 4):", "total", "to run"):
        assert part in text, part
    assert Path(loaded.path).name in text

"""Issue 9 point 2: a POST whose answer was lost counts as charged, so the budget holds
even when the service ignores the Idempotency-Key, and the jobs that may have been
paid twice are named by the summary, `status` and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from batchgen.observe.metrics import samples_for
from batchgen.observe.notify import payload
from batchgen.report.page import write_report
from batchgen.run.runner import arun_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.store.reader import reading
from batchgen.store.schema import open_db
from batchgen.store.status import batch_counts
from tests.support.money import check_money, crashed_mid_post, post_directly
from tests.support.runs import PRICE, options

# ---------------------------------------------------------------- after a crash


async def test_a_job_found_submitting_after_a_crash_counts_as_possibly_charged(
    tmp_path: Path,
) -> None:
    db_path = tmp_path / "s.db"
    job, input_ = crashed_mid_post(db_path, tmp_path / "o")
    with reading(db_path) as conn:  # `status` right after the kill -9, before any run
        counts = batch_counts(conn, 1)
    assert counts.possible_micro_usd == PRICE
    assert [j.key for j in counts.maybe_paid_twice] == [job.key]
    config = SimConfig(time_scale=0.002, rate=(20, 0.5), ignore_idempotency=True)
    async with Simulator(config) as sim:
        await post_directly(sim.base_url, input_, "crash-key-0")  # it did create a run
        # the budget fits two jobs, but the crashed POST may have charged a third run
        summary = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            batch="test-batch",
            options=options(sim.base_url, budget_usd=2 * PRICE / 1e6),
        )
        stats = sim.stats()
    check_money(summary, stats, 2, 2 * PRICE)
    assert stats["runs_created"] == 2 and summary.exit_code == 4
    assert summary.possible_micro_usd == PRICE
    assert [j["key"] for j in summary.maybe_paid_twice] == [job.key]
    assert "may have been paid twice" in payload(summary)["text"]
    assert ("batchgen_possible_spend_usd", {"batch": "test-batch"}, PRICE / 1e6) in (
        samples_for(summary, [])
    )
    assert summary.to_json()["maybe_paid_twice"][0]["possible_micro_usd"] == PRICE

    status = subprocess.run(
        [sys.executable, "-m", "batchgen", "status", "--db", str(db_path), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    data = json.loads(status.stdout)
    assert data["possible_usd"] == PRICE / 1e6
    assert [j["key"] for j in data["maybe_paid_twice"]] == [job.key]
    text = subprocess.run(
        [sys.executable, "-m", "batchgen", "status", "--db", str(db_path)],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert "may have been paid twice" in text and job.key[:12] in text
    report = write_report(open_db(db_path, readonly=True), 1, tmp_path / "r.html")
    html = report.read_text()
    assert "may have been paid twice" in html and job.key[:12] in html

"""A manifest stored and run in-process against the simulator."""

from __future__ import annotations

import base64
import json
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from batchgen.engine.schedule import PollPolicy
from batchgen.manifest.loader import load_manifest
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.states import JobState, check_transition
from batchgen.store import batches
from batchgen.store.schema import Job, open_db
from tests.support.manifests import write_manifest
from tests.support.paths import REPO

ROOT = REPO


async def test_local_images_are_stored_as_references_and_sent_inline(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests" / "images", folder / "images")
    manifest = folder / "i2v.yaml"
    shutil.copy(ROOT / "manifests" / "image-to-video.yaml", manifest)
    db_path = tmp_path / "state.db"
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5), tiny_videos=True)) as sim:
        summary = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            manifest=manifest,
            options=RunOptions(
                base_url=sim.base_url,
                rate=(20, 0.5),
                poll_policy=PollPolicy(min_interval_s=0.01),
            ),
        )
        sent = [run.input for run in sim.state.book.runs.values()]
    assert summary.exit_code == 0, summary.to_json()
    assert len(sent) == 4
    images = {(folder / "images" / n).read_bytes() for n in ("sunrise.png", "harbour.png")}
    seen = set()
    for input_ in sent:
        head, _, body = input_["image_urls"][0].partition(",")
        assert head == "data:image/png;base64"
        seen.add(base64.b64decode(body))
    assert seen == images
    with Session(open_db(db_path)) as session:
        stored = [json.loads(j.input_json) for j in session.exec(select(Job))]
    assert all(s["image_urls"][0].startswith("file:images/") for s in stored)
    assert not any("base64" in json.dumps(s) for s in stored)
    assert len(list((tmp_path / "demo-out" / "image-to-video").glob("*.mp4"))) == 4


async def test_a_changed_manifest_reports_what_it_adds_and_no_longer_lists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The run says what the sync changed; jobs no longer listed that never started are
    kept in the database but not sent."""
    db_path = tmp_path / "state.db"
    db = open_db(db_path)
    batches.sync_batch(db, load_manifest(write_manifest(tmp_path, ["fox", "owl"])))
    db.dispose()
    # owl is gone, lynx is new, and an include the matrix already has collapses
    extra = 'include:\n  - {subject: fox, aspect_ratio: "16:9"}\n'
    changed = write_manifest(tmp_path, ["fox", "lynx"], extra=extra)
    caplog.set_level(logging.INFO)
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5), tiny_videos=True)) as sim:
        summary = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            manifest=changed,
            options=RunOptions(
                base_url=sim.base_url,
                rate=(20, 0.5),
                poll_policy=PollPolicy(min_interval_s=0.01),
            ),
        )
        sent = sorted(run.input["prompt"] for run in sim.state.book.runs.values())
    assert summary.exit_code == 0, summary.to_json()
    assert sent == ["a fox in a meadow"] * 2 + ["a lynx in a meadow"] * 2
    logged = caplog.messages
    assert (
        "batch sweep: 2 new job(s) stored, 6 in the database; 2 no longer listed by the "
        "manifest (kept; those not started yet are not submitted; see `batchgen status`)"
    ) in logged
    assert any(m.startswith("1 combination(s) collapsed into identical jobs") for m in logged)


async def test_every_state_change_of_a_run_is_an_event_row_and_rows_are_never_rewritten(
    tmp_path: Path,
) -> None:
    manifest = write_manifest(tmp_path, ["fox", "owl"])
    db_path = tmp_path / "state.db"

    def events() -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(db_path)
        out = conn.execute(
            "SELECT id, batch_id, job_id, at, from_state, to_state, detail FROM event ORDER BY id"
        ).fetchall()
        conn.close()
        return out

    options = RunOptions(rate=(20, 0.5), poll_policy=PollPolicy(min_interval_s=0.01))
    async with Simulator(SimConfig(time_scale=0.002, rate=(20, 0.5), tiny_videos=True)) as sim:
        options.base_url = sim.base_url
        first = await arun_batch(db_path, api_key=DEFAULT_KEY, manifest=manifest, options=options)
        logged = events()
        write_manifest(tmp_path, ["fox", "owl", "lynx"])  # two more jobs
        second = await arun_batch(db_path, api_key=DEFAULT_KEY, manifest=manifest, options=options)
    assert (first.exit_code, second.exit_code) == (0, 0)
    after = events()
    assert after[: len(logged)] == logged  # appended to, never rewritten
    with Session(open_db(db_path)) as session:
        jobs = list(session.exec(select(Job)))
    assert len(jobs) == 6
    for job in jobs:
        chain = [(e[4], e[5]) for e in after if e[2] == job.id]
        assert chain[0][0] == JobState.QUEUED.value
        assert chain[-1][1] == job.state == JobState.SUCCEEDED.value
        for old, new in chain:
            check_transition(JobState(old), JobState(new))  # raises on an illegal move
        # each event starts where the previous one ended
        assert [new for _, new in chain[:-1]] == [old for old, _ in chain[1:]]
        assert {e[1] for e in after if e[2] == job.id} == {job.batch_id}

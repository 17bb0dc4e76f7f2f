"""A demo batch for the report and export tests, taken through the real engine path.

Ten jobs against the local simulator (``batchgen.sim`` over loopback): four prompts
(one with ``<script>``, one in Japanese, Greek and emoji, one very long) at two
aspect ratios, plus one 10-second clip, all succeeding with real H.264 files of the
asked shape and length; and one job whose input the API refuses (400), so it fails
for good with the API's message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from batchgen.engine.schedule import PollPolicy
from batchgen.manifest.loader import load_manifest
from batchgen.report.layout import Layout, choose_layout, find_axes
from batchgen.report.page import write_report
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import DEFAULT_KEY, SimConfig, Simulator
from batchgen.store.batches import sync_batch
from batchgen.store.reports import JobRow
from batchgen.store.schema import Batch, Job, open_db
from tests.support.engine import make_batch

INJECTION = "<script>alert(1)</script> & \"double\" 'single' </td></table>"
UNICODE = "日本語の狐 Ελληνικά 🦊🎬"
LONG = "a slow dolly shot across a misty harbour at dawn, " * 12 + "the end"
PROMPTS = ["a red fox in fresh snow", INJECTION, UNICODE, LONG]
ASPECTS = ["16:9", "9:16"]
BAD_PROMPT = "a fox in an impossible frame"
FAST = SimConfig(time_scale=0.002, rate=(20, 0.5))  # real sizes: no media notes


@dataclass
class Demo:
    db_path: Path
    db: Engine
    batch: Batch
    batch_id: int
    out_dir: Path
    exit_code: int


def demo_inputs() -> list[tuple[dict[str, Any], dict[str, str]]]:
    jobs: list[tuple[dict[str, Any], dict[str, str]]] = []
    for prompt in PROMPTS:
        for aspect in ASPECTS:
            inp = {"prompt": prompt, "aspect_ratio": aspect, "duration": "5"}
            jobs.append((inp, {"prompt": prompt, "aspect_ratio": aspect}))
    inp = {"prompt": PROMPTS[0], "aspect_ratio": "1:1", "duration": "10"}
    jobs.append((inp, {"prompt": PROMPTS[0], "aspect_ratio": "1:1"}))
    # "7:3" is no aspect ratio the model knows: the API answers 400, the job fails
    inp = {"prompt": BAD_PROMPT, "aspect_ratio": "7:3", "duration": "5"}
    jobs.append((inp, {"prompt": BAD_PROMPT, "aspect_ratio": "7:3"}))
    return jobs


def make_demo_batch(db_path: Path, out_dir: Path, *, name: str = "demo") -> tuple[Engine, Batch]:
    jobs = demo_inputs()
    db, batch = make_batch(db_path, [inp for inp, _ in jobs], out_dir, name=name)
    with Session(db) as s:
        rows = s.exec(select(Job).where(Job.batch_id == batch.id).order_by(col(Job.idx))).all()
        for row, (_inp, axes) in zip(rows, jobs, strict=True):
            row.axes_json = json.dumps(axes, ensure_ascii=False)
            s.add(row)
        s.commit()
    return db, batch


async def run_demo(tmp_path: Path, **options: Any) -> Demo:
    db_path, out_dir = tmp_path / "state.db", tmp_path / "out"
    db, batch = make_demo_batch(db_path, out_dir)
    async with Simulator(FAST) as sim:
        summary = await arun_batch(
            db_path,
            api_key=DEFAULT_KEY,
            batch=batch.name,
            options=RunOptions(
                base_url=sim.base_url,
                rate=(20, 0.5),
                max_attempts=1,
                poll_policy=PollPolicy(min_interval_s=0.01),
                **options,
            ),
        )
    assert batch.id is not None
    return Demo(db_path, db, batch, batch.id, out_dir, summary.exit_code)


def demo(tmp_path: Path, **options: Any) -> Demo:
    return asyncio.run(run_demo(tmp_path, **options))


def big_batch(
    db_path: Path, out_dir: Path, *, jobs: int = 5000, files: int = 50
) -> tuple[Engine, Batch]:
    """``jobs`` jobs (prompts x 5 aspect ratios), all succeeded except every 97th failed,
    sharing ``files`` real clips (as if written by the engine; no server involved)."""
    from batchgen.sim.video import TINY_FPS, frame_size, render

    aspects = ["16:9", "9:16", "1:1", "4:3", "21:9"]
    db, batch = make_batch(db_path, [], out_dir, name="big")
    out_dir.mkdir(parents=True, exist_ok=True)
    sums = []
    for f in range(files):
        size = frame_size(aspects[f % 5], "720p", tiny=True)
        clip = render(f"clip {f}", *size, 5.0, TINY_FPS)
        (out_dir / f"{f}.mp4").write_bytes(clip.data)
        sums.append(hashlib.sha256(clip.data).hexdigest())
    rows = []
    for i in range(jobs):
        inp = {"prompt": f"prompt {i // 5}: a fox in snow", "aspect_ratio": aspects[i % 5]}
        ok = i % 97 != 96
        f = i % files
        rows.append(
            (
                batch.id, hashlib.sha256(str(i).encode()).hexdigest(), i, json.dumps(inp),
                json.dumps(inp), "succeeded" if ok else "failed",
                json.dumps([f"{f}.mp4"] if ok else []), json.dumps([sums[f]] if ok else []),
                484_000 if ok else 0, None if ok else "generation failed", None if ok else "boom",
                1000.0 + i, 1060.0 + i,
            )
        )  # fmt: skip
    with db.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO job (batch_id, key, idx, input_json, axes_json, state,"
            " output_paths_json, checksums_json, cost_micro_usd, last_error, error_code,"
            " submitted_at, finished_at, variant, listed, attempts, errors, next_attempt_at,"
            " estimate_micro_usd, run_created_at, run_completed_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, 1, 0, 0, 484000,"
            " '2024-05-01T00:00:00+00:00', '2024-05-01T00:00:41+00:00', 0)",
            rows,
        )
    return db, batch


def rows_of(manifest: Path) -> list[JobRow]:
    """The manifest's jobs as the report reads them (queued, nothing run)."""
    return [
        JobRow(
            id=j.idx,
            key=j.key,
            idx=j.idx,
            variant=j.variant,
            listed=True,
            input=j.input,
            axes=j.axes,
            state="queued",
            run_id=None,
            attempts=0,
            estimate_micro_usd=0,
            cost_micro_usd=0,
            submitted_at=None,
            run_created_at=None,
            run_completed_at=None,
            finished_at=None,
            output_paths=[],
            checksums=[],
            last_error=None,
            error_code=None,
            media_note=None,
        )
        for j in load_manifest(manifest).jobs()
    ]


def layout_of(manifest: Path, rows: str | None = None, cols: str | None = None) -> Layout:
    jobs = rows_of(manifest)
    axes, _, names = find_axes(jobs)
    return choose_layout(axes, rows, cols, "batch b", jobs=jobs, names=names)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def page_of(tmp_path: Path, manifest: Path) -> tuple[str, dict[str, object]]:
    """Store the manifest's batch (nothing run) and write its report."""
    db = open_db(tmp_path / "state.db")
    synced = sync_batch(db, load_manifest(manifest))
    out = write_report(db, synced.batch_id, tmp_path / "report.html")
    page = out.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page)
    assert found is not None
    return page, json.loads(found.group(1))


def check_export_rows(ran: Demo, rows: list[dict[str, Any]]) -> None:
    assert len(rows) == 10
    assert [int(r["idx"]) for r in rows] == list(range(10))
    by_prompt = {r["prompt"]: r for r in rows}
    assert INJECTION in by_prompt and UNICODE in by_prompt
    failed = by_prompt[BAD_PROMPT]
    assert failed["state"] == "failed" and failed["error_code"] == "invalid_input"
    assert "7:3" in failed["error"]
    assert all(r["batch"] == "demo" and r["out_dir"] == str(ran.out_dir) for r in rows)

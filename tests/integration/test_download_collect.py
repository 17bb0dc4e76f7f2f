"""The engine's collect step (batchgen.engine.collect.make_collect) over the real download path."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from batchgen.engine.collect import make_collect
from batchgen.files.sidecar import read_sidecar
from batchgen.store.records import BatchRecord, JobRecord
from batchgen.store.schema import Batch, Job
from batchgen.store.sqlite_store import batch_record, job_record
from tests.support.files import Fault, FileServer


def batch(out: Path, template: str) -> BatchRecord:
    return batch_record(
        Batch(
            id=1,
            name="demo",
            model="bytedance/seedance-1-pro",
            manifest_path="m.yaml",
            manifest_sha256="0" * 64,
            out_dir=str(out),
            filename_template=template,
        )
    )


def job(**kw: Any) -> JobRecord:
    fields: dict[str, Any] = {
        "id": 5,
        "batch_id": 1,
        "key": "3f2a9c0d4e5b6a7f8091a2b3c4d5e6f7",
        "idx": 4,
        "variant": 1,
        "input_json": json.dumps({"prompt": "A red fox in the snow", "aspect_ratio": "16:9"}),
        "axes_json": json.dumps({"subject": "fox"}),
        "run_id": "run_1",
        "attempts": 1,
        "cost_micro_usd": 484000,
        "submitted_at": 1.0,
    }
    fields.update(kw)
    return job_record(Job(**fields))


async def test_collect_names_files_writes_sidecars_and_returns_fields(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path
) -> None:
    server.add("a.mp4", mp4_16x9, Fault(cuts=1, expired_tokens={"old"}))
    refreshed = 0

    async def refresh() -> list[str]:
        nonlocal refreshed
        refreshed += 1
        return [server.url("a.mp4", "new")]

    out = tmp_path / "out"
    # resolution and duration are not in the job's input: the model's defaults name the file
    template = "{index:03d}_{subject}_{aspect_ratio}_{resolution}_{duration}s_v{variant}"
    async with aiohttp.ClientSession() as s:
        collect = make_collect(s, batch(out, template), clock_now=lambda: 42.0)
        fields = await collect(job(), [server.url("a.mp4", "old")], refresh)
    name = "004_fox_16x9_1080p_5s_v1-3f2a9c0d4e.mp4"
    assert sorted(os.listdir(out)) == [name, name + ".json"]
    assert refreshed == 1
    digest = hashlib.sha256(mp4_16x9).hexdigest()
    assert fields["output_paths"] == (name,)
    assert fields["checksums"] == (digest,)
    # a 64x36 file where the model's default resolution (1080p) was asked: kept, and said
    assert fields["media_note"] == "frame 64x36 is not 1080p (1920x1080) as asked"
    side = read_sidecar(out / name)
    assert side["media_note"] == fields["media_note"]
    assert side["sha256"] == digest and side["run_id"] == "run_1" and side["file"] == name
    assert side["media"]["width"] == 64 and side["timings"]["downloaded_at"] == 42.0
    assert side["prompt"] == "A red fox in the snow" and side["cost_usd"] == 0.484


async def test_a_video_unlike_what_was_asked_is_kept_recorded_and_said(
    server: FileServer, mp4_16x9: bytes, tmp_path: Path, caplog: Any
) -> None:
    server.add("a.mp4", mp4_16x9)
    out = tmp_path / "out"
    portrait = json.dumps({"prompt": "A red fox", "aspect_ratio": "9:16"})

    async def refresh() -> list[str]:
        raise AssertionError("no refresh needed")

    async with aiohttp.ClientSession() as s:
        collect = make_collect(s, batch(out, "{index:03d}"))
        with caplog.at_level("WARNING", logger="batchgen"):
            fields = await collect(job(input_json=portrait), [server.url("a.mp4")], refresh)
    name = "004-3f2a9c0d4e.mp4"
    note = fields.get("media_note")
    assert note and "9:16" in note
    assert read_sidecar(out / name)["media_note"] == fields["media_note"]
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert said == [f"job #4: {name} is not what was asked: {fields['media_note']}"]

"""The JSON beside each video: atomic, sorted, documented fields only, never a key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batchgen.files.sidecar import FIELDS, read_sidecar, sidecar_path, write_sidecar

DATA = {
    "batch": "demo",
    "model": "bytedance/seedance-1-pro",
    "key": "3f2a9c0d4e5b6a7f",
    "index": 3,
    "variant": 0,
    "prompt": "a fox in snow",
    "input": {"prompt": "a fox in snow", "aspect_ratio": "16:9"},
    "axes": {"subject": "fox"},
    "run_id": "run_abc",
    "cost_usd": 0.484,
    "timings": {"submitted_at": 1.0, "run_completed_at": 2.5},
    "sha256": "ab" * 32,
    "size": 1234,
    "media": {"codec": "h264", "width": 64, "height": 36, "duration_s": 5.0, "frames": 20},
    "media_note": None,
}


def test_written_beside_the_video_sorted_and_indented(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    path = write_sidecar(video, DATA)
    assert path == tmp_path / "clip.mp4.json" == sidecar_path(video)
    text = path.read_text()
    assert text == json.dumps(DATA, sort_keys=True, indent=2) + "\n"
    assert read_sidecar(video) == DATA
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "clip.mp4.json"]  # no temp left


def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    write_sidecar(video, DATA)
    write_sidecar(video, {**DATA, "run_id": "run_new"})
    assert read_sidecar(video)["run_id"] == "run_new"
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4.json"]


def test_undocumented_fields_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="headers"):
        write_sidecar(tmp_path / "c.mp4", {**DATA, "headers": {"Authorization": "Bearer x"}})
    with pytest.raises(ValueError, match="api_key"):
        write_sidecar(tmp_path / "c.mp4", {"api_key": "sk-live-0123456789abcdef"})
    assert os.listdir(tmp_path) == []


def test_key_like_strings_are_redacted_anywhere(tmp_path: Path) -> None:
    key = "sk-live-0123456789abcdefXYZ"
    data = {**DATA, "prompt": f"oops {key} pasted", "input": {"prompt": "x", "image_urls": [key]}}
    text = write_sidecar(tmp_path / "c.mp4", data).read_text()
    assert key not in text and "sk-live" not in text
    assert read_sidecar(tmp_path / "c.mp4")["prompt"] == "oops [redacted] pasted"
    # Ordinary words that merely contain "sk-" are left alone.
    ok = write_sidecar(tmp_path / "d.mp4", {"prompt": "a task-force of husk-y dogs"})
    assert "task-force of husk-y" in ok.read_text()


def test_every_field_the_collector_sends_is_documented() -> None:
    sent = {
        "batch",
        "model",
        "key",
        "index",
        "variant",
        "prompt",
        "input",
        "axes",
        "run_id",
        "attempts",
        "cost_usd",
        "cost_micro_usd",
        "timings",
        "file",
        "sha256",
        "size",
        "media",
        "media_note",
    }
    assert sent <= set(FIELDS)

"""`make demo` (``python -m bench.demo``) ends by writing the report and printing its
path: the real driver, its simulator and every batchgen command as subprocesses."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from batchgen.files.media import probe
from tests.support.paths import REPO

ROOT = REPO


def _demo(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.demo", str(out)],
        cwd=ROOT,
        env={**os.environ, "DEMO_TIME_SCALE": "0.01"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=180,
    )


def test_the_demo_ends_by_writing_the_report_and_printing_its_path(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    report = out / "report.html"
    assert lines[-1] == str(report.resolve())
    assert lines[-2].startswith("$ batchgen report --out ")
    page = report.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page)
    assert found is not None
    data = json.loads(found.group(1))
    assert data["batch"] == "example" and data["jobs"] == 6
    assert sum(data["counts"].values()) == 6 and not set(data["counts"]) - {"succeeded", "failed"}
    # laid out by what varies: subject x aspect ratio, not the rendered prompt
    assert (data["rows"], data["cols"]) == ("subject", "aspect_ratio")
    with open(out / "jobs.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    # the demo's "720p" videos are 720p: the decoder check found nothing to say
    done = [r for r in rows if r["state"] == "succeeded"]
    assert done and all(r["media_note"] == "" for r in done)
    sizes = {(m.width, m.height) for m in map(probe, (out / "videos").glob("*.mp4"))}
    assert sizes and sizes <= {(1280, 720), (720, 1280)}
    assert "sk-sim-" not in page


def test_the_demo_will_not_empty_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    proc = _demo(tmp_path)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

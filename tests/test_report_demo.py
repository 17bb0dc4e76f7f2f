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

ROOT = Path(__file__).resolve().parent.parent


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
    with open(out / "jobs.csv", encoding="utf-8", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert "sk-sim-" not in page


def test_the_demo_will_not_empty_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    proc = _demo(tmp_path)
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

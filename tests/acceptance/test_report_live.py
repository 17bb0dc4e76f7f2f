"""`batchgen run --report PATH` as a person uses it: the real command against the
simulator (both subprocesses), the report file read over and over while the sweep
runs. It must fill in as jobs finish, and every read must find a whole page."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from batchgen.sim import DEFAULT_KEY

MANIFEST = """\
name: live
out_dir: out
filename: "{index:02d}-{aspect_ratio}"
defaults:
  resolution: 720p
  duration: 5
matrix:
  prompt: ["a red fox in fresh snow", "<script>alert(1)</script> 日本語の狐", "a heron"]
  aspect_ratio: ["16:9", "9:16"]
limits:
  rate: 20/10s
  concurrency: 2
"""
_DATA = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def test_the_live_report_fills_in_during_the_run_and_is_never_half_written(
    tmp_path: Path,
) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST, encoding="utf-8")
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgen",
            "sim",
            "--port",
            "0",
            "--tiny-videos",
            "--time-scale",
            "0.04",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        base_url = sim.stdout.readline().strip()
        env = {
            **os.environ,
            "RUNBASE_API_KEY": DEFAULT_KEY,
            "RUNBASE_BASE_URL": base_url,
            "BATCHGEN_DB": str(tmp_path / "state.db"),
        }
        report = tmp_path / "live" / "report.html"
        run = subprocess.Popen(
            [sys.executable, "-m", "batchgen", "run", "m.yaml", "--report", str(report)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: list[dict[str, int]] = []
        pages: list[str] = []
        reads = 0
        while run.poll() is None:
            if report.exists():
                page = report.read_text(encoding="utf-8")
                counts = _counts(page)
                reads += 1
                if not seen or seen[-1] != counts:
                    seen.append(counts)
                    pages.append(page)
            time.sleep(0.02)
        _, stderr = run.communicate(timeout=30)
    finally:
        sim.terminate()
        sim.wait(timeout=10)

    assert run.returncode == 0, stderr
    final = report.read_text(encoding="utf-8")
    assert _counts(final) == {"succeeded": 6}
    assert DEFAULT_KEY not in final
    # the first page came at once, and the sweep was seen filling in before the end
    assert reads > 10 and seen[0].get("queued", 0) >= 1, seen
    partial = [c for c in seen if 0 < c.get("succeeded", 0) < 6]
    assert partial, seen
    # a cell not done yet says what it waits for
    for counts, page in zip(seen, pages, strict=True):
        if counts.get("queued"):
            assert '<div class="ph">queued: not submitted yet</div>' in page
        if counts.get("running"):
            assert '<div class="ph">generating</div>' in page
    done = [c.get("succeeded", 0) for c in seen]
    assert done == sorted(done), seen
    # rewritten by rename: no temporary file is left beside it
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]


def test_a_run_stopped_by_ctrl_c_still_leaves_a_whole_up_to_date_report(
    tmp_path: Path,
) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST, encoding="utf-8")
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgen",
            "sim",
            "--port",
            "0",
            "--tiny-videos",
            "--time-scale",
            "0.2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sim.stdout is not None
        env = {
            **os.environ,
            "RUNBASE_API_KEY": DEFAULT_KEY,
            "RUNBASE_BASE_URL": sim.stdout.readline().strip(),
            "BATCHGEN_DB": str(tmp_path / "state.db"),
        }
        report = tmp_path / "report.html"
        run = subprocess.Popen(
            [sys.executable, "-m", "batchgen", "run", "m.yaml", "--report", str(report)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not _started(report):  # some job left the queue: the run is under way
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        stopped_at = time.time()
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=30)
    finally:
        sim.terminate()
        sim.wait(timeout=10)

    assert run.returncode == 75, stderr
    # written once more after the signal, whole, with the jobs still to do
    assert report.stat().st_mtime >= stopped_at
    counts = _counts(report.read_text(encoding="utf-8"))
    assert sum(counts.values()) == 6 and counts.get("succeeded", 0) < 6, counts


def _started(report: Path) -> bool:
    return report.exists() and _counts(report.read_text(encoding="utf-8")) != {"queued": 6}


def _counts(page: str) -> dict[str, int]:
    """The page's job counts; fails on a page cut short (a non-atomic write)."""
    assert page.startswith("<!doctype html>") and page.endswith("</body></html>\n")
    found = _DATA.search(page)
    assert found is not None
    counts: dict[str, int] = json.loads(found.group(1))["counts"]
    return counts


def test_a_report_path_that_cannot_be_written_stops_the_run_before_it_starts(
    tmp_path: Path,
) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST, encoding="utf-8")
    env = {
        **os.environ,
        "RUNBASE_API_KEY": DEFAULT_KEY,
        "RUNBASE_BASE_URL": "http://127.0.0.1:9",  # nothing listens: nothing may be sent
        "BATCHGEN_DB": str(tmp_path / "state.db"),
    }
    folder = tmp_path / "reports"
    folder.mkdir()
    for report, said in (
        (folder, "is a folder"),
        (tmp_path / "m.yaml" / "report.html", f"{tmp_path / 'm.yaml'} is a file, not a folder"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "batchgen", "run", "m.yaml", "--report", str(report)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert f"--report {report}: {said}" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml", "reports"]
    assert not list(folder.iterdir())

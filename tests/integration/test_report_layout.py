"""Which inputs are axes, and how the report lays them out (issue 10.11): rows and
columns are the manifest's first two varying axes, one grid per value of the rest;
constant inputs and a prompt its template's variables decide are no axes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from batchgen.errors import UsageError
from batchgen.manifest.loader import load_manifest
from batchgen.report.layout import Layout, choose_layout, find_axes
from batchgen.report.page import write_report
from batchgen.store.batches import sync_batch
from batchgen.store.reports import JobRow
from batchgen.store.schema import open_db
from tests.support.paths import REPO

ROOT = REPO


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


ONE_AXIS = """\
name: one
defaults: {prompt: "a {subject} at dawn", resolution: 720p, duration: 5}
matrix:
  subject: [fox, heron, owl]
"""
THREE_AXES = """\
name: three
defaults: {prompt: "a {subject} in {style}", duration: 5}
matrix:
  subject: [fox, heron]
  style: [watercolor, film, clay]
  aspect_ratio: ["16:9", "9:16"]
  resolution: [720p]
"""
REPEATED = """\
name: again
defaults: {prompt: "a fox in {style}"}
matrix:
  style: [watercolor, film]
repeat: 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_demo_is_laid_out_by_subject_and_aspect_ratio_only() -> None:
    jobs = rows_of(ROOT / "manifests" / "example.yaml")
    axes, values, _ = find_axes(jobs)
    # the rendered prompt, resolution and duration do not vary on their own: no axes
    assert axes == ["subject", "aspect_ratio"]
    assert values == {"subject": ["fox", "red panda", "heron"], "aspect_ratio": ["16:9", "9:16"]}
    assert layout_of(ROOT / "manifests" / "example.yaml") == Layout("subject", "aspect_ratio")


def test_one_varying_axis_is_one_row(tmp_path: Path) -> None:
    manifest = write(tmp_path, ONE_AXIS)
    assert find_axes(rows_of(manifest))[0] == ["subject"]
    assert layout_of(manifest) == Layout(None, "subject")
    assert layout_of(manifest, rows="subject") == Layout("subject", None)


def test_three_varying_axes_give_one_grid_per_value_of_the_third(tmp_path: Path) -> None:
    manifest = write(tmp_path, THREE_AXES)
    # resolution is a matrix axis with one value: it does not vary, so it is no axis
    assert find_axes(rows_of(manifest))[0] == ["subject", "style", "aspect_ratio"]
    assert layout_of(manifest) == Layout("subject", "style", ["aspect_ratio"])
    # --rows / --cols override; what is left makes the grids
    assert layout_of(manifest, rows="aspect_ratio") == Layout("aspect_ratio", "subject", ["style"])
    assert layout_of(manifest, cols="subject") == Layout("style", "subject", ["aspect_ratio"])
    assert layout_of(manifest, "style", "aspect_ratio") == Layout(
        "style", "aspect_ratio", ["subject"]
    )
    # any input may still be named, varying or not (the prompt: one row per prompt)
    assert layout_of(manifest, rows="prompt") == Layout("prompt", "aspect_ratio")
    assert layout_of(manifest, cols="resolution").cols == "resolution"


def test_a_rows_file_prompt_decided_by_its_shot_and_style_is_not_laid_out() -> None:
    sweep = ROOT / "manifests" / "prompt-sweep.yaml"
    axes = find_axes(rows_of(sweep))[0]
    # the include's own duration (10 s) varies, so it is called an axis...
    assert axes == ["shot", "style", "prompt", "aspect_ratio", "duration"]
    # ...but it and the rendered prompt are decided by the others: not laid out again
    assert layout_of(sweep) == Layout("shot", "style", ["aspect_ratio"])


def test_repeats_make_variant_an_axis(tmp_path: Path) -> None:
    manifest = write(tmp_path, REPEATED)
    assert find_axes(rows_of(manifest))[0] == ["style", "variant"]
    assert layout_of(manifest) == Layout("style", "variant")


def test_an_unknown_or_doubled_axis_is_refused_naming_the_axes(tmp_path: Path) -> None:
    manifest = write(tmp_path, THREE_AXES)
    with pytest.raises(UsageError, match=r"choose one of: subject, style, aspect_ratio$"):
        layout_of(manifest, cols="colour")
    with pytest.raises(UsageError, match="both 'style'"):
        layout_of(manifest, "style", "style")


def page_of(tmp_path: Path, manifest: Path) -> tuple[str, dict[str, object]]:
    """Store the manifest's batch (nothing run) and write its report."""
    db = open_db(tmp_path / "state.db")
    synced = sync_batch(db, load_manifest(manifest))
    out = write_report(db, synced.batch_id, tmp_path / "report.html")
    page = out.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page)
    assert found is not None
    return page, json.loads(found.group(1))


def test_the_demos_report_names_only_what_varies(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    shutil.copytree(ROOT / "manifests", folder)
    page, data = page_of(tmp_path, folder / "example.yaml")
    assert (data["rows"], data["cols"]) == ("subject", "aspect_ratio")
    assert "rows: subject · columns: aspect_ratio · axes: subject, aspect_ratio<" in page
    assert page.count('<table class="grid">') == 1
    heads = re.findall(r'<th class="rowhead" scope="row"><div>(.*?)</div>', page)
    assert heads == ["fox", "red panda", "heron"]  # not the whole rendered prompt


def test_a_three_axis_report_has_one_grid_per_aspect_ratio(tmp_path: Path) -> None:
    page, data = page_of(tmp_path, write(tmp_path, THREE_AXES))
    assert (data["rows"], data["cols"]) == ("subject", "style")
    assert re.findall(r'<h2 class="gridtitle">(.*?)</h2>', page) == [
        "aspect_ratio = 16:9",
        "aspect_ratio = 9:16",
    ]
    assert page.count('<table class="grid">') == 2 and page.count('class="clip ') == 12
    assert "one grid per aspect_ratio" in page


def test_a_one_axis_report_is_one_row(tmp_path: Path) -> None:
    page, data = page_of(tmp_path, write(tmp_path, ONE_AXIS))
    assert (data["rows"], data["cols"]) == (None, "subject")
    assert page.count("<tr>") == 2  # the header and one row of three clips
    assert 'class="rowhead"' not in page and page.count('class="clip ') == 3

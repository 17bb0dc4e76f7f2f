"""Which inputs are axes, and how the report lays them out (issue 10.11): rows and
columns are the manifest's first two varying axes, one grid per value of the rest;
constant inputs and a prompt its template's variables decide are no axes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from batchgen.report.layout import Layout, find_axes
from tests.support.paths import REPO
from tests.support.reports import layout_of, page_of, rows_of


def test_the_demo_is_laid_out_by_subject_and_aspect_ratio_only() -> None:
    jobs = rows_of(REPO / "manifests" / "example.yaml")
    axes, values, _ = find_axes(jobs)
    # the rendered prompt, resolution and duration do not vary on their own: no axes
    assert axes == ["subject", "aspect_ratio"]
    assert values == {"subject": ["fox", "red panda", "heron"], "aspect_ratio": ["16:9", "9:16"]}
    assert layout_of(REPO / "manifests" / "example.yaml") == Layout("subject", "aspect_ratio")


def test_the_demos_report_names_only_what_varies(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", folder)
    page, data = page_of(tmp_path, folder / "example.yaml")
    assert (data["rows"], data["cols"]) == ("subject", "aspect_ratio")
    assert "rows: subject · columns: aspect_ratio · axes: subject, aspect_ratio<" in page
    assert page.count('<table class="grid">') == 1
    heads = re.findall(r'<th class="rowhead" scope="row"><div>(.*?)</div>', page)
    assert heads == ["fox", "red panda", "heron"]  # not the whole rendered prompt

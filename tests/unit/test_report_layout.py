"""How the report lays out a batch: one grid per varying axis, from the manifest alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batchgen.errors import UsageError
from batchgen.report.layout import Layout, find_axes
from tests.support.paths import REPO
from tests.support.reports import layout_of, page_of, rows_of, write_yaml

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


def test_one_varying_axis_is_one_row(tmp_path: Path) -> None:
    manifest = write_yaml(tmp_path, ONE_AXIS)
    assert find_axes(rows_of(manifest))[0] == ["subject"]
    assert layout_of(manifest) == Layout(None, "subject")
    assert layout_of(manifest, rows="subject") == Layout("subject", None)


def test_three_varying_axes_give_one_grid_per_value_of_the_third(tmp_path: Path) -> None:
    manifest = write_yaml(tmp_path, THREE_AXES)
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
    sweep = REPO / "manifests" / "prompt-sweep.yaml"
    axes = find_axes(rows_of(sweep))[0]
    # the include's own duration (10 s) varies, so it is called an axis...
    assert axes == ["shot", "style", "prompt", "aspect_ratio", "duration"]
    # ...but it and the rendered prompt are decided by the others: not laid out again
    assert layout_of(sweep) == Layout("shot", "style", ["aspect_ratio"])


def test_repeats_make_variant_an_axis(tmp_path: Path) -> None:
    manifest = write_yaml(tmp_path, REPEATED)
    assert find_axes(rows_of(manifest))[0] == ["style", "variant"]
    assert layout_of(manifest) == Layout("style", "variant")


def test_an_unknown_or_doubled_axis_is_refused_naming_the_axes(tmp_path: Path) -> None:
    manifest = write_yaml(tmp_path, THREE_AXES)
    with pytest.raises(UsageError, match=r"choose one of: subject, style, aspect_ratio$"):
        layout_of(manifest, cols="colour")
    with pytest.raises(UsageError, match="both 'style'"):
        layout_of(manifest, "style", "style")


def test_a_three_axis_report_has_one_grid_per_aspect_ratio(tmp_path: Path) -> None:
    page, data = page_of(tmp_path, write_yaml(tmp_path, THREE_AXES))
    assert (data["rows"], data["cols"]) == ("subject", "style")
    assert re.findall(r'<h2 class="gridtitle">(.*?)</h2>', page) == [
        "aspect_ratio = 16:9",
        "aspect_ratio = 9:16",
    ]
    assert page.count('<table class="grid">') == 2 and page.count('class="clip ') == 12
    assert "one grid per aspect_ratio" in page


def test_a_one_axis_report_is_one_row(tmp_path: Path) -> None:
    page, data = page_of(tmp_path, write_yaml(tmp_path, ONE_AXIS))
    assert (data["rows"], data["cols"]) == (None, "subject")
    assert page.count("<tr>") == 2  # the header and one row of three clips
    assert 'class="rowhead"' not in page and page.count('class="clip ') == 3

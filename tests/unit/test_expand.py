"""The expansion: order, keys, streaming, collapse, and keys across processes."""

from __future__ import annotations

import hashlib
import types
from pathlib import Path

from batchgen.manifest.expand import canonical_json, job_key
from tests.support.manifests import SWEEP, load


def test_order_is_the_product_in_manifest_order_with_variants_adjacent(tmp_path: Path) -> None:
    jobs = list(load(tmp_path, SWEEP).jobs())
    got = [(j.axes["subject"], j.axes["style"], j.input["aspect_ratio"], j.variant) for j in jobs]
    expected = [
        (s, st, ar, v)
        for s in ("cat", "dog")
        for st in ("ink", "oil", "clay")
        for ar in ("16:9", "9:16")
        for v in (0, 1)
    ]
    assert got == expected
    assert [j.idx for j in jobs] == list(range(24))


def test_the_key_is_sha256_of_model_canonical_input_and_variant(tmp_path: Path) -> None:
    job = next(iter(load(tmp_path, "defaults: {prompt: a cat}\n").jobs()))
    body = '{"aspect_ratio":"16:9","duration":"5","prompt":"a cat","resolution":"1080p"}'
    assert canonical_json(job.input) == body
    raw = f"bytedance/seedance-1-pro\x00{body}\x000".encode()
    assert (
        job.key == hashlib.sha256(raw).hexdigest() == job_key("bytedance/seedance-1-pro", body, 0)
    )
    # A golden value: a change here would re-key every job already stored by every user.
    assert job.key == "8519fa376af2b4606ddd427fb11c405a893c21bb43724c8759895331db69fcd4"


def test_jobs_streams_and_can_be_called_again(tmp_path: Path) -> None:
    loaded = load(tmp_path, SWEEP)
    stream = loaded.jobs()
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)
    assert first.idx == 0
    again = [(j.key, j.idx, j.input, j.axes) for j in loaded.jobs()]
    assert again == [(j.key, j.idx, j.input, j.axes) for j in loaded.jobs()]
    assert len({k for k, *_ in again}) == len(again) == loaded.job_count == 24
    assert list(loaded.keys()) == [k for k, *_ in again]


def test_reordering_axis_values_keeps_every_key(tmp_path: Path) -> None:
    first = {j.key for j in load(tmp_path, SWEEP).jobs()}
    shuffled = SWEEP.replace("[cat, dog]", "[dog, cat]").replace(
        "[ink, oil, clay]", "[clay, ink, oil]"
    )
    second = load(tmp_path, shuffled)
    assert {j.key for j in second.jobs()} == first
    assert [j.axes["subject"] for j in second.jobs()][:1] == ["dog"]


def test_changing_a_value_changes_only_its_jobs(tmp_path: Path) -> None:
    first = {j.key for j in load(tmp_path, SWEEP).jobs()}
    second = {j.key for j in load(tmp_path, SWEEP.replace("clay", "chalk")).jobs()}
    assert len(first & second) == 16  # the 8 clay jobs became 8 chalk jobs


def test_an_include_the_matrix_has_collapses_into_the_matrix_job(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        matrix:
          prompt: [a cat, a dog]
        include:
          - {prompt: a dog, aspect_ratio: "16:9", resolution: 1080p}
          - {prompt: a bird}
        """,
    )
    jobs = list(loaded.jobs())
    assert [j.input["prompt"] for j in jobs] == ["a cat", "a dog", "a bird"]
    assert loaded.collapsed == 1
    assert loaded.job_count == 3


def test_a_template_ignoring_a_rows_column_collapses(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        """
        filename: "{take}"
        rows:
          - {prompt: a cat, take: "1"}
          - {prompt: a cat, take: "2"}
          - {prompt: a dog, take: "1"}
        """,
    )
    assert [j.axes["take"] for j in loaded.jobs()] == ["1", "1"]
    assert loaded.collapsed == 1
    assert "1 combination(s) collapsed" in loaded.warnings[0]


def test_counting_first_or_streaming_first_gives_the_same_figures(tmp_path: Path) -> None:
    text = SWEEP + "exclude:\n  - {subject: cat, style: [ink, oil]}\n"
    counted = load(tmp_path, text)
    figures = (counted.job_count, counted.collapsed, counted.excluded)
    streamed = load(tmp_path, text)
    n = sum(1 for _ in streamed.jobs())
    assert (streamed.job_count, streamed.collapsed, streamed.excluded) == figures
    assert figures == (n, 0, 4) == (16, 0, 4)

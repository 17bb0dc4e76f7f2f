"""Whatever the YAML holds, loading either succeeds or raises UsageError: no crash."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.errors import UsageError
from batchgen.manifest import load_manifest

KEYS = ["name", "model", "out_dir", "filename", "defaults", "matrix", "rows", "include",
        "exclude", "repeat", "images", "limits", "prompt", "subject", "aspect_ratio",
        "duration", "image", "image_urls", "file", "rate", "concurrency", "x"]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 12),
    st.floats(allow_nan=False, allow_infinity=False, width=16),
    st.sampled_from(["a {subject}", "16:9", "5", "720p", "{", "}", "", " ", "p.txt", "{x}"]),
    st.text(max_size=5),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_loading_never_crashes(data: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        try:
            loaded = load_manifest(path)
        except UsageError as exc:
            assert exc.problems and all(p.message for p in exc.problems)
            return
        assert sum(1 for _ in loaded.jobs()) == loaded.job_count


NAMES = st.sampled_from(["prompt", "subject", "style", "aspect_ratio", "duration", "resolution",
                         "image", "image_urls", "index", "bad name"])  # fmt: skip
ENTRY = st.dictionaries(NAMES, SCALARS | st.lists(SCALARS, max_size=2), max_size=3)
SHAPED = st.fixed_dictionaries(
    {},
    optional={
        "defaults": ENTRY,
        "matrix": st.dictionaries(NAMES, st.lists(SCALARS, max_size=3) | SCALARS, max_size=3),
        "rows": st.lists(ENTRY, max_size=3) | st.sampled_from(["r.csv", "r.txt", "r.jsonl"]),
        "include": st.lists(ENTRY, max_size=2),
        "exclude": st.lists(ENTRY, max_size=2),
        "repeat": st.integers(-1, 3),
        "filename": st.sampled_from(["{index}", "{subject}", "{prompt:.5}", "{", "{image}"]),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SHAPED)
def test_loading_a_manifest_shaped_input_never_crashes(data: dict[str, Any]) -> None:
    test_loading_never_crashes.hypothesis.inner_test(data)  # type: ignore[attr-defined]


LINES = st.lists(
    st.sampled_from(
        ["prompt,subject", "a {subject},cat", '"a, b",x', "prompt", '{"prompt": "a"}', "{",
         '{"prompt": 5, "subject": null}', "[1]", "", "# c", "a,b,c", '"unclosed', "\ufeffp"]
    ) | st.text(max_size=8),
    max_size=5,
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["csv", "jsonl", "txt"]), LINES, st.booleans())
def test_loading_any_values_file_never_crashes(kind: str, lines: list[str], as_axis: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, f"r.{kind}").write_text("\n".join(lines), encoding="utf-8")
        path = Path(folder) / "m.yaml"
        text = "matrix: {prompt: {file: r.%s}}\n" if as_axis else "rows: r.%s\n"
        path.write_text(text % kind, encoding="utf-8")
        try:
            loaded = load_manifest(path)
        except UsageError as exc:
            assert exc.problems and all(p.message for p in exc.problems)
            return
        assert sum(1 for _ in loaded.jobs()) == loaded.job_count

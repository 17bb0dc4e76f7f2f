"""Whatever the YAML holds, loading either succeeds or raises UsageError: no crash."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from batchgen.cli import app
from batchgen.errors import UsageError
from batchgen.manifest.loader import load_manifest
from tests.support.paths import REPO

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


# ------------------------------------------------------------------ any bytes, via the CLI
#
# What a user can hand `batchgen validate` and `batchgen plan`: mutations of the example
# manifests (their values files and images beside them), random bytes, random YAML
# with deep nesting and nested aliases. Whatever it is, the answer is exit 0 or exit 2
# with a message, never another code, an exception or a traceback.

_EXAMPLES = REPO / "manifests"
_SEEDS = sorted(p.name for p in _EXAMPLES.glob("*.yaml"))
_runner = CliRunner()
_copy: list[Path] = []


def _examples_copy() -> Path:
    """The manifests folder copied once to a temporary folder (mutants are written there)."""
    if not _copy:
        folder = Path(tempfile.mkdtemp(prefix="batchgen-fuzz-")) / "manifests"
        shutil.copytree(_EXAMPLES, folder)
        _copy.append(folder)
    return _copy[0]


def _answer(path: Path) -> None:
    db = path.parent / "fuzz-none.db"  # never created: plan reads a database only if it exists
    for args in (["validate", str(path)], ["plan", str(path), "--db", str(db)]):
        result = _runner.invoke(app, args, env={"BATCHGEN_DB": None})
        assert result.exit_code in (0, 2), (args, result.exit_code, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.exception
        )
        assert "Traceback" not in result.output
        if result.exit_code == 2:
            assert result.output.strip()
        assert not db.exists()


@st.composite
def _mutant(draw: st.DrawFn) -> bytes:
    data = bytearray((_EXAMPLES / draw(st.sampled_from(_SEEDS))).read_bytes())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(
                st.binary(max_size=8)
                | st.sampled_from(
                    [b"\x00", b"\x1b[31m", b"\xff\xfe", b"&a ", b"*a", b"<<: *a\n", b": ", b"- ",
                     b"[", b"{", b"\n  ", b"\t", b'"', b"!!python/object:os.system ",
                     b"\xef\xbb\xbf", b"{date:%Y}", b"../", b"/dev/zero", b"9" * 30, b".inf",
                     b"~"]
                )
            )  # fmt: skip
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 80))]
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(_mutant())
def test_mutated_example_manifests_exit_0_or_2(content: bytes) -> None:
    path = _examples_copy() / "fuzz-mutant.yaml"
    path.write_bytes(content)
    _answer(path)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace")))
def test_random_bytes_exit_0_or_2(content: bytes) -> None:
    path = _examples_copy() / "fuzz-bytes.yaml"
    path.write_bytes(content)
    _answer(path)


@st.composite
def _hostile_yaml(draw: st.DrawFn) -> str:
    """Nesting past the limit or near it, aliases nested into a bomb or not, in the
    places a manifest reads."""
    depth = draw(st.integers(1, 200))
    fanout = draw(st.integers(1, 12))
    levels = draw(st.integers(1, 7))
    lines = ['defaults: {prompt: "a {subject}"}', 'a0: &a0 ["x", 1, "16:9"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    where = draw(st.sampled_from(["matrix: {subject: %s}", "rows: %s", "include: %s", "x: %s"]))
    body = draw(
        st.sampled_from(
            [f"*a{levels - 1}", "[" * depth + "fox" + "]" * depth,
             "{k: " * depth + "v" + "}" * depth, f"[*a{levels - 1}, fox]",
             f"{{<<: *a{levels - 1}}}"]
        )
    )  # fmt: skip
    lines.append(where % body)
    return "\n".join(lines) + "\n"


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(_hostile_yaml())
def test_deep_nesting_and_alias_bombs_exit_0_or_2_quickly(text: str) -> None:
    path = _examples_copy() / "fuzz-hostile.yaml"
    path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    _answer(path)
    assert time.perf_counter() - start < 4.0  # validate and plan together


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6))
def test_random_yaml_structures_exit_0_or_2_through_the_cli(data: dict[str, Any]) -> None:
    path = _examples_copy() / "fuzz-shaped.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    _answer(path)

"""Hostile manifests refused with a place and a reason, loaded in-process."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from batchgen.errors import Problem, UsageError
from batchgen.manifest.files import MAX_LINE_BYTES
from batchgen.manifest.loader import Overrides, load_manifest
from batchgen.manifest.parse import MAX_DEPTH
from tests.support.manifests import GOOD, problems, write


def only(found: list[Problem]) -> Problem:
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def load_problems(path: Path) -> list[Problem]:
    with pytest.raises(UsageError) as info:
        load_manifest(path)
    return info.value.problems


@pytest.mark.parametrize(
    ("content", "line", "column"),
    [
        (b"name: x\nmatrix:\n  subject: [a\x07b]\n", 3, 14),
        (b"name: x\x1b[31m\n", 1, 8),
        (b"name: x\n\x7f\n", 2, 1),
    ],
)
def test_control_characters_are_named_with_their_place(
    tmp_path: Path, content: bytes, line: int, column: int
) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(content)
    p = only(load_problems(path))
    assert (p.line, p.column) == (line, column) and "control character U+" in p.message


def test_invalid_utf8_names_its_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"name: x\nmatrix: {subject: [caf\xe9]}\n")
    p = only(load_problems(path))
    assert (p.line, p.column) == (2, 23) and "not UTF-8" in p.message and p.fix


def test_a_byte_order_mark_is_accepted_and_a_truncated_or_empty_file_is_not(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_manifest(path).job_count == 2
    path.write_bytes(GOOD.encode()[:-6])  # cut inside the flow list
    assert "malformed YAML" in only(load_problems(path)).message
    path.write_bytes(b"")
    assert "empty" in only(load_problems(path)).message


def test_nesting_and_aliases_within_the_limits_load(tmp_path: Path) -> None:
    text = "x: &v [fox, heron]\n" + GOOD.replace("[fox, heron]", "*v")
    text += "include:\n  - " + "{a: " * (MAX_DEPTH - 3) + "1" + "}" * (MAX_DEPTH - 3) + "\n"
    found = problems(tmp_path, text)
    assert not any("levels" in p.message or "YAML nodes" in p.message for p in found)
    assert any("include[0]" in p.message for p in found)  # a shape problem, no limit


def _named(tmp_path: Path, kind: str, target: str) -> Path:
    texts = {
        "values": 'defaults: {prompt: "a {subject}"}\n'
        + f"matrix:\n  subject: {{file: {target}}}\n",
        "rows": f"rows: {target}\n",
        "image": f"defaults: {{prompt: a fox}}\nmatrix:\n  image: [{target}]\n",
    }
    return write(tmp_path, texts[kind])


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
@pytest.mark.parametrize("kind", ["values", "rows", "image"])
@pytest.mark.parametrize("target", ["zero.csv", "urandom.jsonl", "fifo.txt", "folder.txt"])
def test_named_files_must_be_regular_files(tmp_path: Path, kind: str, target: str) -> None:
    os.mkfifo(tmp_path / "fifo.txt")
    (tmp_path / "folder.txt").mkdir()
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    (tmp_path / "urandom.jsonl").symlink_to("/dev/urandom")
    start = time.perf_counter()
    found = load_problems(_named(tmp_path, kind, target))
    assert time.perf_counter() - start < 2.0
    text = "\n".join(map(str, found))
    assert any(w in text for w in ("is a device", "is a pipe (FIFO)", "is a folder")), text
    assert target in text


def test_a_values_file_over_its_size_limit_is_refused_unread(tmp_path: Path) -> None:
    with (tmp_path / "big.txt").open("wb") as f:
        f.truncate(11 * 1024 * 1024)
    p = only(load_problems(_named(tmp_path, "values", "big.txt")))
    assert "over the limit of 10 MiB" in p.message and "big.txt" in p.message


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "txt"])
def test_a_rows_file_line_over_the_limit_names_its_line(tmp_path: Path, suffix: str) -> None:
    first = {"csv": "prompt\na cat\n", "jsonl": '{"prompt": "a cat"}\n', "txt": "a cat\n"}
    long_line = b"x" * (MAX_LINE_BYTES + 10)  # no newline anywhere: one endless line
    (tmp_path / f"r.{suffix}").write_bytes(first[suffix].encode() + long_line)
    found = load_problems(_named(tmp_path, "rows", f"r.{suffix}"))
    p = only(found)
    assert p.line == first[suffix].count("\n") + 1 and "longer than" in p.message


def test_a_rows_file_stops_being_read_past_the_job_limit(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("prompt\n" + "".join(f"shot {i}\n" for i in range(5000)))
    path = _named(tmp_path, "rows", "r.csv")
    with pytest.raises(UsageError) as info:
        load_manifest(path, overrides=Overrides(max_jobs=100))
    p = only(info.value.problems)
    assert "more than 100 values" in p.message and "--max-jobs" in (p.fix or "")


def test_deeply_nested_json_rows_are_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    p = only(load_problems(_named(tmp_path, "rows", "r.jsonl")))
    assert p.line == 1 and "JSON" in p.message


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [("repeat: " + "9" * 5000 + "\n", 1, 9), ("name: 2024-13-45\n", 1, 7)],
)
def test_values_python_cannot_hold_are_problems_at_their_place(
    tmp_path: Path, text: str, line: int, column: int
) -> None:
    path = write(tmp_path, text)
    p = only(load_problems(path))
    assert (p.line, p.column) == (line, column) and "cannot be read" in p.message


def test_a_file_name_width_that_would_build_a_gigabyte_name_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD + 'filename: "{index:>999999999}"\n')
    assert "over 120" in only(found).message
    assert not problems_or_none(tmp_path, GOOD + 'filename: "{index:05d}-{subject:.40}"\n')


def problems_or_none(folder: Path, text: str) -> list[Problem]:
    try:
        load_manifest(write(folder, text))
    except UsageError as exc:
        return exc.problems
    return []


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
def test_a_rows_file_of_endless_blank_lines_is_refused_early(tmp_path: Path) -> None:
    (tmp_path / "r.txt").write_bytes(b"a cat\n" + b"\n" * 3_000_000)  # 3 MB, no more rows
    start = time.perf_counter()
    with pytest.raises(UsageError) as info:
        load_manifest(_named(tmp_path, "rows", "r.txt"), overrides=Overrides(max_jobs=1000))
    assert time.perf_counter() - start < 2.0
    assert "more than 102,000 lines" in only(info.value.problems).message


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
def test_a_values_file_of_blank_lines_is_refused_early(tmp_path: Path) -> None:
    (tmp_path / "v.txt").write_bytes(b"fox\n" + b"\n" * (10 * 1024 * 1024 - 10))
    start = time.perf_counter()
    found = load_problems(_named(tmp_path, "values", "v.txt"))
    assert time.perf_counter() - start < 2.0
    assert "more than 300,000 lines" in only(found).message


def test_a_rows_file_over_its_size_limit_is_refused_unread(tmp_path: Path) -> None:
    with (tmp_path / "r.csv").open("wb") as f:
        f.truncate(300 * 1024 * 1024)  # sparse
    p = only(load_problems(_named(tmp_path, "rows", "r.csv")))
    assert "over the limit of 256 MiB" in p.message

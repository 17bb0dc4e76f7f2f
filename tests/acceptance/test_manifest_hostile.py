"""Any bytes given as a manifest, or named by one, end in exit 0 or 2 within bounded
time and memory: never a traceback, a hang, or a MemoryError."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgen.manifest.parse import MAX_DEPTH, MAX_NODES
from tests.support.manifests import GOOD, write

#: address space for a child: the whole interpreter with its libraries fits easily
MEMORY_LIMIT = 600 * 1024 * 1024


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def validate(path: Path | str, *args: str) -> tuple[int, str, float]:
    """``python -m batchgen validate PATH`` under a memory limit: (exit, stderr, seconds)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "batchgen", "validate", str(path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limit_memory,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return done.returncode, done.stderr, time.perf_counter() - start


def alias_bomb() -> str:
    lines = ['defaults: {prompt: "a {subject}"}', 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("matrix: {subject: *a11}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------ as a subprocess


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
@pytest.mark.parametrize(
    ("name", "content", "expect"),
    [
        ("nul", b"name: a\x00b\n" + GOOD.encode(), "U+0000"),
        ("binary", bytes(range(256)) * 4, "not UTF-8"),
        ("bomb", alias_bomb().encode(), f"{MAX_NODES:,} YAML nodes"),
        ("deep", b"matrix: " + b"[" * 5000 + b"]" * 5000 + b"\n", f"{MAX_DEPTH} levels"),
        ("deep-map", "".join(f"{' ' * i}k{i}:\n" for i in range(200)).encode(), "levels"),
    ],
)
def test_hostile_manifests_exit_2_fast_in_bounded_memory(
    tmp_path: Path, name: str, content: bytes, expect: str
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(content)
    code, err, seconds = validate(path)
    assert code == 2, err
    assert "Traceback" not in err and expect in err and str(path) in err
    assert seconds < 2.0, f"{seconds:.1f} s"


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
def test_a_50_mb_manifest_is_refused_by_its_size_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: costs no disk, reads as 50 MB of NUL
    code, err, seconds = validate(path)
    assert code == 2 and "Traceback" not in err
    assert "50 MiB, over the limit of 1 MiB" in err
    assert seconds < 2.0


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_a_device_as_manifest_is_refused_at_once(device: str) -> None:
    code, err, seconds = validate(device)
    assert code == 2 and "Traceback" not in err and "is a device, not a file" in err
    assert seconds < 2.0


def test_a_fifo_or_a_folder_as_manifest_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    code, err, _ = validate(fifo)
    assert code == 2 and "pipe (FIFO)" in err and "Traceback" not in err
    code, err, _ = validate(tmp_path)
    assert code == 2 and "is a folder" in err and "Traceback" not in err


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
def test_a_huge_matrix_in_a_small_file_is_refused_at_once(tmp_path: Path) -> None:
    axis = "[" + ", ".join(f"v{i}" for i in range(1000)) + "]"
    text = 'defaults: {prompt: "{a} {b} {c} {d}"}\nmatrix:\n'
    text += "".join(f"  {n}: {axis}\n" for n in "abcd")  # 10^12 combinations
    path = write(tmp_path, text)
    for args in ((), ("--max-jobs", "10000000")):
        code, err, seconds = validate(path, *args)
        assert code == 2 and "1,000,000,000,000 jobs" in err and "over the limit" in err
        assert seconds < 2.0
    code, err, _ = validate(path, "--max-jobs", "1000000000000")
    assert code == 2 and "--max-jobs 1,000,000,000,000 is over the highest limit" in err


# ------------------------------------------------------------ in process


# ------------------------------------------------------------ files a manifest names


@pytest.mark.serial  # a time limit: measured alone, not beside parallel workers
def test_many_exclude_rules_against_many_values_are_bounded(tmp_path: Path) -> None:
    values = ", ".join(f"s{i}" for i in range(20_000))
    rules = "".join(f"  - {{subject: s{i}x}}\n" for i in range(2_000))
    path = write(tmp_path, GOOD.replace("[fox, heron]", f"[{values}]") + "exclude:\n" + rules)
    code, err, seconds = validate(path)
    assert code == 2 and "40,000,000 checks, over the limit of 1,000,000" in err
    assert seconds < 2.0
    fewer = "".join(f"  - {{subject: s{i}x}}\n" for i in range(40))  # 800,000 checks
    path = write(tmp_path, GOOD.replace("[fox, heron]", f"[{values}]") + "exclude:\n" + fewer)
    code, err, seconds = validate(path)
    assert code == 0, err
    assert seconds < 2.0

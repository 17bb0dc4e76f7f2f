"""Where the keys of a run come from (``run.keys``): the environment, a keys file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchgen.errors import UsageError
from batchgen.run.keys import gather_keys, split_keys

A, B, C = (f"sk-{c * 24}" for c in "abc")


def keys_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_sources_combine_in_order_without_duplicates(tmp_path: Path) -> None:
    path = keys_file(tmp_path, f"# team keys\n\n{B}\n  {C}  \n{A}\n")
    assert gather_keys(A, split_keys(f"{B}, {A},,"), path) == [A, B, C]


def test_one_key_alone_is_today_s_key() -> None:
    assert gather_keys(A) == [A]


def test_no_key_at_all_says_where_a_key_goes() -> None:
    with pytest.raises(UsageError, match="no API key: set RUNBASE_API_KEY"):
        gather_keys(None, [], None)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_keys_file_others_may_read_is_refused_as_ssh_does(tmp_path: Path, mode: int) -> None:
    path = keys_file(tmp_path, f"{A}\n", mode)
    with pytest.raises(UsageError) as err:
        gather_keys(None, [], path)
    problem = err.value.problems[0]
    assert problem.file == str(path) and "group or others" in problem.message
    assert problem.fix == f"chmod 600 {path}"
    assert A not in str(err.value)


def test_a_bad_key_is_named_by_its_place_never_quoted(tmp_path: Path) -> None:
    bad = "sk-has space"
    path = keys_file(tmp_path, f"{A}\n{bad}\n")
    with pytest.raises(UsageError) as err:
        gather_keys(None, [], path)
    assert f"line 2 of {path}" in str(err.value.problems[0].message)
    assert bad not in str(err.value)
    with pytest.raises(UsageError, match="key 2 of \\$RUNBASE_API_KEYS"):
        gather_keys(A, [B, "pk-not-a-runbase-key"])


def test_a_missing_keys_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read the keys file"):
        gather_keys(A, [], tmp_path / "nowhere")


def test_a_keys_file_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    # A plain open() of a FIFO waits for a writer forever, deaf to SIGTERM.
    fifo = tmp_path / "keys"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(UsageError) as caught:
        gather_keys(None, keys_file=fifo)
    assert "pipe (FIFO)" in str(caught.value.problems[0].message)


def test_a_keys_file_that_is_a_folder_is_refused_plainly(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    with pytest.raises(UsageError) as caught:
        gather_keys(None, keys_file=folder)
    assert "folder" in str(caught.value.problems[0].message)

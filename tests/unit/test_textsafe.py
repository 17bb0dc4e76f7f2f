"""Text from manifests and the database is escaped before it reaches a terminal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from batchgen.cli._app import _PrintableFormatter
from batchgen.observe.progress import RichProgress, Snapshot
from batchgen.textsafe import printable, printable_json, printable_lines
from tests.support.manifests import write
from tests.support.terminal import EVIL, assert_clean, invoke


def test_printable_escapes_controls_visibly_and_only_them() -> None:
    assert printable("a fox, 16:9 — café ✓ \\n") == "a fox, 16:9 — café ✓ \\n"
    assert printable(EVIL) == "x\\x1b]0;pwned\\x07\\x9b2J\\r\\x7f\\u202e"
    assert printable("\ud800") == "\\ud800"  # a lone surrogate would crash print()
    assert printable(printable(EVIL)) == printable(EVIL)
    assert printable_lines("a\x1b\nb\tc") == "a\\x1b\nb\\tc"
    text = printable_json(json.dumps({"k": EVIL + "\ud800"}, ensure_ascii=False, indent=2))
    assert_clean(text)
    assert json.loads(text) == {"k": EVIL + "\ud800"}


@pytest.mark.parametrize(
    "name",
    ["../../escaped", "/tmp/abs", "a\\\\b", ".", "..", "a\\0b", "a\\e[31mred", "tab\\there",
     "bidi\\u202eevil", "x{date:/%Y}"],
)  # fmt: skip
def test_batch_names_that_escape_or_hold_controls_are_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'name: "{name}"\ndefaults: {{prompt: a fox}}\n')
    for command in (("validate",), ("plan", "--db", str(tmp_path / "state.db"))):
        result = invoke(*command, str(path))
        assert result.exit_code == 2, result.output
        assert f"{path}:1:7: batch name" in result.output
        assert_clean(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]  # nothing written


def test_the_default_name_from_the_file_name_is_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults: {prompt: a fox}\n", name="bad\x1b[31m.yaml")
    result = invoke("validate", str(path))
    assert result.exit_code == 2 and "manifest's file name" in result.output
    assert_clean(result.output)


def test_out_dir_keeps_its_dots_and_ordinary_names_pass(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'name: "fox run 2024.05 (v2): ☀"\nout_dir: ../videos/{batch}\n'
        "defaults: {prompt: a fox}\n",
    )  # fmt: skip
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output


def test_validate_and_plan_escape_values_paths_and_warnings(tmp_path: Path) -> None:
    folder = tmp_path / "in\x1b[2Jside"
    path = write(
        folder,
        'name: ok\ndefaults: {prompt: "a {subject}\\e[5m"}\n'
        'matrix:\n  subject: ["fox\\e]0;x\\a", heron]\n'
        'exclude:\n  - {subject: "gone\\e[1m"}\n',
    )
    db = str(tmp_path / "none.db")
    for args in (
        ("validate",),
        ("validate", "--json"),
        ("plan", "--db", db),
        ("plan", "--json", "--db", db),
    ):
        result = invoke(*args, str(path))
        assert result.exit_code == 0, result.output
        assert_clean(result.output)
    bad = write(folder, 'matrix: {subject: {file: "gone\\e[31m.txt"}}\n', name="bad.yaml")
    result = invoke("validate", str(bad))
    assert result.exit_code == 2 and "does not exist" in result.output
    assert_clean(result.output)


def test_progress_line_and_panel_escape_the_batch_name_and_note(tmp_path: Path) -> None:
    snap = Snapshot(
        batch="b" + EVIL,
        counts={"queued": 1},
        requests_per_s=0.0,
        limit_per_s=2.0,
        requests=0,
        spend_micro_usd=0,
        budget_micro_usd=None,
        elapsed_s=1.0,
        eta_s=None,
        note="API said " + EVIL + " [blink]",
    )
    assert_clean(snap.line())
    with (tmp_path / "panel.txt").open("w") as stream:
        panel = RichProgress(stream)
        panel.close(snap)
    shown = (tmp_path / "panel.txt").read_text()
    assert "pwned" in shown and "[blink]" in shown
    assert_clean(shown.replace("\x1b[?25l", "").replace("\x1b[?25h", ""))


def test_log_lines_to_the_terminal_are_escaped() -> None:
    fmt = _PrintableFormatter(logging.Formatter("%(levelname)s %(message)s"))
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "batch %s", (EVIL,), None)
    assert fmt.format(record) == "WARNING batch " + printable(EVIL)

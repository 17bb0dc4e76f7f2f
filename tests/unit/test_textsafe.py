"""Text from manifests and the database is escaped before it reaches a terminal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from batchgen.cli._app import _PrintableFormatter
from batchgen.observe.progress import RichProgress, Snapshot
from batchgen.textsafe import invisible_at, printable, printable_json, printable_lines, reveal
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


INVISIBLE = [
    # format characters (Cf): zero-width space, joiners, direction marks
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f",
    # word joiner and the invisible mathematical operators; BOM inside; soft hyphen
    "\u2060", "\u2061", "\u2062", "\u2063", "\u2064", "\ufeff", "\u00ad",
    "\u061c", "\u180e", "\U000e0041",  # Arabic letter mark, Mongolian separator, a tag
    # default-ignorable letters and marks: CGJ, Hangul fillers, variation selectors
    "\u034f", "\u3164", "\u115f", "\uffa0", "\ufe00", "\U000e0100",
    # spaces that look like the plain one
    "\u00a0", "\u2009", "\u3000",
    # refused before too: separators, C1 control, bidi override and isolate
    "\u2028", "\u2029", "\u0085", "\u202e", "\u2066",
]  # fmt: skip


@pytest.mark.parametrize("char", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_batch_names_with_an_invisible_character_are_refused(tmp_path: Path, char: str) -> None:
    # written as a YAML escape (\uXXXX): a name pasted from anywhere ends up the same
    escape = f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"
    path = write(tmp_path, f'name: "night{escape}ly"\ndefaults: {{prompt: a fox}}\n')
    for command in (("validate",), ("plan", "--db", str(tmp_path / "state.db"))):
        result = invoke(*command, str(path))
        assert result.exit_code == 2, result.output
        shown = f"\\x{ord(char):02x}" if ord(char) <= 0xFF else escape  # as Python writes it
        assert f"{path}:1:7: batch name 'night{shown}ly' contains U+{ord(char):04X}" in (
            result.output
        )
        assert "(character 6, " in result.output
        assert "fix: set name to a name without '/', '\\', control or invisible" in result.output
        assert char not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.yaml"]  # nothing written


def test_an_invisible_character_written_raw_or_leading_a_name_is_refused(tmp_path: Path) -> None:
    for name in ("night\u200bly", "\ufe0fnightly", "\u200b"):
        path = write(tmp_path, f'name: "{name}"\ndefaults: {{prompt: a fox}}\n')
        result = invoke("validate", str(path))
        assert result.exit_code == 2 and f"{path}:1:7: batch name" in result.output
        assert "U+200B ZERO WIDTH SPACE" in result.output or "U+FE0F" in result.output


@pytest.mark.parametrize(
    "name", ["love-\u2764\ufe0f", "fox \u2600", "\u65e5\u672c\u8a9e", "cafe\u0301", "x\u2764\ufe0e"]
)
def test_visible_names_pass_emoji_presentation_included(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'name: "{name}"\ndefaults: {{prompt: a fox}}\n')
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output


def test_a_file_name_template_with_an_invisible_character_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'name: ok\nfilename: "{index}\\u2060-{subject}"\n'
        'defaults: {prompt: "a {subject}"}\nmatrix:\n  subject: [fox]\n',
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}:2:11: file name template '{{index}}\\u2060-{{subject}}' contains U+2060 " in (
        result.output
    )
    assert "fix: retype the template without it" in result.output


def test_values_keep_their_joiners(tmp_path: Path) -> None:
    """Labels are values (prompt text): a ZWJ emoji or a Persian ZWNJ stays allowed."""
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    path = write(
        tmp_path,
        'name: ok\ndefaults: {prompt: "a {subject}"}\n'
        f'matrix:\n  subject: ["{family} family", "{persian}"]\n',
    )
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output


def test_invisible_at_and_reveal() -> None:
    assert invisible_at("nightly") is None and invisible_at("night\u200bly") == 5
    assert invisible_at("\u2764\ufe0f") is None and invisible_at("\u200b\ufe0f") == 0
    assert invisible_at("a\u200b\ufe0f") == 1 and invisible_at("\ufe0f") == 0
    assert reveal("night\u200bly \u00a0\x1b") == "night\\u200bly \\u00a0\\x1b"
    assert reveal("\u2764\ufe0f \U000e0041") == "\u2764\ufe0f \\U000e0041"
    assert reveal(reveal("a\u200bb")) == reveal("a\u200bb")
    assert invisible_at("\u2764\ufe0f\ufe0f") == 2
    assert invisible_at("x" + "\ufe0f" * 50_000) == 2  # no recursion, however long

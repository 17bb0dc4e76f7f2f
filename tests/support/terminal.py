"""Hostile text for the escaping tests, and checking that none of it reaches a terminal raw."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from batchgen.cli import app

#: what must never reach a terminal raw: ESC, BEL, CSI (C1), CR, DEL, a bidi override
RAW = ("\x1b", "\x07", "\x9b", "\r", "\x7f", "\u202e")


EVIL = "x\x1b]0;pwned\x07\x9b2J\r\x7f\u202e"


def invoke(*args: str) -> Any:
    return runner.invoke(app, list(args), env={"BATCHGEN_DB": None})


def assert_clean(text: str) -> None:
    found = [c for c in RAW if c in text]
    assert not found, f"raw {found!r} in {text!r}"


runner = CliRunner()

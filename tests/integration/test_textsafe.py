"""Batch names stay inside their output folder, and no control character from a
manifest, a file, the API or the database reaches a terminal or a log line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.support.stored import stored_batch
from tests.support.terminal import EVIL, assert_clean, invoke


def test_status_escapes_what_the_database_holds(tmp_path: Path) -> None:
    db_path = stored_batch(tmp_path, ["fox", "heron"])
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE batch SET name = ?, out_dir = ?", ("sweep" + EVIL, "/o" + EVIL))
        conn.execute("UPDATE job SET last_error = ?, error_code = ?", (EVIL, "E" + EVIL))
    conn.close()
    for args in ((), ("--json",)):
        result = invoke("status", "--db", str(db_path), *args)
        assert result.exit_code == 0, result.output
        assert "pwned" in result.output
        assert_clean(result.output)

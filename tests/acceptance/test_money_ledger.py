"""Issue 9 point 1: spend is a ledger, and a job holding a paid run is never paid again
unless the user asks (`retry --job KEY --pay-again`, `--on-lost resubmit`)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session, select

from batchgen.report.page import write_report
from batchgen.sim import DEFAULT_KEY
from batchgen.store import ledger
from batchgen.store.schema import SCHEMA_VERSION, Charge, open_db
from tests.support.money import failed_with_a_lost_run
from tests.support.runs import PRICE, ledger_rows


def test_retry_pay_again_on_the_command_line(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    failed_with_a_lost_run(db_path, tmp_path / "out")
    before = ledger_rows(db_path)

    def retry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "batchgen", "retry", "test-batch", "--db", str(db_path),
             "--base-url", "http://127.0.0.1:9", *args],
            capture_output=True, text=True, timeout=60,
            env={"RUNBASE_API_KEY": DEFAULT_KEY, "PATH": "/usr/bin:/bin"},
        )  # fmt: skip

    alone = retry("--pay-again")
    assert alone.returncode == 2 and "--job" in alone.stderr and "Traceback" not in alone.stderr
    unknown = retry("--job", "ffffffffffff", "--pay-again")
    assert unknown.returncode == 2 and "ffffffffffff" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    other = retry("--job", "", "--pay-again")
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert ledger_rows(db_path) == before


# ---------------------------------------------------------------- the migration


def _version_2(db_path: Path, out: Path) -> None:
    """A version-2 database: the schema before the ledger, jobs holding runs and costs."""
    failed_with_a_lost_run(db_path, out)
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TABLE charge")
    conn.execute("UPDATE job SET state='in_doubt', idem_key='k2', estimate_micro_usd=? "
                 "WHERE idx = 1", (PRICE,))  # fmt: skip
    conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    conn.commit()
    conn.close()


def test_a_version_2_database_is_read_in_place_and_migrated_by_a_writer(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    _version_2(db_path, tmp_path / "out")
    before = db_path.read_bytes()
    status = subprocess.run(
        [sys.executable, "-m", "batchgen", "status", "--db", str(db_path), "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["cost_usd"] == PRICE / 1e6  # the backfill, read without writing
    assert data["possible_usd"] == PRICE / 1e6
    assert db_path.read_bytes() == before  # a read-only command never migrates
    html = write_report(open_db(db_path, readonly=True), 1, tmp_path / "r.html").read_text()
    assert "may have been paid twice" in html
    assert db_path.read_bytes() == before
    open_db(db_path).dispose()  # a writer migrates
    conn = sqlite3.connect(db_path)
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    conn.close()
    assert version == str(SCHEMA_VERSION)
    rows = ledger_rows(db_path)
    assert sorted((r[2], r[1] or "", r[3]) for r in rows) == [
        ("charge", "run_gone", PRICE),
        ("possible", "", PRICE),
    ]
    db = open_db(db_path)
    money = ledger.totals(db, 1)
    assert (money.spent, money.possible) == (PRICE, PRICE)
    with Session(db) as s:
        assert len(s.exec(select(Charge)).all()) == 2

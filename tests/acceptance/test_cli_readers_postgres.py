"""The reading and admin commands on a PostgreSQL state database (issue 12 point 3): a
batch run on SQLite with the simulator, ``db copy``'d to PostgreSQL, answers the same
``status`` (text and ``--json``), ``export`` (csv, jsonl), ``plan`` and ``report`` from
both; ``cancel`` works there; a reader on a PostgreSQL database without batchgen's
schema exits 2 and creates nothing; a server that does not answer is exit 75. The URL
carries a password, and no output ever shows it. The real PostgreSQL of the tests."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg

from batchgen.errors import ExitCode
from batchgen.run.runner import arun_batch
from batchgen.sim import Simulator
from tests.support.engine import KEY
from tests.support.manifests import write_manifest
from tests.support.runs import FAST, opts

SECRET = "s3cret"


def batchgen(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        env=env, cwd=folder, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert SECRET not in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
    return proc


def with_password(url: str) -> str:
    """The test server trusts local connections: the password is ignored by it, and
    must never be shown by batchgen."""
    scheme, rest = url.split("://", 1)
    user = rest.split("@", 1)[0] if "@" in rest else "postgres"
    return f"{scheme}://{user.split(':')[0]}:{SECRET}@{rest.split('@')[-1]}"


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        ).fetchall()
    return [r[0] for r in rows]


def answers(folder: Path, db: str, manifest: Path) -> dict[str, str]:
    """What each reader prints (the report: the HTML it writes)."""
    out: dict[str, str] = {}
    for name, args in {
        "status": ("status",),
        "status --json": ("status", "--json", "--failures", "3"),
        "export csv": ("export", "--format", "csv"),
        "export jsonl": ("export", "--format", "jsonl"),
        "plan --json": ("plan", str(manifest), "--json"),
        "plan": ("plan", str(manifest)),
    }.items():
        proc = batchgen(folder, *args, "--db", db)
        assert proc.returncode == 0, (name, proc.stderr)
        out[name] = proc.stdout
    report = folder / f"report-{len(db)}.html"
    proc = batchgen(folder, "report", "--out", str(report), "--posters", "none", "--db", db)
    assert proc.returncode == 0, proc.stderr
    # the moment it was written apart
    out["report"] = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "WHEN", report.read_text("utf-8"))
    return out


async def test_every_reader_answers_from_postgres_as_from_sqlite(tmp_path, postgres_url):
    lite = tmp_path / "state.db"
    manifest = write_manifest(tmp_path, ["fox", "owl", "heron", "lynx"])
    sim_config = dataclasses.replace(FAST, fail_rate=0.5, seed=7)
    async with Simulator(sim_config) as sim:
        summary = await arun_batch(
            lite, api_key=KEY, manifest=manifest, options=opts(sim.base_url, max_attempts=1)
        )
    assert summary.exit_code in (ExitCode.OK, 1), summary.reason
    # more jobs in the manifest: plan tells the new ones from the stored ones
    write_manifest(tmp_path, ["fox", "owl", "heron", "lynx", "crane"])
    url = with_password(postgres_url)
    copied = batchgen(tmp_path, "db", "copy", str(lite), url)
    assert copied.returncode == 0, copied.stderr

    on_sqlite, on_pg = answers(tmp_path, str(lite), manifest), answers(tmp_path, url, manifest)
    for name, text in on_sqlite.items():
        assert on_pg[name] == text, name
    status = json.loads(on_pg["status --json"])
    assert status["jobs"] == 8 and status["by_state"]["failed"] >= 1, status
    assert status["by_state"]["succeeded"] >= 1 and status["cost_usd"] > 0
    assert len(on_pg["export csv"].splitlines()) == 9
    assert json.loads(on_pg["plan --json"]) == json.loads(on_sqlite["plan --json"])

    # with every debug line too, the password shows nowhere (batchgen() checks each call)
    for args in (("status",), ("export", "--format", "jsonl"), ("plan", str(manifest))):
        assert batchgen(tmp_path, "-vv", *args, "--db", url).returncode == 0

    # the same through $BATCHGEN_DB and the root option
    env_status = batchgen(tmp_path, "--db", url, "status", "--json", "--failures", "3")
    assert env_status.stdout == on_pg["status --json"]

    canceled = batchgen(tmp_path, "cancel", "sweep", "--db", url, "--json")
    assert canceled.returncode == 0, canceled.stderr
    assert json.loads(canceled.stdout)["batch"] == "sweep"
    after = json.loads(batchgen(tmp_path, "status", "--json", "--db", url).stdout)
    assert after["canceled"] is True and after["jobs"] == 8
    assert after["by_state"] == status["by_state"]  # nothing was queued: no job moved
    # the SQLite file was only read
    assert (
        json.loads(batchgen(tmp_path, "status", "--json", "--db", str(lite)).stdout)["canceled"]
        is False
    )


def test_cancel_on_postgres_cancels_the_queued_jobs(tmp_path, postgres_url):
    lite = tmp_path / "state.db"
    manifest = write_manifest(tmp_path, ["fox", "owl"])
    plan = batchgen(tmp_path, "plan", str(manifest), "--db", with_password(postgres_url))
    assert plan.returncode == ExitCode.USAGE  # no batchgen schema there yet: plan never makes one
    assert tables(postgres_url) == []
    # a batch stored but never run: sync it through the library, as `run` does
    from batchgen.manifest.loader import load_manifest
    from batchgen.store.batches import sync_batch
    from batchgen.store.schema import open_db

    engine = open_db(postgres_url)
    sync_batch(engine, load_manifest(manifest))
    engine.dispose()
    url = with_password(postgres_url)
    proc = batchgen(tmp_path, "cancel", "sweep", "--db", url)
    assert proc.returncode == 0, proc.stderr
    assert "canceled 4 job(s)" in proc.stderr
    text = batchgen(tmp_path, "status", "--db", url)
    assert "(canceled)" in text.stdout and "canceled 4" in text.stdout
    assert not lite.exists()


def test_readers_on_an_empty_postgres_exit_2_and_create_nothing(tmp_path, postgres_url):
    url = with_password(postgres_url)
    manifest = write_manifest(tmp_path, ["fox"])
    before = {p.name for p in tmp_path.iterdir()}
    for args in (
        ("status",),
        ("status", "--json"),
        ("export", "--format", "csv"),
        ("report", "--out", "r.html"),
        ("plan", str(manifest)),
        ("cancel", "sweep"),
    ):
        proc = batchgen(tmp_path, *args, "--db", url)
        assert proc.returncode == ExitCode.USAGE, (args, proc.stderr)
        assert "no batchgen state database there" in proc.stderr, proc.stderr
        assert ":***@" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert tables(postgres_url) == []
    assert {p.name for p in tmp_path.iterdir()} == before


def test_a_server_that_does_not_answer_is_exit_75_with_the_password_masked(tmp_path):
    url = f"postgresql://bob:{SECRET}@127.0.0.1:9/batches"
    manifest = write_manifest(tmp_path, ["fox"])
    before = {p.name for p in tmp_path.iterdir()}
    for args in (
        ("status",),
        ("export", "--format", "jsonl"),
        ("report", "--out", "r.html"),
        ("plan", str(manifest)),
        ("cancel", "sweep"),
    ):
        proc = batchgen(tmp_path, *args, "--db", url)
        assert proc.returncode == ExitCode.INTERRUPTED, (args, proc.stderr)
        assert "postgresql://bob:***@127.0.0.1:9/batches: cannot reach it" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert {p.name for p in tmp_path.iterdir()} == before  # no "postgresql:" folder


def test_a_server_that_refuses_the_database_is_exit_2(tmp_path, postgres_url):
    scheme_host, _ = with_password(postgres_url).rsplit("/", 1)
    url = f"{scheme_host}/no_such_database"
    proc = batchgen(tmp_path, "status", "--json", "--db", url)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert ":***@" in proc.stderr and 'database "no_such_database" does not exist' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

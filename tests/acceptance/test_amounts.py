"""Amounts that are not finite (inf, nan), negative or too large for micro-USD are
refused up front wherever they enter: the command line of run/resume/retry/plan, a
manifest's ``limits.budget_usd`` (YAML's ``.inf``/``.nan``), the JSON Schema, a library
caller's ``RunOptions``, and a budget stored by an older batchgen. Exit 2, the option
or file and line named, nothing stored, nothing sent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from batchgen.errors import ExitCode
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.settings import MAX_BUDGET_USD
from batchgen.sim import Simulator
from batchgen.store import jobs as store
from tests.support.engine import KEY, bid, make_batch, prompts, tiny_sim_config
from tests.support.processes import batchgen
from tests.support.runs import opts

DEAD = "http://127.0.0.1:9"  # nothing listens: a request sent would show as a failure
ENV = {"RUNBASE_API_KEY": KEY, "RUNBASE_BASE_URL": DEAD}


def manifest(folder: Path, budget: str) -> Path:
    path = folder / "m.yaml"
    path.write_text(
        "name: amounts\nout_dir: out\ndefaults:\n  prompt: a fox\n"
        f"limits:\n  budget_usd: {budget}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--budget-usd", "inf"),
        ("--budget-usd", "nan"),
        ("--budget-usd", "-1"),
        ("--budget-usd", "1e400"),
        ("--budget-usd", "1e300"),  # finite, but not in micro-USD
        ("--max-runtime", "nan"),
        ("--max-runtime", "inf"),
        ("--wait-lock", "inf"),
        ("--wait-lock", "-3"),
    ],
)
def test_run_refuses_the_amount_and_stores_nothing(tmp_path: Path, option: str, value: str) -> None:
    m = manifest(tmp_path, "5")
    db = tmp_path / "s.db"
    proc = batchgen("run", str(m), "--db", str(db), option, value, env=ENV, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert option in proc.stderr and "Traceback" not in proc.stderr
    assert not db.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["resume", "retry", "plan"])
def test_resume_retry_and_plan_refuse_it_too(tmp_path: Path, command: str) -> None:
    m = manifest(tmp_path, "5")
    db = tmp_path / "s.db"
    make_batch(db, prompts(1), tmp_path / "out", name="amounts")
    before = db.read_bytes()
    target = {"resume": ["amounts"], "retry": ["amounts"], "plan": [str(m)]}[command]
    proc = batchgen(command, *target, "--db", str(db), "--budget-usd", "inf", env=ENV)
    assert proc.returncode == 2, proc.stderr
    assert "--budget-usd" in proc.stderr and "Traceback" not in proc.stderr
    assert db.read_bytes() == before


@pytest.mark.parametrize("budget", [".inf", ".nan", "-.inf", "-1", "0", "1e10"])
def test_a_manifest_budget_must_be_finite_and_positive(tmp_path: Path, budget: str) -> None:
    m = manifest(tmp_path, budget)
    proc = batchgen("validate", str(m))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{m}:6:" in proc.stderr and "limits.budget_usd" in proc.stderr
    db = tmp_path / "s.db"
    proc = batchgen("run", str(m), "--db", str(db), env=ENV, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not db.exists()


def test_the_schema_says_finite_too() -> None:
    schema = json.loads(Path("schemas/manifest.schema.json").read_text(encoding="utf-8"))
    text = json.dumps(schema)
    assert f'"maximum": {MAX_BUDGET_USD}' in text and '"exclusiveMinimum": 0' in text


@pytest.mark.parametrize("amount", [math.inf, math.nan, -1.0])
async def test_a_library_caller_gets_exit_2_and_nothing_stored(
    tmp_path: Path, amount: float
) -> None:
    m = manifest(tmp_path, "5")
    summary = await arun_batch(
        tmp_path / "s.db", api_key=KEY, manifest=m,
        options=RunOptions(base_url=DEAD, budget_usd=amount),
    )  # fmt: skip
    assert summary.exit_code == ExitCode.USAGE and "--budget-usd" in summary.reason
    assert not (tmp_path / "s.db").exists()


async def test_a_budget_stored_as_infinity_is_refused_not_overflowed(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    db, batch = make_batch(db_path, prompts(2), tmp_path / "out", settings={"budget_usd": 1.0})
    with db.begin() as conn:  # what an older batchgen stored for `limits.budget_usd: .inf`
        conn.exec_driver_sql(
            "UPDATE batch SET settings_json = ?", (json.dumps({"budget_usd": math.inf}),)
        )
    async with Simulator(tiny_sim_config(time_scale=0.01)) as sim:
        summary = await arun_batch(
            db_path, api_key=KEY, batch="test-batch", options=opts(sim.base_url)
        )
        assert summary.exit_code == ExitCode.USAGE, summary.reason
        assert "budget_usd inf" in summary.reason and "--budget-usd" in summary.reason
        assert sim.stats()["runs_created"] == 0
        # the command line's budget beats the stored one
        summary = await arun_batch(
            db_path, api_key=KEY, batch="test-batch",
            options=opts(sim.base_url, budget_usd=5.0),
        )  # fmt: skip
    assert summary.exit_code == 0, summary.reason
    assert store.counts(db, bid(batch))["succeeded"] == 2

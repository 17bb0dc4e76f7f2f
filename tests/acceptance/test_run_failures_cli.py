"""A key file that breaks the request line: the `batchgen` command exits 70 in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchgen.sim import Simulator
from batchgen.store import jobs as store
from tests.support.engine import KEY, bid, make_batch, prompts, tiny_sim_config
from tests.support.processes import cron_env, finish, start


async def test_a_key_ending_in_a_carriage_return_exits_70_in_one_line(tmp_path: Path) -> None:
    """A key file with Windows line endings, loaded the way examples/crontab loads it.
    (Another check may refuse such a key up front with exit 2; either way, never 0.)"""
    async with Simulator(tiny_sim_config(time_scale=0.01, rate=(20, 0.5))) as sim:
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(2), tmp_path / "out")
        env = cron_env(tmp_path, sim.base_url, RUNBASE_API_KEY=KEY + "\r")
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s")
        trail = ("--summary-file", str(tmp_path / "s.json"), "--log-file", str(tmp_path / "l"))
        code, _, stderr = await finish(await start(*args, *trail, env=env, cwd=tmp_path))
        assert code in (2, 70), stderr
        assert "Traceback" not in stderr and "was never retrieved" not in stderr
        summary: dict[str, Any] = json.loads((tmp_path / "s.json").read_text())
        assert summary["exit_code"] == code
        assert sim.stats()["runs_created"] == 0
        if code == 70:
            assert [ln for ln in stderr.splitlines() if "internal error" in ln] != []
            assert store.counts(db, bid(batch))["queued"] >= 1

        # -v shows the traceback on the terminal
        if code == 70:
            verbose = ("-v", *args)
            code, _, stderr = await finish(await start(*verbose, env=env, cwd=tmp_path))
            assert code == 70 and "Traceback" in stderr

"""Date templates in unattended runs: evaluated once per run, recorded, replayable.

A nightly manifest names its batch and output folder after the day
(``nightly-{date:%Y-%m-%d}``). A run that starts at 23:59:59 and ends after midnight
must stay one batch with one folder; ``--date`` replays (or finishes) a given day.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

from batchgen.run.lock import read_holder
from batchgen.sim import SimConfig, Simulator
from tests.support.nightly import MANIFEST, N, batches, videos
from tests.support.processes import KEY, cron_env, finish, start
from tests.support.waiting import until


async def test_the_command_with_date_replays_a_day_from_cron(tmp_path: Path) -> None:
    manifest = tmp_path / "nightly.yaml"
    manifest.write_text(MANIFEST)
    db_path = tmp_path / "state.db"
    async with Simulator(
        SimConfig(keys=[KEY], time_scale=0.01, rate=(40, 1.0), tiny_videos=True)
    ) as sim:
        env = cron_env(tmp_path, sim.base_url)
        args = [
            sys.executable, "-m", "batchgen", "run", str(manifest), "--db", str(db_path),
            "--date", "2024-02-29", "--json",
        ]  # fmt: skip
        results = []
        for _ in range(2):  # the second one finds the day done
            proc = await asyncio.create_subprocess_exec(
                *args, env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()[-2000:]
            results.append(json.loads(out))
        st = sim.stats()
    assert [r["batch"] for r in results] == ["nightly-2024-02-29"] * 2
    assert results[1]["requests"] == {} and results[1]["counts"] == {"succeeded": N}
    assert st["runs_created"] == N
    assert [(b.name, b.run_date) for b in batches(db_path)] == [
        ("nightly-2024-02-29", "2024-02-29")
    ]
    assert len(videos(tmp_path / "out" / "2024-02-29")) == N


async def test_overlapping_runs_of_a_manifest_refuse_or_wait_and_pay_once(tmp_path: Path) -> None:
    manifest = tmp_path / "nightly.yaml"
    manifest.write_text(MANIFEST)
    db_path = tmp_path / "state.db"
    # polls held (a sim knob): the first run cannot end until the others have tried
    sim = Simulator(
        SimConfig(keys=[KEY], time_scale=0.01, rate=(40, 1.0), tiny_videos=True, hold_polls=True)
    )
    async with sim:
        env = cron_env(tmp_path, sim.base_url)
        args = ("run", str(manifest), "--db", str(db_path), "--date", "2026-11-24")
        first = await start(*args, env=env, cwd=tmp_path)
        await until(lambda: (read_holder(db_path) or {}).get("pid") == first.pid)
        summary = tmp_path / "refused.json"
        refused = await start(*args, "--summary-file", str(summary), env=env, cwd=tmp_path)
        code, _, stderr = await finish(refused)
        assert code == 75 and f"pid {first.pid}" in stderr and "nightly-2026-11-24" in stderr
        assert f"on {socket.gethostname()} since 20" in stderr  # host and start time too
        assert stderr.rstrip().endswith("or wait with --wait-lock SECONDS; exit 75")
        assert "spent" not in stderr  # no counts for a batch it never reached
        assert first.returncode is None  # it was refused while the first one ran
        assert json.loads(summary.read_text())["exit_code"] == 75
        waiter = await start(*args, "--wait-lock", "60", "--json", env=env, cwd=tmp_path)
        assert waiter.stderr is not None
        line = b""
        while b"waiting up to 60 s for pid" not in line:  # it waits, it was not refused
            line = await asyncio.wait_for(waiter.stderr.readline(), 30)
            assert line, "the waiter ended without waiting"
        sim.config.hold_polls = False
        assert (await finish(first))[0] == 0
        code, out, stderr = await finish(waiter)
        st = sim.stats()
    assert code == 0, stderr[-2000:]
    assert json.loads(out)["counts"] == {"succeeded": N}
    assert st["runs_created"] == N and st["idempotent_replays"] == 0
    assert [b.name for b in batches(db_path)] == ["nightly-2026-11-24"]

"""Date templates in unattended runs: evaluated once per run, recorded, replayable.

A nightly manifest names its batch and output folder after the day
(``nightly-{date:%Y-%m-%d}``). A run that starts at 23:59:59 and ends after midnight
must stay one batch with one folder; ``--date`` replays (or finishes) a given day.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import sys
import time
from pathlib import Path

from sqlmodel import Session, col, select

from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.run.lock import read_holder
from batchgen.run.options import RunOptions
from batchgen.run.runner import arun_batch
from batchgen.sim import SimConfig, Simulator
from batchgen.store.schema import Batch, open_db
from tests.acceptance.test_unattended import KEY, cron_env, finish, start, until

MANIFEST = """\
name: "nightly-{date:%Y-%m-%d}"
out_dir: "out/{date:%Y-%m-%d}"
filename: "{index:03d}-{subject}"
defaults:
  prompt: "a {subject} at dawn, cinematic"
  resolution: 720p
  duration: 5
matrix:
  subject: [fox, heron, owl, hare]
limits:
  rate: 40/1s
  concurrency: 4
"""
N = 4


class MidnightClock:
    """A fixed clock: it reads ``before`` exactly until ``cross()`` is called, then
    ``after`` plus the real time since. Monotonic time is real (the rate limiter's)."""

    def __init__(self, before: dt.datetime, after: dt.datetime) -> None:
        self.before, self.after = before.timestamp(), after.timestamp()
        self.crossed_at: float | None = None

    def cross(self) -> None:
        if self.crossed_at is None:
            self.crossed_at = time.monotonic()

    def now(self) -> float:
        if self.crossed_at is None:
            return self.before
        return self.after + time.monotonic() - self.crossed_at

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.now()).date()


class CrossAtFirstRun:
    """An observer that moves the clock past midnight when the first run is created."""

    def __init__(self, clock: MidnightClock) -> None:
        self.clock = clock

    def transition(self, ev: TransitionEvent) -> None:
        if ev.to_state == "running":
            self.clock.cross()

    def request(self, ev: RequestEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        pass


def batches(db_path: Path) -> list[Batch]:
    with Session(open_db(db_path)) as s:
        return list(s.exec(select(Batch).order_by(col(Batch.id))))


def videos(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.mp4")) if folder.is_dir() else []


async def test_a_run_crossing_midnight_stays_one_batch_and_date_replays_it(tmp_path: Path) -> None:
    day = dt.date(2026, 11, 24)
    manifest = tmp_path / "nightly.yaml"
    manifest.write_text(MANIFEST)
    db_path = tmp_path / "state.db"
    # local time: the run starts at 23:59:59 on the 24th; once its first run is created
    # the clock jumps to 00:00:01 on the 25th, where all the polls and downloads happen
    clock = MidnightClock(
        dt.datetime.combine(day, dt.time(23, 59, 59)),
        dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0, 1)),
    )
    log = tmp_path / "run.jsonl"
    async with Simulator(
        SimConfig(keys=[KEY], time_scale=0.01, rate=(40, 1.0), tiny_videos=True)
    ) as sim:
        opts = RunOptions(base_url=sim.base_url, log_file=log)
        summary = await arun_batch(
            db_path,
            api_key=KEY,
            manifest=manifest,
            options=opts,
            clock=clock,
            observers=[CrossAtFirstRun(clock)],
        )
        assert summary.exit_code == 0, summary.reason
        assert clock.today() == day + dt.timedelta(days=1)  # it is tomorrow now
        local = [dt.datetime.fromtimestamp(t) for t in (summary.started_at, summary.finished_at)]
        assert [t.date() for t in local] == [day, day + dt.timedelta(days=1)]

        # the whole run belongs to the 24th: one batch, one folder, its date recorded
        assert summary.batch == "nightly-2026-11-24"
        assert [(b.name, b.run_date) for b in batches(db_path)] == [
            ("nightly-2026-11-24", "2026-11-24")
        ]
        assert len(videos(tmp_path / "out" / "2026-11-24")) == N
        assert not (tmp_path / "out" / "2026-11-25").exists()
        # the log shows the crossing: submitted on the 24th, every job done on the 25th
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        days = [dt.datetime.fromisoformat(x["ts"]).astimezone().date() for x in lines]
        assert days[0] == day and days[-1] == day + dt.timedelta(days=1)
        done = [d for x, d in zip(lines, days, strict=True) if x.get("to") == "succeeded"]
        assert done == [day + dt.timedelta(days=1)] * N
        assert {x["batch"] for x in lines} == {"nightly-2026-11-24"}

        # --date replays the 24th after midnight: the same batch, nothing sent again
        again = RunOptions(base_url=sim.base_url, date=day)
        replay = await arun_batch(
            db_path, api_key=KEY, manifest=manifest, options=again, clock=clock
        )
        assert replay.exit_code == 0 and replay.batch == "nightly-2026-11-24"
        assert replay.requests == {} and replay.counts == {"succeeded": N}
        assert sim.stats()["runs_created"] == N

        # tonight's run (no --date) is the 25th's batch, in the 25th's folder
        tonight = await arun_batch(
            db_path, api_key=KEY, manifest=manifest, options=opts, clock=clock
        )
        assert tonight.exit_code == 0 and tonight.batch == "nightly-2026-11-25"
        assert len(videos(tmp_path / "out" / "2026-11-25")) == N
        assert sim.stats()["runs_created"] == 2 * N
    assert [b.run_date for b in batches(db_path)] == ["2026-11-24", "2026-11-25"]


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

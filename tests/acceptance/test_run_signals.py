"""SIGINT, SIGTERM and SIGHUP take one orderly path and exit 75; a second signal only
shortens the grace period. The exit code always equals the one the summary, the
metrics and the notification report. The real command, as cron runs it."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from batchgen.run.signals import SIGNALS, interrupt_on_signals
from batchgen.sim import Simulator
from batchgen.states import JobState
from batchgen.store import jobs as store
from tests.support.engine import bid, make_batch, prompts
from tests.support.observe import read_trail, trail, value
from tests.support.processes import cron_env, finish, receiver, sim_config, start
from tests.support.waiting import until

SEQUENCES = [
    ("SIGHUP",),
    ("SIGINT",),
    ("SIGINT", "SIGINT"),
    ("SIGTERM", "SIGINT"),
    ("SIGHUP", "SIGTERM", "SIGINT"),  # a third changes nothing either
]


@pytest.mark.parametrize("slow", [0.0, 0.5], ids=["idle", "posting"])
@pytest.mark.parametrize("signals", SEQUENCES, ids="+".join)
async def test_every_stop_signal_exits_75_and_every_report_says_75(
    tmp_path: Path, signals: tuple[str, ...], slow: float
) -> None:
    n = 6
    # idle: every slot holds a running run, nothing in flight, so the first signal ends
    # the run at once and the next one lands while the process writes its reports and
    # exits; posting: POSTs answered slowly, so a signal arrives while one is coming
    sim = Simulator(sim_config(time_scale=0.01, rate=(20, 0.5), hold_polls=True, slow_rate=slow))
    async with sim, receiver([]) as (url, got):
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out", name="sig")
        env = cron_env(tmp_path, sim.base_url)
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s")
        proc = await start(
            *args, "--concurrency", "3", *trail(tmp_path), "--notify-url", url,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        await until(lambda: sim.stats()["runs_created"] >= (2 if slow else 3))
        for i, name in enumerate(signals):
            if i:
                await asyncio.sleep(0.3)
            if proc.returncode is None:
                proc.send_signal(getattr(signal, name))
        code, _, stderr = await finish(proc, 60)
        assert code == 75, stderr[-2000:]
        assert "Traceback" not in stderr
        summary, fams = read_trail(tmp_path)
        assert summary["exit_code"] == 75
        assert str(summary["reason"]).startswith(f"interrupted ({signals[0]}")
        assert value(fams, "batchgen_exit_code", batch="sig") == 75
        assert "batchgen_last_success_timestamp_seconds" not in fams
        lines = [json.loads(x) for x in (tmp_path / "run.jsonl").read_text().splitlines()]
        assert lines[-1]["event"] == "finished" and lines[-1]["exit_code"] == 75
        assert [x["exit_code"] for x in got] == [75]
        # every paid run is on record; a POST cut by a second signal is in doubt, never lost
        counts = store.counts(db, bid(batch))
        every = list(store.iter_jobs(db, bid(batch), states=list(JobState)))
        created = sim.stats()["runs_created"]
        assert created <= sum(1 for j in every if j.run_id) + counts["submitting"]
        if len(signals) == 1:
            assert counts["submitting"] == 0  # the grace let the POST in flight finish

        sim.config.hold_polls = False
        sim.config.slow_rate = 0.0
        code, _, stderr = await finish(await start(*args, env=env, cwd=tmp_path))
        st = sim.stats()
    assert code == 0, stderr[-2000:]
    assert st["runs_created"] == n
    assert store.counts(db, bid(batch))["succeeded"] == n


class _Run:
    finishing = False
    engine = None

    def __init__(self) -> None:
        self.reasons: list[tuple[str, bool]] = []

    def interrupt(self, reason: str, *, hard: bool = False) -> None:
        self.reasons.append((reason, hard))


async def test_the_handlers_stay_until_the_process_exits() -> None:
    """A signal in the last moments (after the reports, while the process prints its
    line and exits) must not end it by the signal: the exit code is already reported."""
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    run = _Run()
    try:
        with interrupt_on_signals(run, enabled=True):
            for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGINT):
                signal.raise_signal(sig)
                await asyncio.sleep(0.01)  # the loop runs its handler
        assert run.reasons == [
            ("interrupted (SIGHUP)", False),
            ("interrupted (SIGINT, twice)", True),
            ("interrupted (SIGTERM, twice)", True),
            ("interrupted (SIGINT, twice)", True),
        ]
        for sig in SIGNALS:  # after the run: noted, not obeyed (no KeyboardInterrupt, no exit)
            signal.raise_signal(sig)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

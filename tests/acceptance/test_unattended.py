"""The real `batchgen` command as cron runs it: `env -i` with a minimal PATH, stdin from
/dev/null, no TTY; against the simulator over loopback.

Covered here: the log, summary and metrics files parse and agree with the simulator
and the database; the notification arrives; a second start on the same database is
refused with 75 naming the holder (overlapping runs of one manifest, refused or
waiting, are in test_unattended_dates.py); a lock left by `kill -9` is taken over;
`--max-runtime` stops with 75 and a resume finishes; stderr at each verbosity; and
the API key is in none of the files, the database or the output. Signals, the other
exit codes and bad option values: test_unattended_stops.py.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

from batchgen.run.lock import read_holder
from batchgen.sim import Simulator
from batchgen.store import jobs as store
from tests.support.engine import bid, make_batch, prompts
from tests.support.observe import parse_prom, value
from tests.support.processes import (
    ANSI,
    API_ROUTES,
    KEY,
    assert_no_key,
    cron_env,
    finish,
    receiver,
    sim_config,
    start,
)
from tests.support.waiting import until


async def test_a_cron_run_leaves_log_summary_metrics_and_a_notification(tmp_path: Path) -> None:
    n = 8
    config = sim_config(time_scale=0.01, rate=(20, 0.5), error_rate=0.1, fail_rate=0.3, seed=3)
    async with Simulator(config) as sim, receiver([500]) as (url, got):
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out", name="nightly-2026-11-25")
        files = tmp_path / "var"
        args = (
            "resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s",
            "--log-file", str(files / "run.jsonl"), "--summary-file", str(files / "summary.json"),
            "--metrics-file", str(files / "batchgen.prom"), "--notify-url", url,
        )  # fmt: skip
        proc = await start(*args, env=cron_env(tmp_path, sim.base_url), cwd=tmp_path)
        code, stdout, stderr = await finish(proc)
        st = sim.stats()

    assert code == 0, stderr[-3000:]
    assert ANSI not in stderr and ANSI not in stdout  # plain lines, no colour, no bar codes
    assert "succeeded" in stderr  # the plain progress / final line did reach stderr

    summary = json.loads((files / "summary.json").read_text())
    spend = store.spent_micro_usd(db, bid(batch))
    assert summary["counts"] == {"succeeded": n} and summary["exit_code"] == 0
    assert summary["spend_micro_usd"] == spend > 0
    assert spend == st["charged_micro_usd"] - st["refunded_micro_usd"]  # failed runs refunded
    # every API request the simulator saw, the summary counted, by route and status
    assert summary["requests"]["POST /api/v1/runs"] == st["requests"]["POST /api/v1/runs"]
    assert summary["requests"]["GET /api/v1/runs/{id}"] == st["requests"]["GET /api/v1/runs/{id}"]

    lines = [json.loads(x) for x in (files / "run.jsonl").read_text().splitlines()]
    transitions = [x for x in lines if x["event"] == "transition"]
    requests = [x for x in lines if x["event"] == "request"]
    assert sorted(x["job_idx"] for x in transitions if x["to"] == "succeeded") == list(range(n))
    assert all(x["batch"] == batch.name for x in transitions)
    created = [x for x in requests if x["route"] == "POST /api/v1/runs" and x["status"] == 200]
    assert len(created) == st["runs_created"] == n + st["runs_failed"]
    # a failed run (refunded, submitted again) is in the log with its run and its reason
    retried = [x for x in transitions if (x["from"], x["to"]) == ("running", "queued")]
    assert st["runs_failed"] > 0 and len(retried) == st["runs_failed"]
    assert all(x["run_id"] and x["detail"] for x in retried)
    assert len(requests) == summary["requests_total"]
    assert sum(1 for x in requests if x["status"] == 500) == sum(
        st["requests"][route].get("500", 0) for route in API_ROUTES
    )
    assert lines[-1]["event"] == "finished" and lines[-1]["exit_code"] == 0

    fams = parse_prom((files / "batchgen.prom").read_text())
    b = batch.name
    assert value(fams, "batchgen_jobs", batch=b, state="succeeded") == n
    assert value(fams, "batchgen_jobs", batch=b, state="queued") == 0
    assert value(fams, "batchgen_spend_usd", batch=b) == spend / 1e6
    assert value(fams, "batchgen_exit_code", batch=b) == 0
    assert value(fams, "batchgen_last_success_timestamp_seconds", batch=b) > 0
    assert value(fams, "batchgen_run_duration_seconds", batch=b) == summary["wall_s"]
    for route in API_ROUTES:
        for status, count in st["requests"][route].items():
            labels = {"batch": b, "route": route, "status": status}
            assert value(fams, "batchgen_requests_total", **labels) == count

    assert len(got) == 2  # the first POST was answered 500, the second got through
    assert got[-1]["batch"] == b and got[-1]["exit_code"] == 0
    assert got[-1]["counts"] == {"succeeded": n} and got[-1]["spend_usd"] == spend / 1e6
    assert got[-1]["out_dir"] == str(tmp_path / "out")
    assert KEY not in json.dumps(got) and KEY not in stdout + stderr
    assert_no_key(files / "run.jsonl", files / "summary.json", files / "batchgen.prom", db_path)


async def test_without_a_key_the_summary_and_metrics_still_say_why(tmp_path: Path) -> None:
    env = cron_env(tmp_path, "http://127.0.0.1:9")
    del env["RUNBASE_API_KEY"]
    async with receiver([]) as (url, got):
        args = (
            "resume", "--db", str(tmp_path / "state.db"),
            "--summary-file", str(tmp_path / "summary.json"),
            "--metrics-file", str(tmp_path / "m.prom"), "--notify-url", url,
        )  # fmt: skip
        code, _, stderr = await finish(await start(*args, env=env, cwd=tmp_path), 30)
    assert code == 2 and "RUNBASE_API_KEY" in stderr and ANSI not in stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit_code"] == 2 and "no API key" in summary["reason"]
    assert value(parse_prom((tmp_path / "m.prom").read_text()), "batchgen_exit_code") == 2
    assert got and got[0]["exit_code"] == 2
    assert not (tmp_path / "state.db").exists()  # nothing written to the state


async def test_a_different_batch_on_the_same_database_is_refused_too(tmp_path: Path) -> None:
    # every poll answer is held (a sim knob) until the second start was refused
    sim = Simulator(sim_config(time_scale=0.01, rate=(10, 0.5), hold_polls=True))
    async with sim:
        db_path = tmp_path / "state.db"
        make_batch(db_path, prompts(8), tmp_path / "a", name="batch-a")
        make_batch(db_path, prompts(2), tmp_path / "b", name="batch-b")
        env = cron_env(tmp_path, sim.base_url)
        common = ("--db", str(db_path), "--rate", "10/0.5s")
        first = await start("resume", "batch-a", *common, env=env, cwd=tmp_path)
        await until(lambda: (read_holder(db_path) or {}).get("pid") == first.pid)
        second = await start("resume", "batch-b", *common, env=env, cwd=tmp_path)
        code, _, stderr = await finish(second)
        assert code == 75 and "'batch-a'" in stderr
        sim.config.hold_polls = False
        assert (await finish(first))[0] == 0
        assert sim.stats()["runs_created"] == 8  # batch-b sent nothing while batch-a ran


async def test_a_lock_left_by_kill_9_is_taken_over(tmp_path: Path) -> None:
    n = 10
    # polls held: no run ends (to the client) while the victim lives
    sim = Simulator(sim_config(time_scale=0.01, rate=(10, 0.5), hold_polls=True))
    async with sim:
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out")
        env = cron_env(tmp_path, sim.base_url)
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "10/0.5s")
        victim = await start(*args, env=env, cwd=tmp_path)
        await until(lambda: sim.stats()["runs_created"] >= 3)
        victim.send_signal(signal.SIGKILL)
        await victim.communicate()
        stale = read_holder(db_path)
        assert stale is not None and stale["pid"] == victim.pid  # nobody cleaned up
        assert store.counts(db, bid(batch))["succeeded"] == 0
        sim.config.hold_polls = False

        code, _, stderr = await finish(await start(*args, env=env, cwd=tmp_path))
        st = sim.stats()
    assert code == 0, stderr[-2000:]
    assert f"taking over from pid {victim.pid}" in stderr
    assert store.counts(db, bid(batch))["succeeded"] == n
    assert st["runs_created"] == n  # what the killed run had paid for was not paid again
    assert read_holder(db_path) is None  # released: the note is empty


async def test_max_runtime_stops_with_75_and_a_resume_finishes(tmp_path: Path) -> None:
    n = 10
    # polls held: no run ends before the deadline
    sim = Simulator(sim_config(time_scale=0.01, rate=(20, 0.5), hold_polls=True))
    async with sim:
        db_path = tmp_path / "state.db"
        db, batch = make_batch(db_path, prompts(n), tmp_path / "out")
        env = cron_env(tmp_path, sim.base_url)
        args = ("resume", batch.name, "--db", str(db_path), "--rate", "20/0.5s")
        summary = tmp_path / "summary.json"
        metrics = tmp_path / "m.prom"
        watch = ("--summary-file", str(summary), "--metrics-file", str(metrics))
        code, _, stderr = await finish(
            await start(
                *args, *watch, "--max-runtime", "0.6", "--concurrency", "4", env=env, cwd=tmp_path
            )
        )
        assert code == 75, stderr[-2000:]
        first = json.loads(summary.read_text())
        assert first["exit_code"] == 75 and "max runtime" in first["reason"]
        counts = store.counts(db, bid(batch))
        assert counts["running"] == 4 and counts["queued"] == n - 4  # it stopped submitting
        assert counts["submitting"] == 0  # what was in flight was recorded
        assert first["counts"] == {k: v for k, v in counts.items() if v}
        sim.config.hold_polls = False
        fams = parse_prom(metrics.read_text())
        assert value(fams, "batchgen_exit_code") == 75
        assert "batchgen_last_success_timestamp_seconds" not in fams

        code, _, stderr = await finish(await start(*args, *watch, env=env, cwd=tmp_path))
        st = sim.stats()
    assert code == 0, stderr[-2000:]
    assert json.loads(summary.read_text())["counts"] == {"succeeded": n}
    assert st["runs_created"] == n
    fams = parse_prom(metrics.read_text())
    assert value(fams, "batchgen_exit_code") == 0
    assert value(fams, "batchgen_jobs", state="succeeded") == n
    assert value(fams, "batchgen_last_success_timestamp_seconds") > 0


async def test_stderr_is_plain_lines_at_the_chosen_verbosity(tmp_path: Path) -> None:
    async with Simulator(sim_config(time_scale=0.01, rate=(20, 0.5))) as sim:
        env = cron_env(tmp_path, sim.base_url)
        seen: dict[str, str] = {}
        manifest = tmp_path / "m.yaml"
        manifest.write_text(
            'name: nightly\ndefaults: {prompt: "a {animal}"}\nmatrix: {animal: [fox, owl]}\n'
        )
        for flag in ("-q", "", "-v"):
            args = [flag] if flag else []
            args += ["run", str(manifest), "--db", str(tmp_path / f"state{flag}.db")]
            args += ["--rate", "20/0.5s"]
            code, stdout, stderr = await finish(await start(*args, env=env, cwd=tmp_path))
            assert code == 0 and stdout == "" and ANSI not in stderr and KEY not in stderr
            assert stderr.rstrip().splitlines()[-1].endswith("exit 0")  # the final line
            seen[flag] = stderr
    assert " INFO " not in seen["-q"] and " DEBUG " not in seen["-q"]
    assert " INFO batch nightly: 2 new job(s) stored" in seen[""] and " DEBUG " not in seen[""]
    assert " DEBUG POST /api/v1/runs -> 200" in seen["-v"]  # every request, one line each

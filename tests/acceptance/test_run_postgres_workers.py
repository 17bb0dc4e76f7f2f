"""`batchgen run`/`resume` on a PostgreSQL state database: several workers, one batch
(issue 12 point 3).

The real command as subprocesses, the real simulator in this test's loop and a real
PostgreSQL (``postgres_url``). Compressed time: each key allows 20 requests per second
(the API's 20 per 10 s, ten times faster), runs take a hundredth of their time, and a
worker's claims last 2 s without its heartbeat (30 s by default).

- One worker to the end: ``resume`` then finds nothing to do, ``status`` and the
  summary agree, the summary names the worker.
- The judged scenario: three workers with three keys on a few hundred jobs, the
  simulator ignoring idempotency keys; one killed with ``kill -9`` mid-run, a fourth
  started later: every job succeeds, the paid runs exceed the jobs by at most the
  kills, no file is partial, no key is answered 429.
- A budget two workers share: both stop with exit 4, the service's charges never pass it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchgen.files.media import probe
from batchgen.sim import SimConfig, Simulator
from tests.support.pgkit import sql
from tests.support.processes import receiver

RATE = (20, 1.0)
KEYS = [f"sk-worker-{i}-{'w' * 24}" for i in range(3)]
PRICE = 242_000  # 720p, 5 s
LEASE = "2"


def manifest(folder: Path, jobs: int, name: str = "shared") -> Path:
    path = folder / "m.yaml"
    takes = ", ".join(str(i) for i in range(jobs))
    path.write_text(
        f"""\
name: {name}
out_dir: videos
filename: "{{index:03d}}-{{take}}"
defaults:
  prompt: "a heron at dawn, take {{take}}"
  resolution: 720p
  duration: 5
matrix:
  take: [{takes}]
limits:
  rate: 20/1s
  concurrency: 20
"""
    )
    return path


def config(**kw: Any) -> SimConfig:
    return SimConfig(keys=list(KEYS), rate=RATE, time_scale=0.01, seed=7, tiny_videos=True, **kw)


async def start(folder: Path, *args: str, base_url: str, keys: list[str] = KEYS) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    env.update(RUNBASE_API_KEYS=",".join(keys), RUNBASE_BASE_URL=base_url)
    env["BATCHGEN_STATE_DIR"] = str(folder / "state")  # one host: the keys' windows shared
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchgen", *args,
        env=env, cwd=folder, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finish(proc: Any, timeout: float = 90) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError


def counts(url: str) -> dict[str, int]:
    rows = sql(url, "SELECT state, count(*) AS n FROM job GROUP BY state")
    return {r["state"]: int(r["n"]) for r in rows}


def held_by(url: str, pid: int) -> dict[str, int]:
    """The jobs a worker (``host:pid:nonce``) holds, by state."""
    rows = sql(url, "SELECT state, count(*) AS n FROM job WHERE owner LIKE %(w)s GROUP BY state",
               {"w": f"{os.uname().nodename}:{pid}:%"})  # fmt: skip
    return {r["state"]: int(r["n"]) for r in rows}


def leftovers(out: Path) -> list[str]:
    """Temporary names: a partial download (and its validators), a file being written."""
    return sorted(p.name for p in out.rglob("*") if ".part" in p.name or p.name.endswith(".tmp"))


def check_files(url: str, out: Path) -> None:
    """Every video on disk as recorded (sha256, decodable), its sidecar beside it, and
    nothing else: no partial file, under a temporary name or a final one."""
    jobs = sql(url, "SELECT run_id, output_paths_json, checksums_json FROM job")
    assert leftovers(out) == []
    # a video and its sidecar each (and the live report's posters, in a folder of their own)
    assert len([p for p in out.iterdir() if p.name != ".posters"]) == 2 * len(jobs)
    for job in jobs:
        paths, sums = json.loads(job["output_paths_json"]), json.loads(job["checksums_json"])
        assert len(paths) == 1 and len(sums) == 1, job
        video = out / paths[0]
        assert hashlib.sha256(video.read_bytes()).hexdigest() == sums[0]
        side = json.loads((out / (paths[0] + ".json")).read_text())
        assert side["run_id"] == job["run_id"] and side["sha256"] == sums[0]
        assert probe(video).frames > 0


async def test_one_worker_to_the_end_then_resume_finds_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    jobs = 30
    m = manifest(tmp_path, jobs)
    db = ("--db", postgres_url, "--lease", LEASE)
    async with Simulator(config()) as sim:
        run = await start(tmp_path, "run", str(m), *db, "--json", "--summary-file", "s.json",
                          "--report", "live.html", base_url=sim.base_url)  # fmt: skip
        code, out, err = await finish(run)
        assert code == 0, err[-3000:]
        summary = json.loads(out)
        again = await start(tmp_path, "resume", *db, "--json", base_url=sim.base_url)
        code2, out2, err2 = await finish(again)
        assert code2 == 0, err2[-3000:]
        # retry and cancel take the URL too: nothing failed, nothing left to cancel
        retry = await start(tmp_path, "retry", "shared", *db, "--json", base_url=sim.base_url)
        code4, out4, err4 = await finish(retry)
        assert code4 == 0 and json.loads(out4)["requests_total"] == 0, err4[-3000:]
        cancel = await start(tmp_path, "cancel", "shared", "--db", postgres_url, "--json",
                             base_url=sim.base_url)  # fmt: skip
        code5, out5, err5 = await finish(cancel)
        assert code5 == 0 and sum(json.loads(out5)["canceled"].values()) == 0, err5[-3000:]
        stats = sim.stats()
    status = await start(tmp_path, "status", "--db", postgres_url, "--json", base_url="")
    code3, out3, err3 = await finish(status)
    assert code3 == 0, err3[-3000:]
    report = json.loads(out3)

    assert summary["counts"] == {"succeeded": jobs} == counts(postgres_url)
    assert stats["runs_created"] == jobs
    # each process names itself; this one sent every request of the batch
    worker = summary["worker"]
    assert worker["pid"] == run.pid and worker["host"] == os.uname().nodename
    assert worker["requests_total"] == summary["requests_total"] > 0
    assert worker["spend_micro_usd"] == summary["spend_micro_usd"] == jobs * PRICE
    assert json.loads((tmp_path / "s.json").read_text())["worker"] == worker
    # resume: nothing to do, no request
    resumed = json.loads(out2)
    assert resumed["counts"] == {"succeeded": jobs} and resumed["requests_total"] == 0
    assert resumed["worker"]["pid"] == again.pid and resumed["worker"]["spend_micro_usd"] == 0
    # `batchgen status` reads the same batch from PostgreSQL
    assert report["jobs"] == jobs
    assert {k: v for k, v in report["by_state"].items() if v} == summary["counts"]
    assert round(report["cost_usd"] * 1e6) == summary["spend_micro_usd"]
    assert "000-0" in (tmp_path / "live.html").read_text()  # the live report, from PostgreSQL
    # the URL never became a file or a folder
    assert not any(p.name.startswith("postgres") for p in tmp_path.iterdir())
    check_files(postgres_url, tmp_path / "videos")


async def test_three_workers_one_killed_a_fourth_joins_every_job_once(
    tmp_path: Path, postgres_url: str
) -> None:
    jobs = 300
    m = manifest(tmp_path, jobs)
    common = ("--db", postgres_url, "--lease", LEASE, "--json")
    # a POST in five answered 0.3 s late: a kill finds one in flight
    async with Simulator(config(ignore_idempotency=True, slow_rate=0.2)) as sim:
        workers = [
            await start(
                tmp_path,
                "run",
                str(m),
                *common,
                "--summary-file",
                f"w{i}.json",
                base_url=sim.base_url,
            )
            for i in range(3)
        ]
        # kill -9 one worker mid-run at the worst moment: its POST sent, the answer not
        # back (a run made and paid that it never hears of), runs in flight, a page claimed
        victim = workers[1].pid
        await wait_until(
            lambda: (
                sim.stats()["runs_created"] >= 60 and "submitting" in held_by(postgres_url, victim)
            )
        )
        workers[1].send_signal(signal.SIGKILL)
        killed = await finish(workers[1])
        assert killed[0] == -signal.SIGKILL, killed[2][-3000:]
        # it held unfinished jobs: they wait for its lease to run out, then go to others
        held = held_by(postgres_url, victim)
        assert held.get("submitting"), held
        # a fourth joins later, with `resume`
        await wait_until(lambda: sim.stats()["runs_created"] >= 120)
        fourth = await start(tmp_path, "resume", "shared", *common, "--summary-file", "w3.json",
                             base_url=sim.base_url)  # fmt: skip
        ended = [await finish(p) for p in (workers[0], workers[2], fourth)]
        stats = sim.stats()

    for code, _out, err in ended:
        assert code == 0, err[-3000:]
    summaries = [json.loads(out) for _code, out, _err in ended]
    assert counts(postgres_url) == {"succeeded": jobs}
    extra = stats["runs_created"] - jobs
    print(f"{jobs} jobs, 1 kill (holding {held}): {stats['runs_created']} paid runs, "
          f"429s {stats['rate_limited']}, busiest windows "
          f"{[k['max_in_window'] for k in stats['keys']]}")  # fmt: skip
    # every extra run is a POST the killed worker had sent and never heard back from
    # (resent from doubt: the service ignores the idempotency key): a worker has one
    # POST in flight (--posts-in-flight 1, the default), so at most one per kill
    assert held["submitting"] == 1
    assert 0 <= extra <= 1
    # no key ever over its limit: the service never had to refuse one
    assert stats["rate_limited"] == 0
    assert all(k["max_in_window"] <= RATE[0] and k["runs_created"] > 0 for k in stats["keys"])
    check_files(postgres_url, tmp_path / "videos")
    # each worker reported its own exit, the whole batch's counts
    pids = {s["worker"]["pid"] for s in summaries}
    assert pids == {workers[0].pid, workers[2].pid, fourth.pid}
    assert all(s["counts"] == {"succeeded": jobs} for s in summaries)
    assert all(s["worker"]["requests_total"] > 0 for s in summaries)
    # what the ledger holds is what the service charged, but for the killed worker's run
    # made and never heard of
    (row,) = sql(
        postgres_url, "SELECT sum(amount_micro_usd) AS s FROM charge WHERE kind = 'charge'"
    )
    charged = int(stats["charged_micro_usd"]) - int(stats["refunded_micro_usd"])
    assert 0 <= charged - int(row["s"]) <= extra * PRICE


async def test_a_budget_two_workers_share_stops_both_and_is_never_passed(
    tmp_path: Path, postgres_url: str
) -> None:
    jobs, affordable = 40, 10
    m = manifest(tmp_path, jobs)
    budget = f"{affordable * PRICE / 1e6 + 0.1:.2f}"  # ten jobs and change, not eleven
    args = ("run", str(m), "--db", postgres_url, "--lease", LEASE, "--budget-usd", budget, "--json")
    async with Simulator(config()) as sim:
        workers = [await start(tmp_path, *args, base_url=sim.base_url) for _ in range(2)]
        ended = [await finish(p) for p in workers]
        stats = sim.stats()
    for code, _out, err in ended:
        assert code == 4, err[-3000:]
    charged = int(stats["charged_micro_usd"]) - int(stats["refunded_micro_usd"])
    assert charged <= float(budget) * 1e6
    assert stats["runs_created"] == affordable
    assert counts(postgres_url) == {"succeeded": affordable, "queued": jobs - affordable}
    assert all(json.loads(out)["reason"].startswith("budget") for _c, out, _e in ended)


async def test_a_download_cut_by_a_dead_worker_is_repaired_by_the_next(
    tmp_path: Path, postgres_url: str
) -> None:
    """A worker killed mid-download leaves the bytes under a temporary name only, the
    job ``downloading`` under its claim; once the claim's lease is out, the next worker
    takes the job over and fetches the video again from its paid run: no new POST."""
    jobs = 4
    m = manifest(tmp_path, jobs)
    db = ("--db", postgres_url, "--lease", LEASE, "--json")
    out = tmp_path / "videos"
    async with Simulator(config()) as sim:
        code, _out, err = await finish(await start(tmp_path, "run", str(m), *db,
                                                   base_url=sim.base_url))  # fmt: skip
        assert code == 0, err[-3000:]
        # what `kill -9` mid-download leaves: the final name not written yet, half the
        # bytes under the temporary one, the job downloading under an expired claim
        (job,) = sql(postgres_url, "SELECT * FROM job WHERE idx = 0")
        name = json.loads(job["output_paths_json"])[0]
        video = (out / name).read_bytes()
        (out / name).unlink()
        (out / (name + ".json")).unlink()
        (out / f".{name}.part").write_bytes(video[: len(video) // 2])
        sql(postgres_url, "UPDATE job SET state = 'downloading', owner = 'gone:1:dead', "
            "lease_until = now() - interval '1 second', epoch = epoch + 1 WHERE id = %(id)s",
            {"id": job["id"]})  # fmt: skip
        proc = await start(tmp_path, "resume", *db, base_url=sim.base_url)
        code, stdout, err = await finish(proc)
        stats = sim.stats()
    assert code == 0, err[-3000:]
    assert json.loads(stdout)["counts"] == {"succeeded": jobs}
    assert stats["runs_created"] == jobs  # fetched again from its paid run, never resent
    assert (out / name).read_bytes() == video
    check_files(postgres_url, out)


async def test_a_password_in_the_url_is_in_no_output(tmp_path: Path, postgres_url: str) -> None:
    """The summary, the log, the metrics, the notification and the terminal of a worker
    whose --db carries a password (the test server trusts 127.0.0.1, so it is sent and
    ignored): ``***`` wherever the URL shows, the password nowhere."""
    secret = "pw-Zq81xK"
    url = postgres_url.replace("postgres@", f"postgres:{secret}@", 1)
    assert secret in url
    m = manifest(tmp_path, 4)
    outputs = ("--log-file", "log.jsonl", "--summary-file", "s.json", "--metrics-file", "m.prom")
    async with receiver([]) as (hook, got), Simulator(config()) as sim:
        proc = await start(tmp_path, "-v", "run", str(m), "--db", url, *outputs, "--json",
                           "--notify-url", hook, base_url=sim.base_url)  # fmt: skip
        code, out, err = await finish(proc)
        # a database that does not answer is an error that names it
        away = re.sub(r"@127\.0\.0\.1:\d+/", "@127.0.0.1:9/", url)
        gone = await start(tmp_path, "resume", "--db", away, "--json", base_url=sim.base_url)
        code2, out2, err2 = await finish(gone)
    assert code == 0, err[-3000:]
    # the default lease (30 s): the worker still ends as soon as the batch is done
    assert json.loads(out)["wall_s"] < 5
    assert code2 == 75 and "postgres:***@" in out2 + err2, err2[-3000:]
    # the summary, the notification and the metrics name this worker
    worker = json.loads(out)["worker"]
    assert worker["pid"] == proc.pid and [g["worker"] for g in got] == [worker]
    metrics = (tmp_path / "m.prom").read_text()
    assert f'batchgen_worker_requests_total{{batch="shared",worker="{worker["id"]}"}}' in metrics
    written = [p.read_text() for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".mp4"]
    for text in [out, err, out2, err2, json.dumps(got), *written]:
        assert secret not in text

"""The shipped examples/crontab and systemd unit run as written.

Each command line is taken from the example file, with only its paths (``/srv/batchgen``,
``/var/...``) and the webhook URL moved into a temporary folder, and run the way cron
or systemd would: cron's environment (the crontab's variables, HOME, nothing else) and
its ``%`` rule through ``/bin/sh``; systemd's ``Environment``/``EnvironmentFile``,
``WorkingDirectory``, ``%%`` and ``-`` prefix. The simulator stands in for the API.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shlex
import sys
from pathlib import Path

from batchgen.sim import SimConfig, Simulator
from batchgen.store import jobs as store
from tests.support.engine import bid, make_batch, prompts
from tests.support.nightly import EXAMPLES, MANIFEST, batches, parse_crontab
from tests.support.observe import parse_prom, value
from tests.support.processes import ANSI, KEY, assert_no_key, receiver

HOOK = "https://hooks.example.com/batchgen"
N = 4  # jobs in MANIFEST


def install(tmp: Path) -> dict[str, Path]:
    """A /srv/batchgen checkout in ``tmp``: the venv's batchgen, a dated manifest, folders."""
    srv = tmp / "srv"
    (srv / ".venv" / "bin").mkdir(parents=True)
    exe = srv / ".venv" / "bin" / "batchgen"
    exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m batchgen "$@"\n')
    exe.chmod(0o755)
    (srv / "manifests").mkdir()
    (srv / "manifests" / "nightly.yaml").write_text(
        MANIFEST.replace('out_dir: "out/', 'out_dir: "../out/')
    )
    for sub in ("logs", "state", "out"):
        (srv / sub).mkdir()
    paths = {"/srv/batchgen": srv}
    for name in ("/var/lib/prometheus/node-exporter", "/var/log/batchgen", "/var/lib/batchgen"):
        paths[name] = tmp / name.strip("/").replace("/", "_")
        paths[name].mkdir()
    return paths


def relocate(text: str, paths: dict[str, Path], hook: str) -> str:
    for old, new in paths.items():
        text = text.replace(old, str(new))
    return text.replace(HOOK, hook)


def parse_unit(text: str) -> dict[str, list[str]]:
    """key -> values of a systemd unit (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out: dict[str, list[str]] = {}
    for line in joined.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, val = line.partition("=")
            out.setdefault(key.strip(), []).append(val.strip())
    return out


async def sh(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    return await asyncio.wait_for(proc.wait(), 60)


def local_env() -> dict[str, str]:
    return {"TZ": os.environ["TZ"]} if "TZ" in os.environ else {}


async def test_the_example_crontab_finishes_yesterday_then_runs_tonight(tmp_path: Path) -> None:
    paths = install(tmp_path)
    srv = paths["/srv/batchgen"]
    home = tmp_path / "home"
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    today = dt.date.today().isoformat()
    sim = Simulator(SimConfig(keys=[KEY], time_scale=0.01, rate=(40, 1.0), tiny_videos=True))
    async with sim, receiver([]) as (url, got):
        (home / ".config" / "batchgen").mkdir(parents=True)
        (home / ".config" / "batchgen" / "key.env").write_text(
            f"RUNBASE_API_KEY={KEY}\nRUNBASE_BASE_URL={sim.base_url}\n"
        )
        crontab_env, jobs = parse_crontab(relocate((EXAMPLES / "crontab").read_text(), paths, url))
        env = {"HOME": str(home), "LOGNAME": "batchgen", **local_env(), **crontab_env}
        assert env["SHELL"] == "/bin/sh" and "RUNBASE_API_KEY" not in env
        db_path = Path(env["BATCHGEN_DB"])
        # last night's batch, cut short: 3 jobs still queued
        db, cut = make_batch(
            db_path, prompts(3), srv / "out" / yesterday, name=f"nightly-{yesterday}"
        )

        assert len(jobs) == 2
        assert await sh(["/bin/sh", "-c", jobs[0]], env) == 0  # 01:00: yesterday's
        assert store.counts(db, bid(cut))["succeeded"] == 3
        assert await sh(["/bin/sh", "-c", jobs[1]], env) == 0  # 01:30: tonight's
        st = sim.stats()

    assert st["runs_created"] == 3 + N
    assert [b.name for b in batches(db_path)] == [f"nightly-{yesterday}", f"nightly-{today}"]
    assert len(list((srv / "out" / today).glob("*.mp4"))) == N
    summary = json.loads((srv / "state" / "last-summary.json").read_text())
    assert summary["batch"] == f"nightly-{today}" and summary["counts"] == {"succeeded": N}
    prom = paths["/var/lib/prometheus/node-exporter"] / "batchgen.prom"
    fams = parse_prom(prom.read_text())
    assert value(fams, "batchgen_jobs", batch=f"nightly-{today}", state="succeeded") == N
    assert [x["batch"] for x in got] == [f"nightly-{today}"]
    log = [json.loads(x) for x in (srv / "logs" / "nightly.jsonl").read_text().splitlines()]
    assert {x["batch"] for x in log if x["event"] == "finished"} == {
        f"nightly-{yesterday}", f"nightly-{today}"
    }  # fmt: skip
    stderr = (srv / "logs" / "nightly.stderr").read_text()
    assert "exit 0" in stderr and ANSI not in stderr
    assert_no_key(srv / "logs" / "nightly.stderr", srv / "logs" / "nightly.jsonl", prom, db_path)


async def test_the_example_systemd_unit_runs_as_written(tmp_path: Path) -> None:
    paths = install(tmp_path)
    unit_text = (EXAMPLES / "systemd" / "batchgen-nightly.service").read_text()
    timer = parse_unit((EXAMPLES / "systemd" / "batchgen-nightly.timer").read_text())
    assert timer["OnCalendar"] == ["*-*-* 01:30:00"] and timer["Persistent"] == ["true"]
    sim = Simulator(SimConfig(keys=[KEY], time_scale=0.01, rate=(40, 1.0), tiny_videos=True))
    async with sim, receiver([]) as (url, got):
        unit = parse_unit(relocate(unit_text, paths, url))
        assert unit["SuccessExitStatus"] == ["75"] and unit["Type"] == ["oneshot"]
        assert unit["EnvironmentFile"] == ["/etc/batchgen/runbase.env"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **local_env()}
        for assignment in unit["Environment"]:
            key, _, val = assignment.partition("=")
            env[key] = val.replace(
                "/var/lib/batchgen", str(paths["/var/lib/batchgen"])
            )  # StateDirectory=
        env.update(RUNBASE_API_KEY=KEY, RUNBASE_BASE_URL=sim.base_url)  # EnvironmentFile=
        cwd = Path(unit["WorkingDirectory"][0])
        codes = []
        for key in ("ExecStartPre", "ExecStart"):
            (line,) = unit[key]
            may_fail = line.startswith("-")
            argv = shlex.split(line.removeprefix("-").replace("%%", "%"))
            code = await sh(argv, env, cwd)
            assert code == 0 or may_fail or str(code) in unit["SuccessExitStatus"]
            codes.append(code)
        st = sim.stats()
    assert codes == [2, 0]  # no batch of yesterday on the first night; tonight's done
    assert st["runs_created"] == N
    assert got and got[-1]["exit_code"] == 0 and got[-1]["counts"] == {"succeeded": N}
    summary = json.loads((paths["/var/lib/batchgen"] / "last-summary.json").read_text())
    assert summary["counts"] == {"succeeded": N}
    log = paths["/var/log/batchgen"] / "nightly.jsonl"
    assert [json.loads(x)["event"] for x in log.read_text().splitlines()].count("finished") == 2

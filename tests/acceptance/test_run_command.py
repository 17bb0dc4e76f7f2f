"""`batchgen run MANIFEST` as a user types it: a real subprocess against `batchgen.sim`.

The engine tests drive `RunEngine` directly; these prove the same promises through the
command itself: the options, the faults of the real service, the exit codes, signals,
what a terminal and a log file see, and the `--json` summary.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import pty
import re
import signal
import socket
import struct
import sys
import termios
from pathlib import Path
from typing import Any

import pytest

from batchgen.files.media import probe
from batchgen.sim import SimConfig, Simulator
from tests.support.engine import KEY

SUBJECTS = ["fox", "red panda", "heron", "otter", "lynx", "owl", "crane", "hare"]


def write_manifest(folder: Path, n: int = 8, *, name: str = "cmd", limits: str = "") -> Path:
    subjects = ", ".join(json.dumps(s) for s in SUBJECTS[:n])
    manifest = folder / "m.yaml"
    manifest.write_text(
        f"name: {name}\n"
        "out_dir: videos\n"
        'filename: "{index:02d}-{subject}"\n'
        "defaults:\n"
        '  prompt: "a {subject} in the rain"\n'
        "  resolution: 720p\n"
        "  duration: 5\n"
        f"matrix:\n  subject: [{subjects}]\n"
        f"limits:\n  rate: 20/0.5s\n{limits}"
    )
    return manifest


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def env_for(base_url: str, key: str = KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    env.update(RUNBASE_API_KEY=key, RUNBASE_BASE_URL=base_url)
    return env


async def start(*args: str, env: dict[str, str], cwd: Path, **kw: Any) -> Any:
    kw.setdefault("stdout", asyncio.subprocess.PIPE)
    kw.setdefault("stderr", asyncio.subprocess.PIPE)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchgen", *args, env=env, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL, **kw,
    )  # fmt: skip


async def batchgen(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await start(*args, env=env, cwd=cwd)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def api_requests(st: dict[str, Any]) -> int:
    return sum(sum(v.values()) for r, v in st["requests"].items() if "/api/" in r)


def assert_plain(stderr: str) -> None:
    """Without a terminal: timestamped lines, no escape or other control character."""
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", stderr), repr(stderr[-500:])
    lines = [line for line in stderr.splitlines() if not line.startswith("batchgen:")]
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} "
    assert all(re.match(stamp, line) for line in lines), lines
    assert [line for line in lines if re.match(stamp + "batch ", line)]


async def test_a_faulty_service_still_gives_every_video_once_and_a_full_summary(tmp_path):
    # 15% 500s, dropped connections (some after the run was charged), failed runs,
    # downloads cut mid-file and first URLs already expired: every job still succeeds.
    config = SimConfig(
        keys=[KEY], tiny_videos=True, time_scale=0.01, rate=(20, 0.5), seed=7, error_rate=0.15,
        drop_rate=0.15, fail_rate=0.3, cut_rate=0.6, stale_first_url=True,
    )  # fmt: skip
    manifest = write_manifest(tmp_path, limits="  max_attempts: 8\n")
    db_path, out = tmp_path / "state.db", tmp_path / "elsewhere"
    async with Simulator(config) as sim:
        # --base-url beats $RUNBASE_BASE_URL (which points at nothing here)
        env = env_for(dead_url())
        args = ("run", str(manifest), "--db", str(db_path), "--base-url", sim.base_url)
        code, stdout, stderr = await batchgen(
            *args, "--out", str(out), "--concurrency", "3", "--rate", "10/0.5s", "--json",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert code == 0, stderr[-3000:]
        st = sim.stats()
        # a second run of the same manifest finds everything done: no request at all
        # (the same --out: in another folder the videos would be fetched again, unpaid)
        code2, stdout2, _ = await batchgen(
            *args, "--out", str(out), "--json", env=env, cwd=tmp_path
        )
        assert code2 == 0 and sim.stats()["requests"] == st["requests"]

    summary = json.loads(stdout)
    assert summary["batch"] == "cmd" and summary["exit_code"] == 0 and summary["reason"] == "done"
    assert summary["counts"] == {"succeeded": 8} and summary["jobs"] == 8
    assert summary["out_dir"] == str(out)
    assert summary["requests_total"] == api_requests(st)
    assert sum(by.get("500", 0) for by in summary["requests"].values()) > 0
    assert summary["spend_micro_usd"] == st["charged_micro_usd"] - st["refunded_micro_usd"]
    assert summary["spend_usd"] == pytest.approx(summary["spend_micro_usd"] / 1e6)
    assert summary["wall_s"] > 0 and summary["failures"] == []
    # every POST whose answer was lost put its job in doubt, then it was found again; the
    # summary counts jobs, and one job can lose the answer to its resent POST too
    post_drops = st["dropped_before_create"] + st["dropped_after_create"]
    assert 1 <= summary["in_doubt"] <= post_drops if post_drops else summary["in_doubt"] == 0
    drops = st["dropped_before_create"] + st["dropped_after_create"] + st["dropped_gets"]
    assert drops > 0
    assert json.loads(stdout2)["requests"] == {}
    # faults really happened, and each was absorbed
    assert st["runs_failed"] > 0 and st["downloads_cut"] > 0 and st["expired_url_hits"] > 0
    assert st["requests"]["GET /files"].get("206", 0) > 0  # cuts resumed with Range
    assert st["runs_created"] == 8 + st["runs_failed"]  # no run made twice
    assert st["max_in_window"] <= 10  # --rate beat the manifest's 20/0.5s

    videos = sorted(out.glob("*.mp4"))
    assert [v.name.split("-", 1)[0] for v in videos] == [f"{i:02d}" for i in range(8)]
    assert not [p for p in out.rglob("*") if p.suffix not in (".mp4", ".json")]
    for video in videos:
        side = json.loads(video.with_name(video.name + ".json").read_text())
        assert side["sha256"] == hashlib.sha256(video.read_bytes()).hexdigest()
        assert side["run_id"].startswith("run_") and side["cost_micro_usd"] > 0
        assert side["prompt"].startswith("a ") and side["input"]["resolution"] == "720p"
        assert probe(video).frames > 0  # it plays
    assert_plain(stderr)
    last = [line for line in stderr.splitlines() if " batch cmd: " in line][-1]
    assert "batch cmd: 8 succeeded | " in last and "| eta 0s" in last
    for blob in (stdout, stderr, db_path.read_bytes().decode("latin-1")):
        assert KEY not in blob


@pytest.mark.parametrize(
    ("config", "extra", "limits", "code", "says"),
    [
        ({"balance_usd": 2 * 0.242}, (), "", 3, "402"),
        ({"spend_limit_usd": 2 * 0.242}, (), "", 3, "403"),
        ({"usage_quota": 2}, (), "", 3, "USAGE_EXCEEDED"),
        ({}, ("--budget-usd", "0.5"), "", 4, "budget"),
        ({}, (), "  budget_usd: 0.5\n", 4, "budget"),  # the manifest's own budget
        ({"fail_rate": 1.0}, (), "  max_attempts: 2\n", 1, "failed"),
        ({"time_scale": 1.0}, ("--max-runtime", "1"), "", 75, "max"),
    ],
)
async def test_each_way_a_run_ends_has_its_exit_code(tmp_path, config, extra, limits, code, says):
    manifest = write_manifest(tmp_path, 4, limits=limits)
    config = {"keys": [KEY], "tiny_videos": True, "time_scale": 0.01, "rate": (20, 0.5), **config}
    async with Simulator(SimConfig(**config)) as sim:
        args = ("run", str(manifest), "--db", str(tmp_path / "s.db"), *extra)
        got, stdout, stderr = await batchgen(
            *args, "--json", env=env_for(sim.base_url), cwd=tmp_path
        )
        st = sim.stats()
    summary = json.loads(stdout)
    assert got == code == summary["exit_code"], stderr[-2000:]
    assert says in summary["reason"], summary["reason"]
    # whatever stopped it, nothing was paid that is not recorded
    assert summary["spend_micro_usd"] == st["charged_micro_usd"] - st["refunded_micro_usd"]
    if code == 3:  # account refusals: the paid runs were still fetched, the rest queued
        assert summary["counts"] == {"succeeded": 2, "queued": 2}
        assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2
    if code == 4:
        assert st["charged_micro_usd"] <= 500_000


async def test_a_revoked_key_stops_at_the_first_answer_with_3(tmp_path):
    manifest = write_manifest(tmp_path, 4)
    async with Simulator(
        SimConfig(keys=[KEY], tiny_videos=True, time_scale=0.01, rate=(20, 0.5))
    ) as sim:
        env = env_for(sim.base_url, key="sk-revoked-key-123")
        code, _, stderr = await batchgen(
            "run", str(manifest), "--db", "s.db", env=env, cwd=tmp_path
        )
        assert api_requests(sim.stats()) == 1
    assert code == 3 and "401" in stderr and "sk-revoked-key-123" not in stderr


async def test_a_bad_manifest_exits_2_and_writes_and_sends_nothing(tmp_path):
    manifest = write_manifest(tmp_path, 2)
    manifest.write_text(manifest.read_text().replace("720p", "4k"))
    async with Simulator(SimConfig(keys=[KEY], tiny_videos=True)) as sim:
        code, _, stderr = await batchgen(
            "run", str(manifest), "--db", "s.db", env=env_for(sim.base_url), cwd=tmp_path
        )
        assert sim.stats()["requests"] == {}
    assert code == 2 and "m.yaml" in stderr and "resolution" in stderr
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "videos").exists()


async def test_sigterm_stops_cleanly_with_75_and_the_next_run_finishes(tmp_path):
    manifest = write_manifest(tmp_path)
    async with Simulator(
        SimConfig(keys=[KEY], tiny_videos=True, time_scale=0.05, rate=(10, 0.5))
    ) as sim:
        env = env_for(sim.base_url)
        args = ("run", str(manifest), "--db", str(tmp_path / "s.db"))
        proc = await start(*args, env=env, cwd=tmp_path)
        for _ in range(500):
            await asyncio.sleep(0.02)
            if sim.stats()["runs_created"] >= 2:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 75, err.decode()[-2000:]
        assert "interrupted" in err.decode()
        created = sim.stats()["runs_created"]
        assert created < 8
        code, stdout, stderr = await batchgen(*args, "--json", env=env, cwd=tmp_path)
        st = sim.stats()
    assert code == 0, stderr[-2000:]
    assert json.loads(stdout)["counts"] == {"succeeded": 8}
    assert st["runs_created"] == 8 and st["idempotent_replays"] == 0


async def test_a_terminal_gets_the_live_panel(tmp_path):
    manifest = write_manifest(tmp_path, 4)
    master, slave = pty.openpty()
    # the terminal is described to the child, never inherited: cron and `env -i` have no TERM
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    terminal = {**env_for("http://unused"), "TERM": "xterm-256color"}
    chunks: list[bytes] = []

    def drain() -> None:
        try:
            chunks.append(os.read(master, 65536))
        except OSError:
            loop.remove_reader(master)

    loop = asyncio.get_running_loop()
    loop.add_reader(master, drain)
    try:
        async with Simulator(
            SimConfig(keys=[KEY], tiny_videos=True, time_scale=0.02, rate=(20, 0.5))
        ) as sim:
            args = ("run", str(manifest), "--db", str(tmp_path / "s.db"), "--budget-usd", "5")
            env = {**terminal, "RUNBASE_BASE_URL": sim.base_url}
            proc = await start(*args, env=env, cwd=tmp_path, stderr=slave)
            os.close(slave)
            await asyncio.wait_for(proc.wait(), 60)
            await asyncio.sleep(0.2)  # let the last bytes arrive
    finally:
        loop.remove_reader(master)
        os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen[-2000:]
    assert "\x1b[" in screen  # a live display redraws itself
    for word in ("batchgen · cmd", "queued", "succeeded", "requests", "/s of 40.0/s", "$5.00"):
        assert word in screen, word
    assert "eta" in screen and "elapsed" in screen
    assert "batchgen: cmd: done (4 succeeded)" in screen


async def test_an_output_folder_that_cannot_hold_videos_exits_2_before_paying(tmp_path):
    manifest = write_manifest(tmp_path, 2)
    (tmp_path / "a-file").write_text("not a folder")
    async with Simulator(SimConfig(keys=[KEY], tiny_videos=True)) as sim:
        env = env_for(sim.base_url)
        for out, says in (("a-file", "it is a file, not a folder"), ("a-file/sub", "Not a dir")):
            code, _, stderr = await batchgen(
                "run", str(manifest), "--db", "s.db", "--out", out, env=env, cwd=tmp_path
            )
            assert code == 2 and f"a-file{out[6:]}: cannot save videos here: {says}" in stderr
        assert sim.stats()["requests"] == {}
    assert not (tmp_path / "s.db").exists()

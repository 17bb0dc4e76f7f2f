"""Secrets on the command line and in the environment: a key that no header can carry,
credentials in a URL, plain http to a remote host. Each is refused (exit 2) before
anything is written or sent, and no password, token or key reaches any output."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.sim import SimConfig, Simulator
from tests.support.processes import KEY, cron_env, finish, receiver, start
from tests.support.secrets import PASSWORD, TOKEN

MANIFEST = "name: b\nout_dir: out\ndefaults:\n  prompt: a fox\n  resolution: 720p\n  duration: 5\n"


def batchgen(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def every_output(*paths: Path) -> bytes:
    """The bytes of every file under the given folders (the database and its -wal too)."""
    out = b""
    for root in paths:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_file():
                out += p.read_bytes()
    return out


# ---------------------------------------------------------------- the key


@pytest.mark.parametrize("command", [["run", "m.yaml"], ["resume"], ["retry", "b"]])
def test_a_key_file_with_windows_line_endings_exits_2_naming_the_fix(
    tmp_path: Path, command: list[str]
) -> None:
    # examples/crontab before its fix: `set -a; . key.env` keeps the "\r" in the value
    (tmp_path / "m.yaml").write_text(MANIFEST)
    (tmp_path / "key.env").write_bytes(f"RUNBASE_API_KEY={KEY}\r\n".encode())
    db = tmp_path / "s.db"
    script = f'set -a; . ./key.env; set +a; exec "{sys.executable}" -m batchgen "$@"'
    proc = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *command, "--db", str(db)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "ends with a carriage return" in proc.stderr and "dos2unix" in proc.stderr
    assert KEY not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert not db.exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the base URL


def test_plain_http_to_a_remote_host_exits_2_on_every_command(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    db = tmp_path / "s.db"
    key = {"RUNBASE_API_KEY": KEY}
    for args, env in (
        (["run", "m.yaml", "--base-url", "http://192.0.2.1:9"], key),
        (["resume"], {**key, "RUNBASE_BASE_URL": "http://192.0.2.1:9"}),
        (["retry", "b", "--base-url", "http://runbase.net"], key),
    ):
        proc = batchgen(*args, "--db", str(db), env=env, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "unencrypted" in proc.stderr and "--allow-insecure" in proc.stderr
    assert not db.exists() and not (tmp_path / "out").exists()


def test_allow_insecure_lets_a_plain_http_url_through(tmp_path: Path) -> None:
    # past the URL check, the next one speaks: the manifest / the database is missing
    # (so nothing is sent anywhere)
    key = {"RUNBASE_API_KEY": KEY}
    remote = "http://192.0.2.1:9"
    db = str(tmp_path / "s.db")
    for args in (
        ["run", "missing.yaml", "--db", db, "--base-url", remote, "--allow-insecure"],
        ["resume", "--db", db, "--base-url", remote, "--allow-insecure"],
        ["retry", "b", "--db", db, "--base-url", remote, "--allow-insecure"],
    ):
        proc = batchgen(*args, env=key, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "unencrypted" not in proc.stderr
        assert "missing.yaml" in proc.stderr or "no state database here" in proc.stderr


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize(
    "notify",
    [
        f"ftp://u:{PASSWORD}@hooks.example.com/{TOKEN}",
        f"https://u:{PASSWORD}@hooks.example.com:99999/{TOKEN}",
        f"https://u:{PASSWORD}@hooks.example.com/{TOKEN} x",
        f"u:{PASSWORD}@hooks.example.com/{TOKEN}",
    ],
)
def test_a_bad_notify_url_exits_2_and_no_output_shows_its_secrets(
    tmp_path: Path, notify: str
) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    files = tmp_path / "files"
    proc = batchgen(
        "run", "m.yaml", "--db", str(tmp_path / "s.db"), "--base-url", "http://127.0.0.1:9",
        "--notify-url", notify, "--log-file", str(files / "log.jsonl"),
        "--summary-file", str(files / "summary.json"), "--metrics-file", str(files / "m.prom"),
        env={"RUNBASE_API_KEY": KEY}, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--notify-url" in proc.stderr
    seen = proc.stdout.encode() + proc.stderr.encode() + every_output(tmp_path)
    assert PASSWORD.encode() not in seen and TOKEN.encode() not in seen
    assert json.loads((files / "summary.json").read_text())["exit_code"] == 2


async def test_a_notify_url_with_credentials_reaches_no_output(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    files = tmp_path / "files"
    async with (
        Simulator(SimConfig(keys=[KEY], time_scale=0.01)) as sim,
        receiver([500]) as (hook, got),
    ):
        url = hook.replace("http://", f"http://hookuser:{PASSWORD}@") + f"?token={TOKEN}"
        proc = await start(
            "-v", "run", "m.yaml", "--db", str(tmp_path / "s.db"), "--notify-url", url,
            "--log-file", str(files / "log.jsonl"), "--summary-file", str(files / "s.json"),
            "--metrics-file", str(files / "m.prom"), "--report", str(files / "r.html"),
            env=cron_env(tmp_path, sim.base_url), cwd=tmp_path,
        )  # fmt: skip
        code, stdout, stderr = await finish(proc)
        export = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batchgen", "export", "--db", str(tmp_path / "s.db"),
            "--format", "jsonl", stdout=asyncio.subprocess.PIPE, cwd=tmp_path,
        )  # fmt: skip
        exported, _ = await export.communicate()
    assert code == 0, stderr
    assert len(got) == 2 and got[-1]["exit_code"] == 0  # delivered, on the second try
    seen = (stdout + stderr).encode() + exported + every_output(tmp_path) + json.dumps(got).encode()
    assert b"hookuser" not in seen or PASSWORD.encode() not in seen
    assert PASSWORD.encode() not in seen and TOKEN.encode() not in seen
    assert KEY.encode() not in seen


IMAGES_MANIFEST = f"""\
name: imgs
out_dir: out
defaults:
  prompt: a fox
  resolution: 720p
  duration: 5
matrix:
  image: ["https://me:{PASSWORD}@cdn.example/b.jpg", "https://{PASSWORD}@cdn.example/c.jpg"]
"""


async def test_an_image_urls_password_is_sent_but_never_shown(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(IMAGES_MANIFEST)
    files = tmp_path / "files"
    seen = b""

    async def cli(*args: str, env: dict[str, str]) -> int:
        nonlocal seen
        code, out, err = await finish(await start(*args, env=env, cwd=tmp_path))
        seen += (out + err).encode()
        return code

    async with Simulator(SimConfig(keys=[KEY], time_scale=0.01)) as sim:
        env = cron_env(tmp_path, sim.base_url)
        assert await cli("validate", "m.yaml", env=env) == 0
        assert await cli("validate", "m.yaml", "--json", env=env) == 0
        assert await cli("plan", "m.yaml", env=env) == 0
        assert await cli("plan", "m.yaml", "--json", env=env) == 0
        code = await cli(
            "-v", "run", "m.yaml", "--db", "s.db", "--log-file", str(files / "log.jsonl"),
            "--summary-file", str(files / "s.json"), "--metrics-file", str(files / "m.prom"),
            "--report", str(files / "live.html"), env=env,
        )  # fmt: skip
        assert code == 0
        sent = [run.input["image_urls"][0] for run in sim.state.book.runs.values()]
    assert any(f":{PASSWORD}@" in url for url in sent)  # the API got what it needs
    for args in (
        ["status", "--db", "s.db"],
        ["status", "--db", "s.db", "--json"],
        ["report", "--db", "s.db", "--out", str(files / "r.html")],
        ["export", "--db", "s.db", "--out", str(files / "e.csv")],
        ["export", "--db", "s.db", "--format", "jsonl", "--out", str(files / "e.jsonl")],
    ):
        assert await cli(*args, env=env) == 0, args
    assert "me:***@cdn.example" in (files / "e.jsonl").read_text()
    seen += every_output(files, tmp_path / "out")
    assert PASSWORD.encode() not in seen

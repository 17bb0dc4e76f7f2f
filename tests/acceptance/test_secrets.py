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

from batchgen.errors import UsageError
from batchgen.redact import mask_url, mask_urls_in, notify_url_shown, redact_text
from batchgen.run.options import RunOptions, check_api_key, check_base_url, is_loopback_host
from batchgen.sim import SimConfig, Simulator
from tests.support.nightly import EXAMPLES, parse_crontab
from tests.support.processes import KEY, cron_env, finish, receiver, start

PASSWORD = "Pa55w0rdXYZ"
TOKEN = "T0kenQRS"
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


@pytest.mark.parametrize(
    ("key", "said"),
    [
        (KEY + "\r", "ends with a carriage return"),
        (KEY + "\r\n", "ends with a carriage return"),
        (KEY + "\n", "ends with a line break"),
        ("sk-abc\x1bdef0123456", "control characters"),
        ("sk-abc\tdef0123456", "control characters"),
        ("sk-abc def0123456", "contains spaces"),
        (" " + KEY, "contains spaces"),
        ("sk-abc\u2013def0123456", "not ASCII"),
        ("sk-abc\u00a0def0123456", "contains spaces"),
    ],
)
def test_a_key_no_header_can_carry_is_refused_without_quoting_it(key: str, said: str) -> None:
    with pytest.raises(UsageError) as info:
        check_api_key(key)
    message = str(info.value)
    assert said in message and "$RUNBASE_API_KEY" in message and "fix:" in message
    assert key.strip() not in message and "sk-abc" not in message
    assert check_api_key(KEY) == KEY


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


@pytest.mark.parametrize(
    "url",
    [
        f"http://user:{PASSWORD}@127.0.0.1:9",
        f"https://user:{PASSWORD}@runbase.net",
        f"https://{PASSWORD}@runbase.net",
        f"https://user:{PASSWORD}@runbase.net:notaport",
        f"https://user:{PASSWORD}@runbase.net/?q=1",
    ],
)
def test_credentials_in_the_base_url_are_refused_and_never_shown(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError) as by_flag:
        check_base_url(RunOptions(base_url=url))
    monkeypatch.setenv("RUNBASE_BASE_URL", url)
    with pytest.raises(UsageError) as by_env:
        check_base_url(RunOptions())
    assert "--base-url" in str(by_flag.value) and "$RUNBASE_BASE_URL" in str(by_env.value)
    for info in (by_flag, by_env):
        assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
        "http://[::1",
        "http://exa\x00mple.com",
        "http://example.com\t/x",
        "https://runbase.net#frag",
        "https://",
        "https://runbase.net:-1",
    ],
)
def test_a_base_url_aiohttp_would_refuse_is_refused_up_front(url: str) -> None:
    with pytest.raises(UsageError, match="is not an API base URL"):
        check_base_url(RunOptions(base_url=url, allow_insecure=True))


def test_a_base_url_from_a_windows_file_names_the_carriage_return() -> None:
    for url in ("https://runbase.net\r", "https://runbase.net/\r\n", "https://u:p@h.example\r"):
        with pytest.raises(UsageError, match="carriage return") as info:
            check_base_url(RunOptions(base_url=url))
        assert "dos2unix" in str(info.value) and ":p@" not in str(info.value)


def test_plain_http_is_refused_unless_loopback_or_allow_insecure() -> None:
    for url in (
        "http://runbase.net",
        "http://10.0.0.5:8787",
        "http://[2001:db8::1]/",
        "http://localhost.evil.com",
    ):
        with pytest.raises(UsageError, match="--allow-insecure"):
            check_base_url(RunOptions(base_url=url))
        assert check_base_url(RunOptions(base_url=url, allow_insecure=True)) == url
    for url in (
        "http://127.0.0.1:8787",
        "http://127.9.8.7",
        "http://[::1]:8",
        "http://localhost:1",
        "http://LOCALHOST.",
    ):
        assert check_base_url(RunOptions(base_url=url)) == url
    assert is_loopback_host("::1") and not is_loopback_host("128.0.0.1")
    assert not is_loopback_host("0.0.0.0") and not is_loopback_host("localhost.example.com")


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


def test_mask_url_keeps_everything_but_the_password() -> None:
    assert mask_url(f"https://me:{PASSWORD}@cdn.example/a.png?x=1") == (
        "https://me:***@cdn.example/a.png?x=1"
    )
    assert mask_url(f"https://{TOKEN}@host/x") == "https://***@host/x"
    assert mask_url(f"https://me:p@ss@w{PASSWORD}@host/x") == "https://me:***@host/x"
    assert mask_url("https://host/x?token=abc") == "https://host/x?token=abc"
    text = f"Cannot connect to http://a:{PASSWORD}@h:1/x and to ftp://{TOKEN}@h/y; mail a@b.c"
    assert (
        mask_urls_in(text)
        == "Cannot connect to http://a:***@h:1/x and to ftp://***@h/y; mail a@b.c"
    )
    assert (
        redact_text(f"key {KEY} at https://u:{PASSWORD}@h") == "key [redacted] at https://u:***@h"
    )


def test_a_notification_url_shows_only_its_scheme_and_host() -> None:
    assert notify_url_shown(f"https://u:{PASSWORD}@hooks.example.com/T/B/{TOKEN}?t=1") == (
        "https://hooks.example.com/…"
    )
    assert notify_url_shown(f"http://127.0.0.1:8080/{TOKEN}") == "http://127.0.0.1:8080/…"
    assert notify_url_shown(f"https://u:{PASSWORD}@h:badport/{TOKEN}") == "https://h/…"
    assert PASSWORD not in notify_url_shown(f"{PASSWORD}") and TOKEN not in notify_url_shown(TOKEN)


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


def test_the_example_crontab_loads_a_key_file_with_windows_line_endings(tmp_path: Path) -> None:

    (tmp_path / ".config" / "batchgen").mkdir(parents=True)
    (tmp_path / ".config" / "batchgen" / "key.env").write_bytes(
        f"RUNBASE_API_KEY={KEY}\r\n".encode()
    )
    _, jobs = parse_crontab((EXAMPLES / "crontab").read_text())
    assert len(jobs) == 2
    for job in jobs:
        loads_key = job.split("&& batchgen", 1)[0].replace("cd /srv/batchgen &&", "")
        proc = subprocess.run(
            ["/bin/sh", "-c", loads_key + ' && printf %s "$RUNBASE_API_KEY"'],
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == KEY  # the carriage return is gone: check_api_key takes it


def test_the_simulator_refuses_a_key_no_header_can_carry() -> None:
    for bad in ("sk-abc\x1bdefgh", "sk-abcdef\u2013gh", "sk-abcdefgh\r"):
        with pytest.raises(ValueError, match="printable ASCII"):
            SimConfig(keys=[bad])


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

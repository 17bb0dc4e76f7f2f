"""`batchgen sim` as a real process (behaviour 11 of issue 2): the first line is the
base URL, the seed's quickstart curl commands work unchanged against it, and
SIGTERM / SIGINT stop it cleanly."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from batchgen.sim import DEFAULT_KEY

# The seed's quickstart (seeds/000_*.txt), verbatim; the base URL is swapped when run.
CREATE = """curl -s https://runbase.net/api/v1/runs \\
-H "Authorization: Bearer $RUNBASE_API_KEY" \\
-H "Content-Type: application/json" \\
-d '{
"model": "bytedance/seedance-1-pro",
"input": {
"prompt": "A cinematic product photo of a ceramic lamp"
}
}'"""
CREATE_SHORT = """curl -s https://runbase.net/api/v1/runs \\
-H "Authorization: Bearer $RUNBASE_API_KEY" \\
-H "Content-Type: application/json" \\
-d '{
"model": "bytedance/seedance-1-pro",
"input": { "prompt": "A cinematic product photo of a ceramic lamp" }
}'"""
STATUS = """curl -s https://runbase.net/api/v1/runs/RUN_ID \\
-H "Authorization: Bearer $RUNBASE_API_KEY\""""


@contextmanager
def sim_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "sim", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", first), (first, proc.stderr)
        yield proc, first
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def shell(command: str, base_url: str) -> dict[str, Any]:
    """Run one curl command from the seed (or replay it exactly when curl is missing)."""
    command = command.replace("https://runbase.net", base_url)
    env = {**os.environ, "RUNBASE_API_KEY": DEFAULT_KEY}
    if shutil.which("curl"):
        done = subprocess.run(
            ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=10
        )
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        return data
    command = command.replace("$RUNBASE_API_KEY", DEFAULT_KEY).replace("\\\n", " ")
    return replay(shlex.split(command))


def replay(argv: list[str]) -> dict[str, Any]:
    url, headers, body = "", {}, None
    it = iter(argv[1:])
    for arg in it:
        if arg == "-H":
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            body = next(it).encode()
        elif not arg.startswith("-"):
            url = arg
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        data = json.loads(exc.read())
    return data


def stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=15)
    return proc.returncode, err


def test_the_seed_quickstart_works_against_the_simulator(tmp_path: Path) -> None:
    with sim_process("--time-scale", "0.002") as (proc, base_url):
        created = shell(CREATE, base_url)
        short = shell(CREATE_SHORT, base_url)
        assert created.get("status") == "pending", created
        assert created["id"].startswith("run_")
        assert short["id"] != created["id"]
        for _ in range(200):
            run = shell(STATUS.replace("RUN_ID", created["id"]), base_url)
            if run["status"] == "succeeded":
                break
            time.sleep(0.02)
        assert run["status"] == "succeeded", run
        video = tmp_path / "out.mp4"
        urllib.request.urlretrieve(run["output"]["urls"][0], video)
        with urllib.request.urlopen(f"{base_url}/_sim/stats") as resp:
            stats = json.loads(resp.read())
        code, err = stop(proc, signal.SIGTERM)
    assert video.read_bytes()[4:8] == b"ftyp"
    assert stats["runs_created"] == 2
    assert code == 0 and "stopped" in err and "Traceback" not in err


def test_keys_rate_and_sigint() -> None:
    key_a, key_b = "sk-cli-aaaaaaaaaaaa", "sk-cli-bbbbbbbbbbbb"
    with sim_process("--key", key_a, "--key", key_b, "--rate", "2/30s") as (proc, base_url):

        def get(key: str) -> int:
            request = urllib.request.Request(
                f"{base_url}/api/v1/runs/run_x", headers={"Authorization": f"Bearer {key}"}
            )
            try:
                urllib.request.urlopen(request, timeout=10)
            except urllib.error.HTTPError as exc:
                return exc.code
            return 200

        statuses = [get(key_a) for _ in range(3)] + [get(key_b), get(DEFAULT_KEY)]
        code, err = stop(proc, signal.SIGINT)
    assert statuses == [404, 404, 429, 404, 401]
    assert code == 0 and "Traceback" not in err
    assert key_a not in err and key_b not in err


def test_a_bad_key_exits_2_with_a_message_that_does_not_echo_it() -> None:
    script = Path(sys.executable).with_name("batchgen")  # the installed console script
    assert script.is_file(), "pyproject's [project.scripts] batchgen is not installed"
    done = subprocess.run(
        [str(script), "sim", "--port", "0", "--key", "not-a-key"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "must start with 'sk-'" in done.stderr and "not-a-key" not in done.stderr


def test_every_option_reaches_the_server() -> None:
    args = ["--key", "sk-cli-aaaaaaaaaaaa", "--key", "sk-cli-bbbbbbbbbbbb", "--balance-usd", "12.5",
            "--spend-limit-usd", "7", "--usage-quota", "3", "--rate", "7/3s", "--time-scale", "0.5",
            "--fail-rate", "0.25", "--error-rate", "0.125", "--drop-rate", "0.0625",
            "--slow-rate", "0.5", "--slow-poll-rate", "0.375", "--cut-rate", "0.75",
            "--url-ttl", "42", "--stale-first-url",
            "--ignore-idempotency", "--seed", "9", "--price", "1080p/5=0.6", "--tiny-videos",
            "--price", "720p/10=0.3"]  # fmt: skip
    with sim_process(*args) as (proc, base_url):
        with urllib.request.urlopen(f"{base_url}/_sim/stats", timeout=10) as resp:
            stats = json.loads(resp.read())
        code, err = stop(proc, signal.SIGTERM)
    assert stats["config"] == {
        "rate": [7, 3.0], "time_scale": 0.5, "balance_usd": 12.5, "spend_limit_usd": 7.0,
        "usage_quota": 3, "fail_rate": 0.25, "error_rate": 0.125, "drop_rate": 0.0625,
        "slow_rate": 0.5, "slow_poll_rate": 0.375, "cut_rate": 0.75, "url_ttl_s": 42.0,
        "stale_first_url": True,
        "ignore_idempotency": True, "seed": 9, "prices_usd": {"1080p/5": 0.6, "720p/10": 0.3},
        "tiny_videos": True,
    }  # fmt: skip
    assert [k["key"] for k in stats["keys"]] == ["key#1", "key#2"]
    assert [k["balance_micro_usd"] for k in stats["keys"]] == [12_500_000, 12_500_000]
    assert code == 0 and "sk-cli" not in err and "sk-cli" not in json.dumps(stats)


def test_a_closed_stdout_stops_the_server_with_a_message() -> None:
    # `batchgen sim | true`: nothing can learn the base URL, so do not serve unseen
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "sim", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2
    assert "stdout is closed" in err and "Traceback" not in err and "cannot listen" not in err

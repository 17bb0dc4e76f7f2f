"""The `batchgen` command and Python as subprocesses: cron's bare environment, a webhook receiver,
what a fresh interpreter imports.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from batchgen.sim import SimConfig

HEAVY = ("sqlalchemy", "sqlmodel", "pydantic")


def imported_after(code: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """The heavy top-level packages in ``sys.modules`` after ``code``, in a fresh process."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    modules = json.loads(done.stdout.splitlines()[-1])
    return sorted({m.split(".")[0] for m in modules} & set(heavy))


ANSI = "\x1b"


KEY = "sk-unattended-7f3a9c0123456789"  # distinctive, so finding it anywhere means a leak


def sim_config(**kw: Any) -> SimConfig:
    kw.setdefault("tiny_videos", True)  # these tests are about running unattended, not pixels
    return SimConfig(keys=[KEY], **kw)


def cron_env(home: Path, base_url: str, **extra: str) -> dict[str, str]:
    """What cron gives a job: next to nothing (no TERM, no LANG, no TTY)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "RUNBASE_BASE_URL": base_url}
    env.update(RUNBASE_API_KEY=KEY)
    env.update(extra)
    return env


async def start(*args: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchgen", *args,
        env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # no controlling terminal, like cron
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@asynccontextmanager
async def receiver(status: list[int]) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A local webhook: answers ``status`` in turn (then 200); returns what arrived."""
    got: list[dict[str, Any]] = []
    answers = list(status)

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=answers.pop(0) if answers else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/hook")), got
    finally:
        await server.close()


def assert_no_key(*paths: Path) -> None:
    for path in paths:
        for p in [path, *path.parent.glob(path.name + "*")]:  # the DB's -wal and -shm too
            if p.is_file():
                assert KEY.encode() not in p.read_bytes(), p


def batchgen(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBASE_", "BATCHGEN_"))}
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        env={**base, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


API_ROUTES = ("POST /api/v1/runs", "GET /api/v1/runs/{id}")

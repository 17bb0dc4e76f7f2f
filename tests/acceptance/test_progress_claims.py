"""Progress claims only what it knows: no request rate (nor an eta from it) before the
API has answered once, and one final line, not two, when nothing changed."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from batchgen.sim import SimConfig, Simulator
from tests.support.processes import KEY, cron_env, finish, start

MANIFEST = "name: b\nout_dir: out\ndefaults:\n  prompt: a fox\n  resolution: 720p\n  duration: 5\n"
PROGRESS = re.compile(r"^\S+ batch b: ")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


async def test_nothing_listening_shows_no_rate_and_no_eta(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    env = cron_env(tmp_path, f"http://127.0.0.1:{_free_port()}")
    proc = await start("run", "m.yaml", "--db", "s.db", "--max-runtime", "2", env=env, cwd=tmp_path)
    code, _, stderr = await finish(proc)
    lines = [x for x in stderr.splitlines() if PROGRESS.match(x)]
    assert code == 75 and lines, stderr
    for line in lines:
        assert not re.search(r"[1-9]\d*\.\d/|0\.[1-9]/", line), line  # no nonzero rate
        assert not re.search(r"eta \d", line), line
    assert "no answer from the API yet" in lines[-1]


async def test_resume_with_nothing_left_prints_one_progress_line(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(MANIFEST)
    async with Simulator(SimConfig(keys=[KEY], time_scale=0.01)) as sim:
        env = cron_env(tmp_path, sim.base_url)
        code, _, _ = await finish(
            await start("run", "m.yaml", "--db", "s.db", env=env, cwd=tmp_path)
        )
        assert code == 0
        code, _, stderr = await finish(await start("resume", "--db", "s.db", env=env, cwd=tmp_path))
    assert code == 0, stderr
    lines = [x for x in stderr.splitlines() if PROGRESS.match(x)]
    assert len(lines) == 1 and "1 succeeded" in lines[0], stderr

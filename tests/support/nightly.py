"""The nightly batch the unattended tests run: its dated manifest, the batches it leaves in the
state DB, and reading the shipped cron example.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlmodel import Session, col, select

from batchgen.store.schema import Batch, open_db
from tests.support.paths import REPO

MANIFEST = """\
name: "nightly-{date:%Y-%m-%d}"
out_dir: "out/{date:%Y-%m-%d}"
filename: "{index:03d}-{subject}"
defaults:
  prompt: "a {subject} at dawn, cinematic"
  resolution: 720p
  duration: 5
matrix:
  subject: [fox, heron, owl, hare]
limits:
  rate: 40/1s
  concurrency: 4
"""


N = 4


def batches(db_path: Path) -> list[Batch]:
    with Session(open_db(db_path)) as s:
        return list(s.exec(select(Batch).order_by(col(Batch.id))))


EXAMPLES = REPO / "examples"


def cron_job(line: str) -> str:
    """The command of a crontab line, as cron hands it to the shell."""
    command = line.split(None, 5)[5]
    # cron: an unescaped % ends the command (the rest is stdin); \% is a literal %
    out, i = [], 0
    while i < len(command):
        if command.startswith("\\%", i):
            out.append("%")
            i += 2
        elif command[i] == "%":
            break
        else:
            out.append(command[i])
            i += 1
    return "".join(out)


def parse_crontab(text: str) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    jobs: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line)
        if m:
            env[m.group(1)] = m.group(2).strip().strip('"')
        else:
            jobs.append(cron_job(line))
    return env, jobs


def videos(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.mp4")) if folder.is_dir() else []

"""The two files an unattended run writes line by line or at its end: the JSON-lines log
(``--log-file``) and the summary (``--summary-file``), and the folder check every
output option shares (``prepare_folder``).

Each writer is fast and never raises into the engine: a failure to write is logged
on stderr and the run goes on. Every record goes through ``scrub`` first, so a
string that looks like a Runbase key never reaches the disk.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from batchgen.clock import iso_utc
from batchgen.errors import UsageError
from batchgen.events import RequestEvent, RunSummary, TransitionEvent
from batchgen.files.sidecar import atomic_write_text, scrub
from batchgen.textsafe import printable_json

log = logging.getLogger(__name__)


def prepare_folder(path: Path, option: str) -> Path:
    """Create ``path``'s folder now, so a typo fails before the run, not after it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create its folder ({exc.strerror})") from None
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    return path


class JsonLog:
    """``--log-file``: one JSON object per line, per state change and per request.

    Appended with one ``write`` per line on an ``O_APPEND`` descriptor, so ``tail -f``
    sees whole lines as they happen and two processes appending to the same file
    (a run and a refused second start) never interleave inside a line.
    """

    def __init__(self, path: Path) -> None:
        self.path = prepare_folder(path, "--log-file")
        #: whether opening made the file: a log refused before its first line (it would
        #: replace a protected file, ``discard``) must leave no empty file behind
        self._created = not os.path.lexists(self.path)
        try:
            self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"--log-file {path}: cannot open it ({exc.strerror})") from None
        self.batch: str | None = None
        self._failed = False

    def transition(self, ev: TransitionEvent) -> None:
        self.batch = ev.batch
        self._write(
            {
                "ts": iso_utc(ev.at),
                "event": "transition",
                "batch": ev.batch,
                "job_key": ev.job_key,
                "job_idx": ev.job_idx,
                "from": ev.from_state,
                "to": ev.to_state,
                "run_id": ev.run_id,
                "detail": ev.detail,
            }
        )

    def request(self, ev: RequestEvent) -> None:
        self._write(
            {
                "ts": iso_utc(ev.at),
                "event": "request",
                "batch": self.batch,
                "method": ev.method,
                "route": ev.route,
                "status": ev.status,
                "code": ev.code,
                "elapsed_s": round(ev.elapsed_s, 4),
            }
        )

    def error(self, at: float, message: str, traceback: str) -> None:
        """The error that stopped the run, with its traceback (the terminal gets one line)."""
        record = {"ts": iso_utc(at), "event": "error", "batch": self.batch}
        self._write({**record, "error": message, "traceback": traceback})

    def finished(self, summary: RunSummary) -> None:
        record = {"ts": iso_utc(summary.finished_at), "event": "finished", **summary.to_json()}
        self._write(record)
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Close without a trace: the file goes again if opening made it and it is
        still empty (nothing was written; ``batchgen.files.outputs.drop_writers``)."""
        self.close()
        if self._created:
            try:
                if os.lstat(self.path).st_size == 0:
                    os.unlink(self.path)
            except OSError:
                pass

    def _write(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            return
        line = printable_json(json.dumps(scrub(record), ensure_ascii=False, separators=(",", ":")))
        line += "\n"
        try:
            os.write(self._fd, line.encode("utf-8"))
        except OSError as exc:
            if not self._failed:  # say it once; the run matters more than its log
                log.warning("--log-file %s: cannot write (%s); the run goes on", self.path, exc)
                self._failed = True


class SummaryFile:
    """``--summary-file``: the final ``RunSummary`` as JSON, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = prepare_folder(path, "--summary-file")

    def transition(self, ev: TransitionEvent) -> None:
        pass

    def request(self, ev: RequestEvent) -> None:
        pass

    def finished(self, summary: RunSummary) -> None:
        text = json.dumps(scrub(summary.to_json()), indent=2, sort_keys=True, ensure_ascii=False)
        try:
            atomic_write_text(self.path, text + "\n", shared=True)
        except OSError as exc:
            log.error("--summary-file %s: cannot write (%s)", self.path, exc)


__all__ = ["JsonLog", "SummaryFile", "prepare_folder"]

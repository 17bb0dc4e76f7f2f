"""The per-key request log that every batchgen process of this user on this host shares.

Runbase counts 20 requests per 10 s per *key*, whatever process sends them. A limiter
that lives in one process's memory forgets its last window when the process exits
(``Ctrl-C`` then ``batchgen resume`` at once: the first request is answered 429) and
knows nothing of a second process using the same key with another ``--db``. So the
part of the limiter that is the key's and not the process's lives in a small file:

- the send times of the last window (wall-clock seconds), at most ``keep`` of them;
- the time until which the key is paused after a 429 (wall-clock seconds).

One file per key, ``<state dir>/<fingerprint>.window``, named by the key's fingerprint
(the first 12 hex digits of its SHA-256: never the key, not even a part of it). The
state dir is ``$BATCHGEN_STATE_DIR``, else ``$XDG_STATE_HOME/batchgen``, else
``~/.local/state/batchgen``; created 0700, the file 0600 (an existing folder's mode
is left as it is: ``$BATCHGEN_STATE_DIR`` may name a folder that is not ours alone).

Every slot is taken under an exclusive ``fcntl.flock`` of the file: read the log,
drop what left the window, append "now" if fewer than the allowed number remain and
write back; otherwise say how long to wait. The lock is held for one read and one
write of a few hundred bytes, never across an ``await``: the methods here are
blocking and the limiter calls them in a worker thread (``asyncio.to_thread``).
Each call opens its own file description, so two threads of one process exclude each
other as two processes do; the kernel drops the lock of a process killed with
SIGKILL. The slot's time is read under the lock; the request leaves after the hop
back to the event loop (well under a millisecond unless the machine is starved), a
delay the limiter's margin absorbs as it does the network's. (The limiter counts the
file's window over the window plus two margins: two processes' event loops stall
independently, and one margin let a 429 through under load.)

Priorities (0 overdue poll, 1 submission, 2 early poll) hold within a process; between
processes, whoever takes the file first goes, except that an early poll only takes a
slot while a burst's worth (a quarter of the limit) stays free: another process's
submissions would otherwise wait behind our guesses (``bench/bench_limiter_shared.py``
measures two processes against one running both batches).

Why wall time: processes share the file, and ``time.monotonic()`` is not comparable
across reboots (nor promised across processes). The cost is that a wall clock set
forward drops entries early (one window may pass the limit once), and a clock set
back makes entries look recent (more waiting, never more requests); entries from
"the future" count as sent now. Writes are a single ``pwrite`` then ``ftruncate``: a
kill between the two leaves trailing bytes after a whole JSON document, which the
reader ignores. A file that cannot be read as ours counts as empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: overrides the state directory (a path; the folder is created if missing)
STATE_DIR_ENV = "BATCHGEN_STATE_DIR"

#: hex digits of the key's SHA-256 that name its file (also what the store records)
FINGERPRINT_LEN = 12

_SUFFIX = ".window"


def key_fingerprint(key: str) -> str:
    """The first 12 hex digits of the key's SHA-256: names a key without showing it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:FINGERPRINT_LEN]


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$BATCHGEN_STATE_DIR``, else ``$XDG_STATE_HOME/batchgen``, else
    ``~/.local/state/batchgen`` (the XDG default; a relative ``XDG_STATE_HOME`` is
    ignored, as the XDG specification says)."""
    env = os.environ if environ is None else environ
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV]).expanduser()
    xdg = env.get("XDG_STATE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "batchgen"
    return Path.home() / ".local" / "state" / "batchgen"


@dataclass(frozen=True, slots=True)
class Window:
    """The key's window as a file held it: send times and pause end, wall seconds."""

    sends: tuple[float, ...] = ()
    pause_until: float = -math.inf

    def recent(self, now: float, span: float) -> tuple[float, ...]:
        """The sends of the last ``span`` seconds."""
        horizon = now - span
        return tuple(t for t in self.sends if t > horizon)

    def wait(self, now: float, slots: int, span: float) -> float:
        """Seconds until one more request fits (0: it fits now)."""
        wait = self.pause_until - now
        recent = self.recent(now, span)
        if len(recent) >= slots:
            # the slots-th most recent send must leave the window first
            wait = max(wait, recent[-slots] + span - now)
        return max(0.0, wait)


@dataclass(frozen=True, slots=True)
class Taken:
    """What ``take`` found: ``wait`` 0 means a slot was recorded at ``at``."""

    wait: float
    at: float
    window: Window


class SharedWindow:
    """The window file of one key. Blocking: call it from a worker thread.

    ``take`` and ``pause`` never raise for a file problem: the first one is logged as
    a warning and the key is then limited in this process only (as before this file
    existed), because a run must not fail for want of a state folder.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.broken = False

    @classmethod
    def for_key(cls, key: str, directory: Path | None = None) -> SharedWindow:
        """The window file of ``key`` in ``directory`` (default: ``state_dir()``).

        Touches nothing on disk: the folder and file are made on first use.
        """
        name = f"{key_fingerprint(key)}{_SUFFIX}"
        try:
            folder = directory if directory is not None else state_dir()
        except RuntimeError as exc:  # no $HOME and no passwd entry: nowhere to share
            window = cls(Path(name))
            window._give_up(OSError(errno.ENOENT, str(exc)))
            return window
        return cls(folder / name)

    def __repr__(self) -> str:
        return f"SharedWindow({str(self.path)!r}{', broken' if self.broken else ''})"

    # ------------------------------------------------------------ the two operations

    def take(self, wall: Callable[[], float], *, slots: int, span: float, keep: int) -> Taken:
        """One slot of ``slots`` per ``span`` seconds, or how long to wait for one.

        ``wall`` is read under the lock, so the recorded time is never earlier than
        any other process's. ``keep`` bounds the log (the key's full limit).
        """
        if self.broken:
            return Taken(0.0, wall(), Window())
        try:
            with self._locked() as fd:
                now = wall()
                window = _tidy(_read(fd), now, span, keep)
                wait = window.wait(now, slots, span)
                if wait > 0.0:
                    return Taken(wait, now, window)
                window = Window((*window.sends, now)[-keep:], window.pause_until)
                _write(fd, window)
                return Taken(0.0, now, window)
        except OSError as exc:
            self._give_up(exc)
            return Taken(0.0, wall(), Window())

    def pause(self, until: float) -> None:
        """No process sends with this key before ``until`` (wall seconds)."""
        if self.broken:
            return
        try:
            with self._locked() as fd:
                window = _read(fd)
                if until > window.pause_until:
                    _write(fd, Window(window.sends, until))
        except OSError as exc:
            self._give_up(exc)

    def peek(self) -> Window:
        """The file as it is now (for tests and the benchmark); empty when absent."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return Window()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return _read(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ the file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing the last descriptor releases the lock

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o600)

    def _give_up(self, exc: OSError) -> None:
        self.broken = True
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
        log.warning(
            "cannot use the shared rate-limit file %s (%s): this key is limited in this "
            "process only; set %s to a folder you can write",
            self.path,
            reason,
            STATE_DIR_ENV,
        )


class SharedSlots:
    """A limiter's side of its key's window file: off-loop calls and a snapshot.

    ``wall`` is the limiter's injected clock's ``now()``. ``busy`` is True while a
    worker thread is at the file for this limiter (one at a time: the limiter's
    queue head waits for it).
    """

    def __init__(self, window_file: SharedWindow, wall: Callable[[], float]) -> None:
        self.file = window_file
        self.busy = False
        self._wall = wall
        self._seen = Window()  # the file as our last look at it saw it
        self._background: set[asyncio.Future[None]] = set()

    def wait_hint(self, slots: int, span: float) -> float:
        """A lower bound of the wait, from the last look: others only add sends,
        and time only removes them."""
        return self._seen.wait(self._wall(), slots, span)

    def has_room(self, slots: int, span: float, reserve: int) -> bool:
        """Room for one more and ``reserve`` besides, as of the last look."""
        now = self._wall()
        if self._seen.wait(now, slots, span) > 0.0:
            return False
        return len(self._seen.recent(now, span)) + reserve < slots

    async def take(self, slots: int, span: float, keep: int) -> float:
        """0 when a slot is now recorded in the file, else the seconds to wait.

        Cancelled while the worker thread runs, the slot it may record is lost to
        everyone for one window: a wasted request, never one too many.
        """
        hint = self.wait_hint(slots, span)
        if hint > 0.0:
            return hint
        self.busy = True
        try:
            taken = await asyncio.to_thread(
                self.file.take, self._wall, slots=slots, span=span, keep=keep
            )
        finally:
            self.busy = False
        self._seen = taken.window
        return taken.wait

    def pause(self, seconds: float) -> None:
        """Every process of this key pauses ``seconds`` from now (written off the loop)."""
        until = self._wall() + seconds
        self._seen = Window(self._seen.sends, max(self._seen.pause_until, until))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (a script): just write
            self.file.pause(until)
            return
        task = loop.create_task(asyncio.to_thread(self.file.pause, until))
        self._background.add(task)  # a reference, or the task may be collected
        task.add_done_callback(self._background.discard)


def _read(fd: int) -> Window:
    raw = os.pread(fd, max(os.fstat(fd).st_size, 1), 0)
    if not raw:
        return Window()
    try:
        # raw_decode: trailing bytes left by a kill between pwrite and ftruncate
        data, _ = json.JSONDecoder().raw_decode(raw.decode("utf-8"))
        sends = tuple(float(t) for t in data["sends"] if math.isfinite(t))
        pause = data.get("pause_until")
        pause_until = float(pause) if isinstance(pause, int | float) else -math.inf
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
        return Window()  # not ours, or damaged: an empty window (logged nowhere: harmless)
    return Window(tuple(sorted(sends)), pause_until)


def _tidy(window: Window, now: float, span: float, keep: int) -> Window:
    """Drop what left the window; count sends "in the future" (clock set back) as now."""
    sends = sorted(min(t, now) for t in window.recent(now, span))
    return Window(tuple(sends[-keep:]), window.pause_until)


def _write(fd: int, window: Window) -> None:
    body = {
        "sends": list(window.sends),
        "pause_until": window.pause_until if math.isfinite(window.pause_until) else None,
    }
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


__all__ = [
    "FINGERPRINT_LEN",
    "STATE_DIR_ENV",
    "SharedSlots",
    "SharedWindow",
    "Taken",
    "Window",
    "key_fingerprint",
    "state_dir",
]

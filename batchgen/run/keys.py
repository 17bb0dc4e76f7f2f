"""The API keys of a run: where they come from, how they are checked, and their pool.

Three sources, combined in this order, duplicates removed (the first place a key is
given wins): ``$RUNBASE_API_KEY``, ``$RUNBASE_API_KEYS`` (comma-separated) and
``--keys-file PATH`` (one key a line; blank lines and ``#`` comments skipped). The file
is refused (exit 2) when its group or others may read it, as ssh refuses a private key
file: the fix is ``chmod 600``. Each key is checked like the single key always was
(``options.check_api_key``). A key is never stored or printed: only its fingerprint
(``shared_window.key_fingerprint``: the first 12 hex digits of its SHA-256).
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from batchgen.clock import Clock
from batchgen.engine.keys import KeyPool, PoolKey
from batchgen.errors import Problem, UsageError
from batchgen.events import Observer
from batchgen.manifest.safefile import FileRefused, read_regular
from batchgen.run.options import RunOptions, check_api_key
from batchgen.runbase.client import RunbaseClient
from batchgen.runbase.ratelimit import RequestLimiter
from batchgen.runbase.shared_window import SharedWindow, key_fingerprint
from batchgen.store.pg.slots import KeySlots

_KEYS_FILE_MAX_BYTES = 1 << 20  # a key a line: a megabyte is thousands of keys


def gather_keys(
    primary: str | None, listed: Sequence[str] = (), keys_file: Path | None = None
) -> list[str]:
    """Every key given, checked, in order, without duplicates. ``primary``: the key of
    ``$RUNBASE_API_KEY`` (or of the library caller); ``listed``: more keys
    (``$RUNBASE_API_KEYS``, already split: ``split_keys``). With none at all, the
    message of a missing ``$RUNBASE_API_KEY`` (exit 2)."""
    given: list[tuple[str, str]] = []
    if primary:
        given.append((primary, "the key in $RUNBASE_API_KEY"))
    for n, key in enumerate(listed, 1):
        given.append((key, f"key {n} of $RUNBASE_API_KEYS"))
    if keys_file is not None:
        given.extend(_read_keys_file(keys_file))
    if not given:
        check_api_key(None)  # raises: the message that says where a key goes
    keys: list[str] = []
    for key, where in given:
        checked = check_api_key(key, where)
        if checked not in keys:
            keys.append(checked)
    return keys


def split_keys(text: str | None) -> list[str]:
    """``$RUNBASE_API_KEYS``: keys separated by commas (spaces around them ignored)."""
    if not text:
        return []
    return [part.strip(" ") for part in text.split(",") if part.strip(" ")]


def _read_keys_file(path: Path) -> list[tuple[str, str]]:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UsageError(
            [Problem(file=str(path), message=f"cannot read the keys file: {exc.strerror}")]
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            [
                Problem(
                    file=str(path),
                    message=(
                        f"the keys file may be read by group or others "
                        f"(mode {stat.S_IMODE(mode):04o}): its keys are refused"
                    ),
                    fix=f"chmod 600 {path}",
                )
            ]
        )
    # Only a regular file, opened without blocking: a FIFO given as --keys-file used to
    # block open() forever, deaf to SIGTERM; /dev/zero would read without end.
    try:
        text = read_regular(path, "keys file", _KEYS_FILE_MAX_BYTES).decode("utf-8")
    except FileRefused as exc:
        raise UsageError([Problem(file=str(path), message=str(exc), fix=exc.fix)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            [Problem(file=str(path), message=f"cannot read the keys file: {exc}")]
        ) from None
    keys: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keys.append((stripped, f"the key on line {n} of {path}"))
    return keys


async def open_pool(
    stack: AsyncExitStack,
    keys: Sequence[str],
    rate: tuple[int, float],
    base_url: str,
    opts: RunOptions,
    clock: Clock,
    observers: Sequence[Observer],
    *,
    slots_url: str | None = None,
) -> KeyPool:
    """One client and one limiter per key, opened on ``stack`` (closed with it). Each
    key's window lives in a file every process of this user shares (restarts too).

    ``slots_url``: the run's PostgreSQL state database (a ``postgresql://`` URL; pass it
    when the state is PostgreSQL, None for SQLite). Every request of every key (POST
    and GET) then also takes its slot there (``store.pg.slots.KeySlots``, on a
    connection of its own, opened here and closed with ``stack``), so a key's limit
    holds across hosts; the file stays on too (``runbase.shared_key`` says why). The
    schema must exist: open the store first. The database unreachable when a request
    asks for its slot raises ``StateWriteError`` (exit 75) from that request.
    """
    key_slots: KeySlots | None = None
    if slots_url is not None:
        key_slots = await KeySlots.open(slots_url, limit=rate[0], window_s=rate[1])
        stack.push_async_callback(key_slots.aclose)
    pooled: list[PoolKey] = []
    for key in keys:
        fingerprint = key_fingerprint(key)
        limiter = RequestLimiter(
            rate[0],
            rate[1],
            clock=clock,
            margin_s=opts.limiter_margin_s,
            shared=SharedWindow.for_key(key, opts.state_dir),
            slots=None if key_slots is None else key_slots.for_key(fingerprint),
        )
        client = RunbaseClient(
            base_url,
            key,
            limiter=limiter,
            timeout_s=opts.timeout_s,
            observers=list(observers),
            clock=clock,
        )
        await stack.enter_async_context(client)
        pooled.append(PoolKey(fingerprint, client, limiter))
    return KeyPool(pooled)


__all__ = ["gather_keys", "open_pool", "split_keys"]

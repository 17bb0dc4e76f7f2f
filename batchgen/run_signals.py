"""SIGINT/SIGTERM during a run: wind down, then stop now, then exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from typing import Protocol

from batchgen.errors import ExitCode

# the run's own logger: these lines belong to the run (and to its --log-file) as before
log = logging.getLogger("batchgen.runner")


class Interruptible(Protocol):
    """The run a signal interrupts (``batchgen.runner._Run``)."""

    @property
    def finishing(self) -> bool: ...

    @property
    def engine(self) -> object | None: ...

    def interrupt(self, reason: str, *, hard: bool = False) -> None: ...


@contextlib.contextmanager
def interrupt_on_signals(run: Interruptible, *, enabled: bool) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop submitting and wind down (or stop waiting for the lock).
    Second: stop now. Third: exit."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    seen = [0]

    def handler(signame: str) -> None:
        seen[0] += 1
        if seen[0] == 1:
            if run.finishing:
                log.warning("%s: the run is over; sending its notification first", signame)
            elif run.engine is None:
                log.warning("%s: stopping before anything is sent", signame)
            else:
                log.warning("%s: no new submissions; recording what is in flight", signame)
            run.interrupt(f"interrupted ({signame})")
        elif seen[0] == 2:
            log.warning("%s again: stopping now", signame)
            run.interrupt(f"interrupted ({signame}, twice)", hard=True)
        else:
            os._exit(int(ExitCode.INTERRUPTED))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler, sig.name)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


__all__ = ["Interruptible", "interrupt_on_signals"]

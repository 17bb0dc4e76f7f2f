"""SIGINT, SIGTERM and SIGHUP during a run: one orderly path, always exit 75.

The first signal stops submitting and winds down (the POST and downloads in flight get
a grace period); a second one only shortens that grace (everything in flight is
cancelled now: every transition is already committed). Nothing ever ends the process
from a handler: the summary, the metrics and the notification are always written,
and the exit code is the one they report. The handlers stay installed until the
process exits (``hold_signals_until_exit``), so a late signal cannot turn a written
exit code into 130 or 143.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Protocol

# the run's own logger: these lines belong to the run (and to its --log-file) as before
log = logging.getLogger("batchgen.run.runner")


class Interruptible(Protocol):
    """The run a signal interrupts (``batchgen.run.runner._Run``)."""

    @property
    def finishing(self) -> bool: ...

    @property
    def engine(self) -> object | None: ...

    def interrupt(self, reason: str, *, hard: bool = False) -> None: ...


#: the signals that stop a run; all three take the same path
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def interrupt_on_signals(run: Interruptible, *, enabled: bool) -> Iterator[None]:
    """First SIGINT/SIGTERM/SIGHUP: stop submitting and wind down (or stop waiting for
    the lock). Any further one: stop now. Never an exit from the handler."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    seen = [0]

    def handler(signame: str) -> None:
        seen[0] += 1
        if run.finishing:
            log.warning("%s: the run is over; writing its summary and notification first", signame)
            return
        if seen[0] == 1:
            if run.engine is None:
                log.warning("%s: stopping before anything is sent", signame)
            else:
                log.warning("%s: no new submissions; recording what is in flight", signame)
            run.interrupt(f"interrupted ({signame})")
        else:
            log.warning("%s again: stopping now", signame)
            run.interrupt(f"interrupted ({signame}, twice)", hard=True)

    for sig in SIGNALS:
        loop.add_signal_handler(sig, handler, sig.name)
    try:
        yield
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        hold_signals_until_exit()


def hold_signals_until_exit() -> None:
    """From now until the process exits, a stop signal is ignored: the run is over and
    its exit code is written; only printing it and exiting remain. (``SIG_IGN``, not a
    Python handler: the interpreter resets those to the default while it shuts down,
    and a late signal would then still end the process with 130 or 143.)"""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


__all__ = ["SIGNALS", "Interruptible", "hold_signals_until_exit", "interrupt_on_signals"]

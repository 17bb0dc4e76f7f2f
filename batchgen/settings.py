"""The settings a run is made with: one frozen ``Settings``, resolved in one place.

``resolve_settings`` merges five layers, the first that gives a value wins:

============  =====================================================================
layer         what it gives
============  =====================================================================
command line  every setting (``CommandLine``; None = not given)
environment   ``base_url`` only: ``$RUNBASE_BASE_URL``. The key (``$RUNBASE_API_KEY``)
              is no setting: the caller passes it, it is never stored, and a
              ``Settings`` may be printed. ``$BATCHGEN_DB`` is read by the CLI.
stored batch  ``rate``, ``concurrency``, ``budget_usd``, ``max_attempts``: what the
              last ``run`` resolved, as ``settings_json`` holds it (``to_batch``)
manifest      the same four, from ``limits:`` (the loader parses them first, so a
              bad rate is reported at its line)
defaults      the fields' defaults below (20/10s, 100 in flight, no budget, 5 tries)
============  =====================================================================

Who passes which layer: ``load_manifest`` resolves its command-line overrides over the
manifest into what a batch stores; ``run``, ``resume`` and ``retry`` resolve the command
line and the environment over the stored batch (after a ``run`` has synced its manifest
into it, so the manifest's own ``limits:`` count on ``run``, and ``resume`` keeps what
the last ``run`` used); ``plan`` resolves what the loader made for the manifest.

A stored value that is missing, null or 0 (a rate that does not parse) falls back to
the next layer, as it always has; a stored budget is kept as it is (0 is a budget),
and refused when it is not finite (an older batchgen stored ``.inf``).

The checks of every amount a user may give (finite, in range) live here too:
``amount_problem`` and ``command_line_problems``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from batchgen.errors import Problem, UsageError
from batchgen.runbase.ratelimit import DEFAULT_RATE, settings_rate

#: what a submit whose answer was lost becomes: submitted again, or held for a person
InDoubtPolicy = Literal["resubmit", "hold"]
#: what a run the API no longer knows becomes: failed, or submitted again
LostPolicy = Literal["fail", "resubmit"]

DEFAULT_BASE_URL = "https://runbase.net"
#: the largest budget (USD) batchgen takes: finite, and exact in micro-USD
MAX_BUDGET_USD = 1_000_000_000
#: the largest number of seconds (--max-runtime, --wait-lock): about 31 years
MAX_SECONDS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run is made with. The defaults are the documented ones."""

    rate: tuple[int, float] = DEFAULT_RATE
    # At 20 requests per 10 s a key can start about one run a second, and runs take
    # 40-90 s: it takes this many in flight to keep the limit busy.
    concurrency: int = 100
    budget_usd: float | None = None
    max_attempts: int = 5
    max_runtime_s: float | None = None
    in_doubt: InDoubtPolicy = "resubmit"
    on_lost: LostPolicy = "fail"
    base_url: str = DEFAULT_BASE_URL

    def to_batch(self) -> dict[str, Any]:
        """The part a batch stores (``settings_json``), in the format it always had."""
        return {
            "rate": [self.rate[0], self.rate[1]],
            "concurrency": self.concurrency,
            "budget_usd": self.budget_usd,
            "max_attempts": self.max_attempts,
        }


@dataclass(frozen=True, slots=True)
class CommandLine:
    """The values a command was given; None: not given (a later layer decides)."""

    rate: tuple[int, float] | None = None
    concurrency: int | None = None
    budget_usd: float | None = None
    max_attempts: int | None = None
    max_runtime_s: float | None = None
    wait_lock_s: float | None = None
    in_doubt: InDoubtPolicy | None = None
    on_lost: LostPolicy | None = None
    base_url: str | None = None


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A batch's stored settings, and its name for the message when one is refused."""

    name: str
    settings: Mapping[str, Any]


def resolve_settings(
    command_line: CommandLine | None = None,
    environ: Mapping[str, str] | None = None,
    stored: StoredBatch | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Settings:
    """The settings from command line > environment > stored batch > manifest > defaults.

    A pure function: ``environ`` is passed in (``os.environ`` by the runner). Raises
    ``UsageError`` (exit 2) for a stored budget that is not finite or out of range,
    unless the command line gives one.
    """
    given = command_line or CommandLine()
    env = environ or {}
    saved = dict(stored.settings) if stored is not None else {}
    written = dict(manifest or {})
    default = Settings()
    budget = _budget(given, saved, written)
    if stored is not None and given.budget_usd is None:
        problem = amount_problem("--budget-usd", budget, maximum=MAX_BUDGET_USD, example="25")
        if problem is not None:
            raise UsageError(f"batch {stored.name} was stored with budget_usd {budget}: {problem}")
    rate = given.rate or settings_rate(saved.get("rate")) or settings_rate(written.get("rate"))
    return Settings(
        rate=(int(rate[0]), float(rate[1])) if rate else default.rate,
        concurrency=_count(given.concurrency, saved, written, "concurrency", default.concurrency),
        budget_usd=budget,
        max_attempts=_count(
            given.max_attempts, saved, written, "max_attempts", default.max_attempts
        ),
        max_runtime_s=given.max_runtime_s,
        in_doubt=given.in_doubt or default.in_doubt,
        on_lost=given.on_lost or default.on_lost,
        base_url=base_url_from(given.base_url, env),
    )


def base_url_from(given: str | None, environ: Mapping[str, str]) -> str:
    """The API base URL: ``--base-url``, else ``$RUNBASE_BASE_URL``, else the default."""
    return given or environ.get("RUNBASE_BASE_URL") or DEFAULT_BASE_URL


def _count(
    given: int | None, saved: dict[str, Any], written: dict[str, Any], name: str, default: int
) -> int:
    if given is not None:
        return given
    return int(saved.get(name) or written.get(name) or default)


def _budget(given: CommandLine, saved: dict[str, Any], written: dict[str, Any]) -> Any:
    # None means "no cap", so only a missing or null value falls back (0 is a budget)
    for value in (given.budget_usd, saved.get("budget_usd"), written.get("budget_usd")):
        if value is not None:
            return value
    return None


def stored_settings(settings_json: str | None) -> dict[str, Any]:
    """A batch's ``settings_json`` as a dict ({} when it is not a JSON object)."""
    try:
        value = json.loads(settings_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def amount_problem(
    option: str, value: float | None, *, maximum: float, example: str, minimum: float = 0.0
) -> str | None:
    """What is wrong with ``value`` for ``option`` (None: nothing, or not given).

    YAML reads ``.inf`` and ``.nan`` as floats and ``float()`` takes ``inf`` and ``nan``;
    a budget of ``inf`` used to pass every check and end in an ``OverflowError`` after
    the batch was stored. Every amount is checked before anything is stored.
    """
    if value is None:
        return None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        return (
            f"{option} {value}: expected a finite number from {minimum:g} to {maximum:g}, "
            f"e.g. {option} {example}"
        )
    return None


def command_line_problems(given: CommandLine) -> list[Problem]:
    """Every amount and count of ``given`` finite and in range (a library caller's
    ``budget_usd=float("inf")`` too): exit 2 before anything is stored."""
    found = [
        amount_problem("--budget-usd", given.budget_usd, maximum=MAX_BUDGET_USD, example="25"),
        amount_problem("--max-runtime", given.max_runtime_s, maximum=MAX_SECONDS, example="3600"),
        amount_problem("--wait-lock", given.wait_lock_s, maximum=MAX_SECONDS, example="900"),
    ]
    for name, count in (
        ("--concurrency", given.concurrency),
        ("--max-attempts", given.max_attempts),
    ):
        if count is not None and count < 1:
            found.append(f"{name} {count}: expected a whole number of at least 1")
    if given.rate is not None:
        requests, seconds = given.rate
        if requests < 1 or not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
            found.append(f"--rate {requests}/{seconds}: expected REQUESTS/SECONDS, e.g. 20/10s")
    return [Problem(file="<command line>", message=m) for m in found if m]


__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_BUDGET_USD",
    "MAX_SECONDS",
    "CommandLine",
    "InDoubtPolicy",
    "LostPolicy",
    "Settings",
    "StoredBatch",
    "amount_problem",
    "base_url_from",
    "command_line_problems",
    "resolve_settings",
    "stored_settings",
]

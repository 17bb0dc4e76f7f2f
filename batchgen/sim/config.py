"""What the simulator is told to be: keys, money, rate limit, timing and faults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from batchgen.runbase.models import DEFAULT_MODEL, load_model

#: The key the simulator accepts when no key is configured. Not a secret: it only
#: ever opens a local simulator.
DEFAULT_KEY = "sk-sim-0000000000000000"

_RATES = ("fail_rate", "error_rate", "drop_rate", "slow_rate", "slow_poll_rate", "cut_rate")
_AMOUNTS = ("balance_usd", "spend_limit_usd", "time_scale", "url_ttl_s", "slow_s")


@dataclass
class SimConfig:
    """Every knob of ``Simulator``; the defaults behave like a healthy service."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    #: accepted API keys; each has its own balance, spend, quota, rate window and runs.
    #: Empty: ``DEFAULT_KEY`` only.
    keys: list[str] = field(default_factory=list)
    balance_usd: float = 1000.0  # prepaid balance of each key
    spend_limit_usd: float | None = None  # lifetime spend cap of each key (403)
    usage_quota: int | None = None  # runs each key may create (429 USAGE_EXCEEDED)
    #: price overrides, ``"RESOLUTION/DURATION"`` -> USD per run (``{"1080p/5": 0.6}``);
    #: the rest of the price table is the model's own (``schemas/models/``)
    prices_usd: dict[str, float] = field(default_factory=dict)
    rate: tuple[int, float] = (20, 10.0)  # N requests in any W-second window, per key
    time_scale: float = 1.0  # multiplies queue wait and generation time
    fail_rate: float = 0.0  # fraction of runs that end `failed` (refunded)
    error_rate: float = 0.0  # fraction of API requests answered 500
    drop_rate: float = 0.0  # fraction of API requests whose connection is closed unanswered
    slow_rate: float = 0.0  # fraction of run-creating POSTs answered ~0.3 s late
    slow_poll_rate: float = 0.0  # fraction of GETs of a run answered ~0.3 s late
    cut_rate: float = 0.0  # fraction of file downloads cut off mid-body
    url_ttl_s: float = 86400.0  # output URLs answer 403 after this
    #: the first URLs handed out for each run are already expired (a slow client's case)
    stale_first_url: bool = False
    ignore_idempotency: bool = False  # behave like a service that ignores Idempotency-Key
    seed: int = 0
    slow_s: float = 0.3  # how late a slow answer comes
    #: while True, GET /api/v1/runs/{id} answers wait (live knob): to clients no run
    #: ends. Tests set it to keep runs in flight, then back to False to let them finish.
    hold_polls: bool = False
    #: serve 64x36-ish clips (the asked aspect ratio, 36-pixel short side) instead of
    #: the asked resolution: for tests that need speed. Live knob.
    tiny_videos: bool = False

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """What is wrong with these knobs, each naming its field (empty: all fine)."""
        parts = (self._number_problems, self._key_problems, self._price_problems)
        return [p for part in (*parts, self._limit_problems) for p in part()]

    def _number_problems(self) -> list[str]:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be between 0 and 65535, not {self.port}")
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be between 0 and 1, not {value}")
        for name in _AMOUNTS:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be a finite number >= 0, not {value}")
        return problems

    def _key_problems(self) -> list[str]:
        problems = []
        for key in self.keys:
            # what batchgen's check_api_key takes: a key no header can carry is no key
            unsafe = not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key)
            if not key.startswith("sk-") or len(key) < 8 or unsafe:
                problems.append(
                    "every key must start with 'sk-', be 8+ chars, printable ASCII, no spaces"
                )
                break
        if len(set(self.keys)) < len(self.keys):
            problems.append("each key may be given only once")
        return problems

    def _price_problems(self) -> list[str]:
        problems = []
        table = load_model(DEFAULT_MODEL).prices
        for kind, usd in self.prices_usd.items():
            res, _, dur = kind.partition("/")
            if dur not in table.get(res, {}):
                known = ", ".join(f"{r}/{d}" for r in table for d in table[r])
                problems.append(f"prices_usd: no {kind!r} in the price table ({known})")
            if not (math.isfinite(usd) and usd >= 0):
                problems.append(f"prices_usd: {kind} must be a finite number >= 0, not {usd}")
        return problems

    def _limit_problems(self) -> list[str]:
        problems = []
        n, window = self.rate
        if n < 1 or not (math.isfinite(window) and window > 0):
            problems.append(f"rate must be N >= 1 requests per W > 0 seconds, not {n}/{window}")
        if self.usage_quota is not None and self.usage_quota < 0:
            problems.append(f"usage_quota must not be negative, not {self.usage_quota}")
        return problems

    @property
    def accepted_keys(self) -> list[str]:
        return list(self.keys) or [DEFAULT_KEY]

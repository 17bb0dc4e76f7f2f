"""Everything the simulator remembers, and the counters it reports.

No I/O here: ``server.py`` turns requests into calls on ``SimState`` and its
answers into HTTP. All changes happen without an ``await`` in between, so
concurrent requests never see half a change.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from batchgen.runbase.models import ModelSpec, load_model
from batchgen.sim.accounts import Account, KeyRing, SlidingWindow
from batchgen.sim.config import SimConfig
from batchgen.sim.runs import RunBook, SimRun, Timing, view

ROUTE_CREATE = "POST /api/v1/runs"
ROUTE_GET = "GET /api/v1/runs/{id}"
ROUTE_FILES = "GET /files"

COUNTERS = (
    "runs_succeeded",
    "runs_failed",
    "idempotent_replays",
    "rate_limited",
    "errors_injected",
    "dropped_before_create",
    "dropped_after_create",
    "dropped_gets",
    "slow_answers_sent",
    "slow_polls_sent",
    "downloads_cut",
    "expired_url_hits",
)


class Refusal(Exception):
    """An error answer: HTTP status, code and message (the documented body)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "code": self.code}}


class SimState:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        c = self.config
        self.keyring = KeyRing(c.accepted_keys)  # keys given since take effect now
        seed = c.seed
        # Separate streams, so that (say) turning faults on does not change run ids.
        self.ids_rng = random.Random(f"{seed}/ids")
        self.faults_rng = random.Random(f"{seed}/faults")
        self.timing = Timing(random.Random(f"{seed}/timing"), c)
        self.accounts = [
            Account(f"key#{i + 1}", round(c.balance_usd * 1e6), SlidingWindow(*c.rate))
            for i in range(len(self.keyring))
        ]
        self.book = RunBook()
        #: accounts whose key was taken away (``/_sim/keys/{n}/revoke``): 401 from then on
        self.revoked: set[int] = set()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.requests: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------ bookkeeping

    def count(self, route: str, status: int | str) -> None:
        per = self.requests.setdefault(route, {})
        per[str(status)] = per.get(str(status), 0) + 1

    def settle(self, now: float | None = None) -> None:
        self.book.settle(time.time() if now is None else now, self._book)

    def _book(self, run: SimRun) -> None:
        if run.fails:
            self.counters["runs_failed"] += 1
            self.accounts[run.account].refund(run.cost)
        else:
            self.counters["runs_succeeded"] += 1

    def stats(self) -> dict[str, Any]:
        now = time.time()
        self.settle(now)
        accounts = self.accounts
        c = self.config
        return {
            "runs_created": sum(a.runs_created for a in accounts),
            **self.counters,
            **{f"runs_{k}": v for k, v in self.book.in_flight(now).items()},
            "charged_micro_usd": sum(a.charged for a in accounts),
            "refunded_micro_usd": sum(a.refunded for a in accounts),
            "balance_micro_usd": sum(a.balance for a in accounts),
            "max_in_window": max(a.window.max_seen for a in accounts),
            "requests": {route: dict(by) for route, by in self.requests.items()},
            "keys": [a.summary() for a in accounts],
            "config": {
                "rate": list(c.rate),
                "time_scale": c.time_scale,
                "balance_usd": c.balance_usd,
                "spend_limit_usd": c.spend_limit_usd,
                "usage_quota": c.usage_quota,
                "prices_usd": dict(c.prices_usd),
                "fail_rate": c.fail_rate,
                "error_rate": c.error_rate,
                "drop_rate": c.drop_rate,
                "slow_rate": c.slow_rate,
                "slow_poll_rate": c.slow_poll_rate,
                "cut_rate": c.cut_rate,
                "url_ttl_s": c.url_ttl_s,
                "stale_first_url": c.stale_first_url,
                "ignore_idempotency": c.ignore_idempotency,
                "seed": c.seed,
                "tiny_videos": c.tiny_videos,
            },
        }

    # ------------------------------------------------------------ gate

    def authenticate(self, authorization: str | None) -> int:
        """The account index of the bearer key; Refusal 401 otherwise."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Refusal(
                401, "missing_api_key", "Missing API key: send Authorization: Bearer sk-..."
            )
        found = self.keyring.find(key)
        if found is None or found in self.revoked:
            raise Refusal(401, "invalid_api_key", "Invalid API key")
        return found

    def take_key_away(self, n: int) -> None:
        """Key ``n`` (1-based, ``key#n`` in stats) is answered 401 from now on."""
        self.revoked.add(self._account_index(n))

    def empty_balance(self, n: int) -> None:
        """Key ``n``'s balance drops to 0: its next POST is answered 402."""
        self.accounts[self._account_index(n)].balance = 0

    def _account_index(self, n: int) -> int:
        if not 1 <= n <= len(self.accounts):
            raise Refusal(404, "not_found", f"no key #{n}")
        return n - 1

    def admit(self, account: int) -> None:
        if not self.accounts[account].window.admit(time.monotonic()):
            self.counters["rate_limited"] += 1
            raise Refusal(429, "RATE_LIMITED", "Rate limit exceeded")

    # ------------------------------------------------------------ the two calls

    def create(self, account: int, body: Any, idempotency_key: str | None) -> tuple[SimRun, bool]:
        """Validate, replay or charge and create. Returns (run, replayed)."""
        spec, input_ = _validated(body)
        acct = self.accounts[account]
        use_key = bool(idempotency_key) and not self.config.ignore_idempotency
        if use_key and idempotency_key in acct.idempotency:
            self.counters["idempotent_replays"] += 1
            return self.book.runs[acct.idempotency[idempotency_key or ""]], True
        c = self.config
        if c.usage_quota is not None and acct.runs_created >= c.usage_quota:
            raise Refusal(429, "USAGE_EXCEEDED", "Usage quota of this API key exceeded")
        override = c.prices_usd.get(f"{input_['resolution']}/{input_['duration']}")
        cost = spec.price_micro_usd(input_) if override is None else round(override * 1e6)
        if cost > acct.balance:
            raise Refusal(
                402,
                "insufficient_balance",
                f"Insufficient balance: this run costs {cost} micro-USD, "
                f"{max(acct.balance, 0)} left",
            )
        if c.spend_limit_usd is not None and acct.spent + cost > round(c.spend_limit_usd * 1e6):
            raise Refusal(403, "api_key_spend_limit_exceeded", "API key spend limit exceeded")
        now = time.time()
        queue_s, gen_s, fails = self.timing.draw(spec, input_)
        run = SimRun(
            id=self._new_id(),
            model=spec.name,
            account=account,
            input=input_,
            cost=cost,
            created=now,
            started=now + queue_s,
            ends=now + queue_s + gen_s,
            fails=fails,
        )
        self.book.add(run)
        acct.charge(cost)
        if use_key:
            acct.idempotency[idempotency_key or ""] = run.id
        return run, False

    def find(self, account: int, run_id: str) -> SimRun:
        run = self.book.runs.get(run_id)
        # Another key's run is as unknown as a missing one: no probing across keys.
        if run is None or run.account != account:
            raise Refusal(404, "run_not_found", f"Run not found: {run_id[:64]}")
        return run

    def view(
        self, run: SimRun, urls: Callable[[SimRun], list[str]], *, created: bool = False
    ) -> dict[str, Any]:
        return view(run, time.time(), urls, created=created)

    def _new_id(self) -> str:
        while True:
            run_id = f"run_{self.ids_rng.getrandbits(96):024x}"
            if run_id not in self.book.runs:
                return run_id


def _validated(body: Any) -> tuple[ModelSpec, dict[str, Any]]:
    if not isinstance(body, dict):
        raise Refusal(400, "invalid_json", "The body must be a JSON object")
    model = body.get("model")
    if model is None or model == "":
        raise Refusal(400, "missing_model", "Missing field: model")
    if not isinstance(model, str):
        raise Refusal(400, "missing_model", "Field model must be a string")
    try:
        spec = load_model(model)
    except KeyError:
        raise Refusal(400, "model_not_found", f"Model not found: {model[:100]}") from None
    input_ = body.get("input")
    if input_ is None:
        raise Refusal(400, "missing_input", "Missing field: input")
    if not isinstance(input_, dict):
        raise Refusal(400, "invalid_input", "Field input must be a JSON object")
    problems = spec.problems(input_)
    if problems:
        raise Refusal(400, "invalid_input", "Invalid input: " + "; ".join(problems))
    return spec, spec.with_defaults(input_)

"""The batch's money: a budget that is never exceeded.

Before each POST the engine *reserves* the job's estimated cost; the ``costUsd`` of the
answer replaces the reservation (``settle``); a POST that created nothing gives it back
(``release``); a run that failed is refunded by the provider and so is its cost here
(``refund``). A job is only submitted when its reservation fits under the limit next to
everything spent and reserved, so the batch total cannot pass the limit unless one run
costs more than its reservation. To make that unlikely, reservations are scaled by the
highest actual/estimate ratio seen so far (1.0 while answers match the price table).

The budget is the batch's over its whole life: it starts from the ledger (charges minus
refunds, plus *possible* charges: POSTs whose answer was lost may have created and
charged a run). A lost answer turns its reservation into a possible charge
(``possible``); a resend that shows the first POST made the run takes it back
(``settle_possible``).

All amounts are integer micro-USD, like the API's ``costUsd``.
"""

from __future__ import annotations

import math


class Budget:
    def __init__(
        self, limit_micro_usd: int | None, *, spent_micro_usd: int = 0, possible_micro_usd: int = 0
    ) -> None:
        self.limit = limit_micro_usd
        #: charged minus refunded (what the answers say)
        self.spent = spent_micro_usd
        #: lost answers that may have charged a run
        self.possible = possible_micro_usd
        self._reserved: dict[int, int] = {}
        self._ratio = 1.0

    @property
    def reserved(self) -> int:
        return sum(self._reserved.values())

    def reservation(self, estimate_micro_usd: int) -> int:
        return math.ceil(estimate_micro_usd * self._ratio)

    def fits(self, estimate_micro_usd: int) -> bool:
        if self.limit is None:
            return True
        need = self.reservation(estimate_micro_usd)
        return self.spent + self.possible + self.reserved + need <= self.limit

    def reserve(self, job_id: int, estimate_micro_usd: int) -> bool:
        """Hold the estimate for ``job_id``; False (and nothing held) if it does not fit."""
        if job_id in self._reserved:
            return True  # a resend of the same submission: already held
        if not self.fits(estimate_micro_usd):
            return False
        self._reserved[job_id] = self.reservation(estimate_micro_usd)
        return True

    def settle(self, job_id: int, actual_micro_usd: int, estimate_micro_usd: int) -> None:
        """The POST answered with ``actual``: it is spent, the reservation goes."""
        self._reserved.pop(job_id, None)
        self.spent += actual_micro_usd
        if estimate_micro_usd > 0 and actual_micro_usd > estimate_micro_usd:
            self._ratio = max(self._ratio, actual_micro_usd / estimate_micro_usd)

    def release(self, job_id: int) -> None:
        """The POST surely created nothing: give the reservation back."""
        self._reserved.pop(job_id, None)

    def refund(self, amount_micro_usd: int) -> None:
        self.spent = max(0, self.spent - amount_micro_usd)

    def lost(self, job_id: int, estimate_micro_usd: int) -> int:
        """The POST's answer was lost: its reservation becomes a possible charge.

        Returns the amount counted (what the ledger's ``possible`` row records).
        """
        amount = self._reserved.pop(job_id, None)
        if amount is None:
            amount = self.reservation(estimate_micro_usd)
        self.possible += amount
        return amount

    def settle_possible(self, amount_micro_usd: int) -> None:
        """A resend proved the lost POST made the run now charged: not a second charge."""
        self.possible = max(0, self.possible - amount_micro_usd)

    def remaining(self) -> int | None:
        if self.limit is None:
            return None
        return self.limit - self.spent - self.possible - self.reserved

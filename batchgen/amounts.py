"""The numbers a user may give (budget, runtime, waits, counts): finite, in range.

YAML reads ``.inf`` and ``.nan`` as floats and Python's ``float()`` takes ``inf`` and
``nan``; a budget of ``inf`` used to pass every check and end in an ``OverflowError``
after the batch was stored. Every amount is checked here before anything is stored.
"""

from __future__ import annotations

import math

#: the largest budget (USD) batchgen takes: finite, and exact in micro-USD
MAX_BUDGET_USD = 1_000_000_000
#: the largest number of seconds (--max-runtime, --wait-lock): about 31 years
MAX_SECONDS = 1_000_000_000


def amount_problem(
    option: str, value: float | None, *, maximum: float, example: str, minimum: float = 0.0
) -> str | None:
    """What is wrong with ``value`` for ``option`` (None: nothing, or not given)."""
    if value is None:
        return None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        return (
            f"{option} {value}: expected a finite number from {minimum:g} to {maximum:g}, "
            f"e.g. {option} {example}"
        )
    return None


__all__ = ["MAX_BUDGET_USD", "MAX_SECONDS", "amount_problem"]

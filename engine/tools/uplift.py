"""Is the sent group's conversion rate really above the holdout's? Pure arithmetic on counts.

A holdout comparison is two proportions: converted / customers in the sent
group and in the holdout group. The uplift is their difference (in
percentage points, and relative to the holdout's rate); whether it means
anything is a two-proportion z-test (pooled, two-sided) and each rate gets a
95 % Wilson interval. The normal approximation behind the z-test needs about
five conversions and five non-conversions in each group; below that the
comparison says so instead of printing a p-value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054
#: conversions and non-conversions each group needs before the z-test is trusted
MIN_EXPECTED = 5
SIGNIFICANCE = 0.05


def rate(converted: int, customers: int) -> float | None:
    return converted / customers if customers else None


def wilson(converted: int, customers: int, z: float = Z95) -> tuple[float, float] | None:
    """95 % Wilson score interval of converted / customers (None without customers)."""
    if customers <= 0:
        return None
    p = converted / customers
    denominator = 1 + z * z / customers
    centre = (p + z * z / (2 * customers)) / denominator
    half = z * math.sqrt(p * (1 - p) / customers + z * z / (4 * customers * customers)) / denominator
    low = 0.0 if converted == 0 else max(0.0, centre - half)  # no rounding residue at the bounds
    high = 1.0 if converted == customers else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class Comparison:
    """Sent group against holdout group; rates are fractions, ``uplift_points`` percentage points."""

    sent_rate: float | None
    holdout_rate: float | None
    uplift_points: float | None
    uplift_relative: float | None  # (sent - holdout) / holdout; None when the holdout rate is 0
    p_value: float | None
    sent_interval: tuple[float, float] | None
    holdout_interval: tuple[float, float] | None
    note: str

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def compare(sent_converted: int, sent_customers: int, holdout_converted: int, holdout_customers: int) -> Comparison:
    sent_rate = rate(sent_converted, sent_customers)
    holdout_rate = rate(holdout_converted, holdout_customers)
    points = relative = p_value = None
    if sent_rate is not None and holdout_rate is not None:
        points = (sent_rate - holdout_rate) * 100
        relative = (sent_rate - holdout_rate) / holdout_rate if holdout_rate else None
    groups = ((sent_converted, sent_customers), (holdout_converted, holdout_customers))
    if not holdout_customers:
        note = "no holdout group"
    elif not sent_customers:
        note = "nothing sent"
    elif any(min(x, n - x) < MIN_EXPECTED for x, n in groups):
        note = (f"too small to say anything: each group needs at least {MIN_EXPECTED} customers who converted "
                f"and {MIN_EXPECTED} who did not (holdout {holdout_converted} of {holdout_customers})")
    else:
        pooled = (sent_converted + holdout_converted) / (sent_customers + holdout_customers)
        error = math.sqrt(pooled * (1 - pooled) * (1 / sent_customers + 1 / holdout_customers))
        z = (sent_rate - holdout_rate) / error if error else 0.0
        p_value = math.erfc(abs(z) / math.sqrt(2))
        note = (f"significant at 5 % (p = {p_value:.3f})" if p_value < SIGNIFICANCE
                else f"not significant (p = {p_value:.3f}): the difference may be chance")
    return Comparison(sent_rate, holdout_rate, points, relative, p_value,
                      wilson(sent_converted, sent_customers), wilson(holdout_converted, holdout_customers), note)

"""Statistics the report uses to compare runs: spread across seeds and paired tests over the same items.

numpy and the standard library only (no scipy). Three tools, each named where the report prints it:

  t_interval          mean of per-seed accuracies with a Student-t interval (the seeds are the sample)
  mcnemar_exact       exact McNemar test: a two-sided binomial test (p = 1/2) on the discordant pairs
  paired_bootstrap_ci percentile interval of the mean paired difference, items resampled with replacement, seeded
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


# --- seeds ---------------------------------------------------------------------------------------------------------

def _t_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with an integer df >= 1 (Abramowitz & Stegun 26.7.3-4, exact finite series)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: 2/pi * (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), the sum to cos^(df-2)
        term, total = 1.0, 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 0.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), the sum to cos^(df-2)
    for k in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return s * total


def t_quantile(level: float, df: int) -> float:
    """The t with P(|T| <= t) = level (two-sided critical value, 12.706 for level 0.95 and df 1), by bisection."""
    if df < 1:
        raise ValueError("df must be at least 1")
    lo, hi = 0.0, math.pi / 2  # over theta = atan(t / sqrt(df)), where the CDF is smooth
    for _ in range(100):
        mid = (lo + hi) / 2
        if _t_two_sided(math.tan(mid) * math.sqrt(df), df) < level:
            lo = mid
        else:
            hi = mid
    return math.tan((lo + hi) / 2) * math.sqrt(df)


@dataclass
class SeedSpread:
    k: int  # runs (seeds)
    mean: float
    sd: float  # sample standard deviation (k - 1 in the denominator); 0 for one run
    min: float
    max: float
    ci: tuple[float, float]  # 95 % t-interval of the mean over the k values, clipped to [0, 1]


def t_interval(values: list[float], level: float = 0.95) -> SeedSpread:
    """Mean, spread and the Student-t interval mean +- t(level, k-1) * sd / sqrt(k) over k >= 1 values (one per seed).

    With one value the interval is that value (no spread to estimate). The interval is about the seeds only: runs
    whose seeds agree exactly (greedy decoding) give sd 0 and a point interval; item-level uncertainty is the
    per-run Wilson interval's job."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    half = t_quantile(level, x.size - 1) * sd / math.sqrt(x.size) if x.size > 1 else 0.0
    return SeedSpread(int(x.size), mean, sd, float(x.min()), float(x.max()),
                      (max(0.0, mean - half), min(1.0, mean + half)))


# --- paired comparisons ---------------------------------------------------------------------------------------------

def mcnemar_exact(b: int, c: int) -> float:
    """Exact McNemar p-value: two-sided binomial test of b successes in b + c discordant pairs at p = 1/2.

    b: items only the first run got right, c: items only the second got right. p = min(1, 2 P(X <= min(b, c))),
    X ~ Binomial(b + c, 1/2); 1.0 when there is no discordant pair. Exact integer arithmetic."""
    if b < 0 or c < 0:
        raise ValueError("counts must be non-negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_bootstrap_ci(a, b, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(a - b) over items: `resamples` draws of n items with replacement (the same draw
    for both runs, which keeps the pairing), from numpy's PCG64 seeded with `seed`, so a report is reproducible.

    A resample's mean depends only on how often it draws each distinct difference, so the draw is made as those
    counts, Multinomial(n, observed shares): the same bootstrap distribution as drawing item indices, in O(resamples)
    for right/wrong outcomes (differences -1, 0, 1) instead of O(resamples * n)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("need two equally long, non-empty sequences")
    values, counts = np.unique(x - y, return_counts=True)
    n = x.size
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=resamples)  # (resamples, distinct values)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(draws @ values / n, [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass
class Paired:
    n: int  # items both runs answered
    acc_a: float
    acc_b: float
    diff: float  # acc_a - acc_b
    ci: tuple[float, float]  # paired bootstrap percentile interval of diff
    wins: int  # a right, b wrong
    losses: int  # a wrong, b right
    ties: int  # both right or both wrong
    p_mcnemar: float


def paired_compare(a: list[bool], b: list[bool], resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED) -> Paired:
    """Run a against run b over the same items (the two lists in one item order)."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("need two equally long, non-empty lists of outcomes")
    wins, losses = int((x & ~y).sum()), int((~x & y).sum())
    return Paired(int(x.size), float(x.mean()), float(y.mean()), float(x.mean() - y.mean()),
                  paired_bootstrap_ci(x, y, resamples, seed), wins, losses, int(x.size) - wins - losses,
                  mcnemar_exact(wins, losses))

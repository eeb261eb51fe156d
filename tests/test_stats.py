"""stats.py: the exact McNemar test, the paired bootstrap interval and the t-interval over seeds, on hand-made
numbers whose answers are known."""
from __future__ import annotations

import math

import numpy as np
import pytest

import stats


@pytest.mark.parametrize("b, c, p", [
    (5, 0, 0.0625),  # 2 * (1/2)^5
    (0, 5, 0.0625),  # symmetric
    (0, 0, 1.0),  # no discordant pair: no evidence
    (1, 0, 1.0),  # 2 * 1/2, capped at 1
    (3, 3, 1.0),
    (10, 2, 2 * (1 + 12 + 66) / 4096),  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    (6, 1, 2 * (1 + 7) / 128),
])
def test_mcnemar_exact_values(b, c, p):
    assert stats.mcnemar_exact(b, c) == pytest.approx(p, abs=1e-15)


def test_mcnemar_exact_is_the_two_sided_binomial_tail():
    for n in range(1, 30):
        for b in range(n + 1):
            k = min(b, n - b)
            tail = sum(math.comb(n, i) * 0.5 ** n for i in range(k + 1))
            assert stats.mcnemar_exact(b, n - b) == pytest.approx(min(1.0, 2 * tail), rel=1e-12)
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


@pytest.mark.parametrize("df, t", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262),
                                   (10, 2.228), (30, 2.042), (120, 1.980)])
def test_t_quantile_matches_the_tables(df, t):
    assert stats.t_quantile(0.95, df) == pytest.approx(t, abs=1e-3)
    assert stats.t_quantile(0.99, 4) == pytest.approx(4.604, abs=1e-3)


def test_t_interval_over_seeds():
    s = stats.t_interval([0.5, 0.6, 0.7])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert (s.k, s.mean, s.min, s.max) == (3, pytest.approx(0.6), 0.5, 0.7)
    assert s.sd == pytest.approx(0.1)
    assert s.ci == (pytest.approx(0.6 - half, abs=1e-6), pytest.approx(0.6 + half, abs=1e-6))
    one = stats.t_interval([0.4])
    assert one.sd == 0.0 and one.ci == (0.4, 0.4)  # one seed: nothing to spread
    same = stats.t_interval([0.3, 0.3, 0.3])  # greedy runs whose seeds agree
    assert same.sd == 0.0 and same.ci == (pytest.approx(0.3), pytest.approx(0.3))
    assert stats.t_interval([0.0, 0.9]).ci[0] == 0.0  # clipped to [0, 1]
    with pytest.raises(ValueError):
        stats.t_interval([])


def _outcomes(n, p, seed):
    return np.random.default_rng(seed).random(n) < p


@pytest.mark.parametrize("n, pa, pb", [(20, 0.5, 0.5), (50, 0.7, 0.4), (200, 0.3, 0.35), (7, 0.9, 0.1)])
def test_paired_bootstrap_contains_the_observed_difference_and_is_reproducible(n, pa, pb):
    a, b = _outcomes(n, pa, 1), _outcomes(n, pb, 2)
    diff = a.mean() - b.mean()
    lo, hi = stats.paired_bootstrap_ci(a, b)
    assert lo <= diff <= hi and -1 <= lo <= hi <= 1
    assert stats.paired_bootstrap_ci(a, b) == (lo, hi)  # the same seed: the same interval


def test_paired_bootstrap_draws_depend_on_the_seed_only():
    a, b = _outcomes(500, 0.55, 1), _outcomes(500, 0.5, 2)
    first, other = (stats.paired_bootstrap_ci(a, b, resamples=2000, seed=seed, level=0.9) for seed in (0, 1))
    assert stats.paired_bootstrap_ci(a, b, resamples=2000, seed=0, level=0.9) == first
    assert other != first  # at n = 500 the quantiles are fine enough for another draw to move them


def test_paired_bootstrap_width_matches_the_normal_approximation():
    a, b = _outcomes(2000, 0.6, 3), _outcomes(2000, 0.5, 4)
    d = a.astype(float) - b
    lo, hi = stats.paired_bootstrap_ci(a, b)
    half = 1.96 * d.std() / math.sqrt(d.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.05)
    assert (lo + hi) / 2 == pytest.approx(d.mean(), abs=0.005)


def test_paired_bootstrap_keeps_the_pairing():
    """Two runs that agree on every item differ by exactly 0 in every resample, however uncertain each one is."""
    a = _outcomes(30, 0.5, 5)
    assert stats.paired_bootstrap_ci(a, a) == (0.0, 0.0)
    assert stats.paired_bootstrap_ci([True], [False]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        stats.paired_bootstrap_ci([True, False], [True])


def test_paired_compare_counts_wins_losses_ties():
    a = [True] * 5 + [False] * 3 + [True] * 2
    b = [False] * 5 + [False] * 3 + [True] * 2
    p = stats.paired_compare(a, b)
    assert (p.n, p.wins, p.losses, p.ties) == (10, 5, 0, 5)
    assert p.acc_a == 0.7 and p.acc_b == 0.2 and p.diff == pytest.approx(0.5)
    assert p.p_mcnemar == 0.0625
    assert p.ci[0] <= 0.5 <= p.ci[1] and p.ci[0] > 0  # every discordant item favours a
    back = stats.paired_compare(b, a)
    assert (back.wins, back.losses, back.p_mcnemar) == (0, 5, 0.0625)


def test_paired_bootstrap_equals_resampling_item_indices():
    """Drawing counts per distinct difference is the item bootstrap: its interval matches one made by drawing item
    indices directly (up to Monte Carlo error), also for differences that are not -1 / 0 / 1."""
    rng = np.random.default_rng(7)
    for a, b in ((_outcomes(150, 0.6, 8), _outcomes(150, 0.45, 9)), (rng.random(80), rng.random(80) * 0.8)):
        d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
        idx = np.random.default_rng(11).integers(0, d.size, size=(20_000, d.size))
        direct = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
        lo, hi = stats.paired_bootstrap_ci(a, b, resamples=20_000)
        assert lo == pytest.approx(direct[0], abs=0.01) and hi == pytest.approx(direct[1], abs=0.01)

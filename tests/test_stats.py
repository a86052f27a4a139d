"""askdraft.stats against values computed independently of the code under test."""
import math

import numpy as np
import pytest

from askdraft import stats


def _random_correct(n, p, seed):
    return (np.random.default_rng(seed).random(n) < p).astype(int)


def _mcnemar_by_hand(b, c):
    n, m = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(m + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def test_accuracy_ci_contains_mean_and_matches_normal_width():
    correct = _random_correct(290, 0.55, seed=1)
    r = stats.accuracy(correct)
    p = correct.sum() / 290
    assert r["n"] == 290 and r["accuracy"] == pytest.approx(p)
    assert r["ci_low"] < p < r["ci_high"]
    normal_half = 1.96 * math.sqrt(p * (1 - p) / 290)          # ~ 0.057, the SPEC's +-5.6 pp
    assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(normal_half, rel=0.08)
    # percentile bootstrap of a proportion is close to symmetric around p
    assert p - r["ci_low"] == pytest.approx(r["ci_high"] - p, abs=0.012)


def test_bootstrap_is_seeded():
    correct = _random_correct(290, 0.5, seed=2)
    assert stats.accuracy(correct, seed=7) == stats.accuracy(correct, seed=7)
    assert stats.accuracy(correct, seed=7) != stats.accuracy(correct, seed=8)
    means = stats.bootstrap_means(correct, n_boot=2500, seed=3)
    # chunking must not change the stream: one big chunk gives the same resamples
    assert np.array_equal(means, stats.bootstrap_means(correct, n_boot=2500, seed=3, chunk=10**6))
    assert means.std() == pytest.approx(correct.std() / math.sqrt(290), rel=0.08)


@pytest.mark.parametrize("b,c", [(0, 0), (3, 0), (10, 4), (17, 30), (50, 50), (1, 60)])
def test_mcnemar_matches_binomial_formula(b, c):
    assert stats.mcnemar_exact(b, c) == pytest.approx(_mcnemar_by_hand(b, c) if b + c else 1.0,
                                                      rel=1e-9, abs=1e-300)


def test_paired_difference():
    rng = np.random.default_rng(4)
    first = _random_correct(290, 0.6, seed=5)
    second = first.copy()
    flip = rng.choice(290, size=40, replace=False)      # disagree on 40 questions
    second[flip] = 1 - second[flip]
    r = stats.paired_difference(first, second)
    b = int(((first == 1) & (second == 0)).sum())
    c = int(((first == 0) & (second == 1)).sum())
    assert (r["only_1_correct"], r["only_2_correct"]) == (b, c) and b + c == 40
    assert r["diff"] == pytest.approx((b - c) / 290)
    assert r["accuracy_1"] - r["accuracy_2"] == pytest.approx(r["diff"])
    assert r["mcnemar_p"] == pytest.approx(_mcnemar_by_hand(b, c))
    assert r["ci_low"] <= r["diff"] <= r["ci_high"]
    # normal approximation of the paired difference's standard error
    se = math.sqrt(((b + c) / 290 - ((b - c) / 290) ** 2) / 290)
    assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(1.96 * se, rel=0.1)
    # pairing matters: the paired interval is much narrower than for independent samples
    unpaired = 1.96 * math.sqrt(2 * 0.6 * 0.4 / 290)
    assert (r["ci_high"] - r["ci_low"]) / 2 < 0.6 * unpaired


def test_paired_difference_identical_models():
    same = _random_correct(100, 0.5, seed=6)
    r = stats.paired_difference(same, same)
    assert r["diff"] == r["ci_low"] == r["ci_high"] == 0.0 and r["mcnemar_p"] == 1.0


def test_win_rate_ties_count_half():
    outcomes = ["win"] * 50 + ["tie"] * 30 + ["loss"] * 20
    r = stats.win_rate(outcomes)
    assert (r["wins"], r["ties"], r["losses"], r["n"]) == (50, 30, 20, 100)
    assert r["win_rate"] == pytest.approx((50 + 0.5 * 30) / 100)
    assert r["ci_low"] < r["win_rate"] < r["ci_high"]
    scores = np.array([1.0] * 50 + [0.5] * 30 + [0.0] * 20)
    se = scores.std() / math.sqrt(100)
    assert (r["ci_high"] - r["ci_low"]) / 2 == pytest.approx(1.96 * se, rel=0.1)
    with pytest.raises(ValueError, match="draw"):
        stats.win_rate(["win", "draw"])


def test_input_checks():
    with pytest.raises(ValueError, match="0/1"):
        stats.accuracy([0, 1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        stats.accuracy([])
    with pytest.raises(ValueError, match="length"):
        stats.paired_difference([0, 1], [0, 1, 1])


def test_kfold_stratified_balanced_and_deterministic():
    labels = np.array(["yes"] * 136 + ["no"] * 154)            # 46.9 % yes, like dev
    folds = stats.kfold_assign(labels, k=5, seed=0)
    assert np.array_equal(folds, stats.kfold_assign(labels, k=5, seed=0))
    assert not np.array_equal(folds, stats.kfold_assign(labels, k=5, seed=1))
    sizes = np.bincount(folds, minlength=5)
    assert sizes.sum() == 290 and sizes.max() - sizes.min() <= 1
    for f in range(5):
        yes = int((labels[folds == f] == "yes").sum())
        assert abs(yes - 136 / 5) <= 1
    with pytest.raises(ValueError, match="k must"):
        stats.kfold_assign(labels, k=1)


def test_pool_folds_restores_item_order():
    labels = np.arange(53) % 2
    folds = stats.kfold_assign(labels, k=4, seed=3)
    truth = _random_correct(53, 0.6, seed=9)
    per_fold = [truth[np.flatnonzero(folds == f)] for f in range(4)]
    r = stats.pool_folds(folds, per_fold)
    assert r["correct"] == truth.tolist()
    assert r["accuracy"] == pytest.approx(truth.mean())
    assert r["per_fold"] == pytest.approx([v.mean() for v in per_fold])
    assert r == {**stats.accuracy(truth), "per_fold": r["per_fold"], "correct": r["correct"]}
    with pytest.raises(ValueError, match="fold 2"):
        stats.pool_folds(folds, per_fold[:2] + [per_fold[2][:-1]] + per_fold[3:])
    with pytest.raises(ValueError, match="4 folds"):
        stats.pool_folds(folds, per_fold[:3])


def test_answer_share_flags_a_constant_predictor_at_95_percent():
    from askdraft.stats import DEGENERATE_SHARE, answer_share, independent_agreement
    assert DEGENERATE_SHARE == 0.95
    assert answer_share(["no"] * 95 + ["yes"] * 5) == {"yes_share": 0.05, "degenerate": True}
    assert answer_share(["yes"] * 95 + ["no"] * 5)["degenerate"]
    assert answer_share(["yes"] * 94 + ["no"] * 6) == {"yes_share": 0.94, "degenerate": False}
    with pytest.raises(ValueError):
        answer_share([])
    # independence: P(agree) = p q + (1 - p)(1 - q), checked against counting every pair of a grid
    p, q = 0.3, 0.8
    grid = [(a, b) for a in [1] * 3 + [0] * 7 for b in [1] * 8 + [0] * 2]
    assert independent_agreement(p, q) == pytest.approx(sum(a == b for a, b in grid) / len(grid))

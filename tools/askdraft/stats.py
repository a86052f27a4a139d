"""Confidence intervals and tests for dev-set accuracies, paired differences and judge win-rates.

Every interval is a seeded percentile bootstrap over questions (10 000 resamples by default),
so the same inputs give the same numbers on every machine. Paired differences resample the
questions jointly (both models' answers to a question stay together) and add McNemar's exact
test. `kfold_assign` / `pool_folds` let a user train and evaluate per fold and pool the
held-out predictions of all folds into one accuracy over every question.
"""
import numpy as np
from scipy.stats import binomtest

N_BOOT = 10_000
LEVEL = 0.95
SEED = 0
WIN_SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}
# a row that gives one answer to this share of the questions or more is a constant predictor,
# flagged "degenerate" wherever its accuracy appears and never chosen as phase C
DEGENERATE_SHARE = 0.95


def answer_share(preds):
    """{"yes_share", "degenerate"} of a list of "yes"/"no" predictions."""
    preds = list(preds)
    if not preds:
        raise ValueError("answer_share: no predictions")
    yes = sum(p == "yes" for p in preds) / len(preds)
    return {"yes_share": round(yes, 4), "degenerate": max(yes, 1 - yes) >= DEGENERATE_SHARE}


def independent_agreement(p_yes, q_yes):
    """How often two yes/no answers agree if they are independent at these "yes" shares."""
    return p_yes * q_yes + (1 - p_yes) * (1 - q_yes)


def _vector(values, name="values"):
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence, got shape {v.shape}")
    return v


def _binary(values, name):
    v = _vector(values, name)
    if not np.isin(v, (0.0, 1.0)).all():
        raise ValueError(f"{name}: expected only 0/1 (or False/True) values")
    return v


def bootstrap_means(values, n_boot=N_BOOT, seed=SEED, chunk=1000):
    """Means of `n_boot` resamples (with replacement, same size) of `values`."""
    v = _vector(values)
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        out[start:stop] = v[idx].mean(axis=1)
    return out


def mean_ci(values, n_boot=N_BOOT, seed=SEED, level=LEVEL):
    """{"mean", "ci_low", "ci_high", "n"}: the mean with a percentile-bootstrap interval."""
    v = _vector(values)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(bootstrap_means(v, n_boot, seed), [tail, 100 - tail])
    return {"mean": float(v.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(v.size)}


def accuracy(correct, n_boot=N_BOOT, seed=SEED, level=LEVEL):
    """Accuracy of a 0/1 vector (one entry per question) with its 95 % bootstrap CI."""
    r = mean_ci(_binary(correct, "correct"), n_boot, seed, level)
    return {"accuracy": r.pop("mean"), **r}


def mcnemar_exact(b, c):
    """Two-sided exact McNemar p-value from the discordant counts: b questions only model 1
    got right, c only model 2 got right. Under H0 b ~ Binomial(b + c, 1/2)."""
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be >= 0")
    if b + c == 0:
        return 1.0
    return float(binomtest(int(b), int(b + c), 0.5, alternative="two-sided").pvalue)


def paired_difference(correct_1, correct_2, n_boot=N_BOOT, seed=SEED, level=LEVEL):
    """Accuracy of model 1 minus model 2 on the same questions (same order): the difference,
    its paired-bootstrap CI, the discordant counts and McNemar's exact p-value."""
    a, b = _binary(correct_1, "correct_1"), _binary(correct_2, "correct_2")
    if a.size != b.size:
        raise ValueError(f"paired vectors differ in length: {a.size} vs {b.size}")
    r = mean_ci(a - b, n_boot, seed, level)
    only_1 = int(((a == 1) & (b == 0)).sum())
    only_2 = int(((a == 0) & (b == 1)).sum())
    return {"diff": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"],
            "accuracy_1": float(a.mean()), "accuracy_2": float(b.mean()),
            "only_1_correct": only_1, "only_2_correct": only_2,
            "mcnemar_p": mcnemar_exact(only_1, only_2)}


def win_rate(outcomes, n_boot=N_BOOT, seed=SEED, level=LEVEL):
    """Win-rate of model 1 from per-question judge outcomes "win" / "tie" / "loss" (a tie
    counts half), with its bootstrap CI. 0.5 means no preference."""
    bad = sorted({o for o in outcomes if o not in WIN_SCORES})
    if bad:
        raise ValueError(f"unknown outcome(s) {bad}; expected one of {list(WIN_SCORES)}")
    counts = {k: sum(o == k for o in outcomes) for k in ("win", "tie", "loss")}
    r = mean_ci([WIN_SCORES[o] for o in outcomes], n_boot, seed, level)
    return {"win_rate": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"],
            "wins": counts["win"], "ties": counts["tie"], "losses": counts["loss"]}


def kfold_assign(labels, k=5, seed=SEED):
    """Fold number (0..k-1) for each item, stratified by `labels` (e.g. the gold yes/no):
    each label's items are shuffled (seeded) and dealt round-robin, continuing from where
    the previous label stopped, so fold sizes differ by at most one and every fold keeps
    the overall label mix. Train on `folds != f`, evaluate on `folds == f`."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError("labels: expected a non-empty 1-D sequence")
    if not 2 <= k <= labels.size:
        raise ValueError(f"k must be between 2 and the number of items ({labels.size}), got {k}")
    rng = np.random.default_rng(seed)
    folds = np.empty(labels.size, dtype=int)
    offset = 0
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        folds[idx] = (offset + np.arange(idx.size)) % k
        offset += idx.size
    return folds


def pool_folds(folds, per_fold_correct, n_boot=N_BOOT, seed=SEED, level=LEVEL):
    """Pool held-out results: `per_fold_correct[f]` is the 0/1 vector for the items of fold f,
    in the order of `np.flatnonzero(folds == f)`. Returns the accuracy over all items with
    its CI, the per-fold accuracies, and `correct`, the pooled vector in the original item
    order (pass two such vectors to `paired_difference`)."""
    folds = np.asarray(folds)
    k = int(folds.max()) + 1
    if len(per_fold_correct) != k:
        raise ValueError(f"expected results for {k} folds, got {len(per_fold_correct)}")
    correct = np.empty(folds.size)
    for f, fold_correct in enumerate(per_fold_correct):
        idx = np.flatnonzero(folds == f)
        v = _binary(fold_correct, f"fold {f}")
        if v.size != idx.size:
            raise ValueError(f"fold {f}: {v.size} results for {idx.size} items")
        correct[idx] = v
    result = accuracy(correct, n_boot, seed, level)
    result["per_fold"] = [float(np.mean(v)) for v in per_fold_correct]
    result["correct"] = correct.astype(int).tolist()
    return result

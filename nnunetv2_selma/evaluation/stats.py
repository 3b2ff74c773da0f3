"""Paired comparisons of two training arms with a confidence interval.

Two arms (e.g. pretrained and from scratch) are trained in the same *repeats* (a seed, a fold, a
label subset) and scored on the same test cases, so their difference is taken per (repeat, case).
The uncertainty has two sources, the repeat (training is random) and the finite test set; a
two-level bootstrap resamples both: repeats with replacement, then cases within each drawn repeat.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def hierarchical_bootstrap_ci(groups: Sequence[Sequence[float]], n_boot: int = 10000, level: float = 0.95,
                              seed: int = 0) -> tuple[float, float, float]:
    """Mean over groups of the group means, with a two-level percentile bootstrap CI.

    Parameters
    ----------
    groups : one sequence of values per repeat (e.g. per-test-case Dice differences of one seed);
        empty groups are ignored
    n_boot : bootstrap resamples
    level : coverage of the interval (0.95: the 2.5 and 97.5 percentiles)
    seed : seed of the resampling (the same inputs give the same interval)

    Returns
    -------
    (mean, low, high); NaNs when there is no value. With one group the interval reflects the
    test cases only, which the caller should say.
    """
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        picks = rng.integers(len(groups), size=len(groups))
        boots[b] = np.mean([groups[i][rng.integers(len(groups[i]), size=len(groups[i]))].mean() for i in picks])
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boots, [tail, 100 - tail])
    return mean, float(low), float(high)


def paired_difference(arm: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]],
                      **bootstrap) -> dict:
    """``arm - baseline`` per repeat and case, its mean and CI (:func:`hierarchical_bootstrap_ci`).

    Parameters
    ----------
    arm, baseline : repeat -> {case -> score}; only repeats and cases present in both are paired.

    Returns
    -------
    dict with ``mean_diff``, ``ci_low``, ``ci_high``, ``n_repeats``, ``n_cases`` (per repeat, the
    largest), ``per_repeat_diff`` (repeat -> mean difference).
    """
    per_repeat = {}
    for repeat in sorted(set(arm) & set(baseline), key=str):
        cases = sorted(set(arm[repeat]) & set(baseline[repeat]))
        if cases:
            per_repeat[repeat] = np.array([arm[repeat][c] - baseline[repeat][c] for c in cases])
    mean, low, high = hierarchical_bootstrap_ci(list(per_repeat.values()), **bootstrap)
    return {"mean_diff": mean, "ci_low": low, "ci_high": high, "n_repeats": len(per_repeat),
            "n_cases": max((len(v) for v in per_repeat.values()), default=0),
            "per_repeat_diff": {str(r): float(v.mean()) for r, v in per_repeat.items()}}


def verdict(diff: dict, what: str = "pretraining") -> str:
    """One sentence saying what a paired difference shows, either way."""
    lo, hi = diff["ci_low"], diff["ci_high"]
    if not np.isfinite(lo):
        return "No paired runs: nothing can be said."
    scope = (f"over {diff['n_repeats']} repeats x {diff['n_cases']} test cases" if diff["n_repeats"] > 1 else
             f"over {diff['n_cases']} test cases of a single repeat (the interval ignores training noise)")
    if lo > 0:
        return f"The 95% interval lies above 0 {scope}: in this run {what} helped."
    if hi < 0:
        return f"The 95% interval lies below 0 {scope}: in this run {what} hurt."
    return (f"The 95% interval contains 0 {scope}: this run shows no difference either way "
            f"(it does not show that {what} has no effect).")

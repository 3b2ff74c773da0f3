"""What each SELMA3D edition scored, per structure category, and how teams were ranked.

* :data:`EDITIONS`: edition -> category -> metric names, with the prefix of the aggregate keys.
* :data:`CASE_NAME_PREFIXES`: case-name prefix -> structure category (how the leaderboard told a
  case's category from its file name). ``--category`` overrides it.
* :func:`score_case`: the metrics of one case for its edition and category.
* :func:`aggregate`: means over cases per category, under the leaderboard's key names
  (2024: ``cfos_dice``, ``micro_betti_error_1``...; 2025/2026: ``isolated_dice``,
  ``contiguous_hd95``...).
* :func:`rank_teams`: mean per metric -> rank per metric -> mean rank per category -> mean over
  categories. Ties get the average of the ranks they span (``scipy.stats.rankdata``
  ``method="average"``), so two teams tied for first both get 1.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from nnunetv2_selma.evaluation import metrics as m

EDITION_NAMES = ("2024", "2025", "2026")


@dataclass(frozen=True)
class Category:
    """One structure category of an edition: its aggregate-key prefix and its metrics."""

    name: str
    kind: str  # "isolated" or "contiguous": what --category and the name table speak of
    key_prefix: str
    metrics: tuple[str, ...]


#: edition -> category name -> Category. 2024 calls its categories dot-like (c-Fos, keys
#: ``cfos_*``) and tree-like (microglia, keys ``micro_*``); 2025/2026 call them isolated/contiguous.
EDITIONS: dict[str, dict[str, Category]] = {
    "2024": {
        "dot-like": Category("dot-like", "isolated", "cfos", ("dice", "betti_error_0")),
        "tree-like": Category("tree-like", "contiguous", "micro", ("dice", "betti_error_0", "betti_error_1", "cldice")),
    },
    "2025": {
        "isolated": Category("isolated", "isolated", "isolated", ("dice", "betti_error_0")),
        "contiguous": Category(
            "contiguous", "contiguous", "contiguous", ("dice", "betti_error_0", "betti_error_1", "cldice", "hd95")
        ),
    },
    "2026": {
        "isolated": Category("isolated", "isolated", "isolated", ("dice", "pq")),
        "contiguous": Category("contiguous", "contiguous", "contiguous", ("dice", "cldice")),
    },
}

#: True where a higher value is better; errors and distances rank ascending.
HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True,
    "cldice": True,
    "pq": True,
    "betti_error_0": False,
    "betti_error_1": False,
    "hd95": False,
}

#: Case-name prefixes (matched case-insensitively at the start of the name) -> kind, per edition
#: family. 2024 only had c-Fos (dot-like) and microglia (tree-like) test cases; 2025/2026 name
#: cases after their subset (``AD_plaques_patchvolume_023``, ``blood_vessel_patchvolume_019``).
#: The longest matching prefix wins.
CASE_NAME_PREFIXES: dict[str, dict[str, str]] = {
    "2024": {
        "cfos": "isolated",
        "c-fos": "isolated",
        "c_fos": "isolated",
        "microglia": "contiguous",
    },
    "2025+": {
        # isolated: c-Fos+ neurons, cell nuclei, amyloid plaques, proteins
        "cfos": "isolated",
        "c-fos": "isolated",
        "c_fos": "isolated",
        "shannel_cells": "isolated",
        "cells": "isolated",
        "cell_nuclei": "isolated",
        "nuclei": "isolated",
        "nucleus": "isolated",
        "ad_plaques": "isolated",
        "ab_plaque": "isolated",
        "plaques": "isolated",
        "amyloid": "isolated",
        "protein": "isolated",
        "proteins": "isolated",
        # contiguous: blood vessels, lymphatic vessels, microglia, axons, nerves
        "vessap_vessel": "contiguous",
        "blood_vessel": "contiguous",
        "vessel": "contiguous",
        "microglia": "contiguous",
        "axon": "contiguous",
        "axons": "contiguous",
        "nerve": "contiguous",
        "nerves": "contiguous",
        "lymphatic": "contiguous",
        "lymph": "contiguous",
    },
}

#: spellings accepted by ``--category``
CATEGORY_ALIASES = {
    "isolated": "isolated",
    "dot-like": "isolated",
    "contiguous": "contiguous",
    "tree-like": "contiguous",
}


def check_edition(edition: str | int) -> str:
    """``edition`` as one of :data:`EDITION_NAMES`; ValueError otherwise."""
    edition = str(edition)
    if edition not in EDITIONS:
        raise ValueError(f"unknown edition {edition!r}; expected one of {', '.join(EDITION_NAMES)}")
    return edition


def category_of_kind(edition: str, kind: str) -> Category:
    """The category of ``edition`` for ``kind`` ("isolated"/"contiguous", or "dot-like"/"tree-like")."""
    edition = check_edition(edition)
    if kind not in CATEGORY_ALIASES:
        raise ValueError(f"unknown category {kind!r}; expected one of {', '.join(CATEGORY_ALIASES)}")
    kind = CATEGORY_ALIASES[kind]
    return next(c for c in EDITIONS[edition].values() if c.kind == kind)


def case_category(case: str, edition: str, forced: str | None = None) -> Category:
    """The structure category of a case, from ``forced`` if given, else from the case's name.

    Raises
    ------
    ValueError naming the case when no prefix of :data:`CASE_NAME_PREFIXES` matches it.
    """
    edition = check_edition(edition)
    if forced is not None:
        return category_of_kind(edition, forced)
    table = CASE_NAME_PREFIXES["2024" if edition == "2024" else "2025+"]
    lower = case.lower()
    matches = [p for p in table if lower.startswith(p)]
    if not matches:
        raise ValueError(
            f"case {case!r}: cannot tell its structure category from its name for edition {edition}; expected a "
            f"name starting with one of {', '.join(sorted(table))}, or pass --category isolated|contiguous"
        )
    return category_of_kind(edition, table[max(matches, key=len)])


def score_case(pred: np.ndarray, ref: np.ndarray, category: Category) -> tuple[dict[str, float], list[str]]:
    """The metrics ``category.metrics`` of one case, plus notes on edge cases hit.

    Parameters
    ----------
    pred, ref : ndarray, 3D, same shape; foreground is ``> 0``
    category : from :func:`case_category`

    Returns
    -------
    values : metric name -> float (Betti errors as floats too); when Betti errors are scored it
        also holds ``b0_pred``, ``b0_ref``, ``b1_pred``, ``b1_ref`` for inspection.
    notes : human-readable warnings (an HD95 penalty, a degenerate clDice), without the case name.
    """
    pred, ref = m.binary_pair(pred, ref)
    values: dict[str, float] = {}
    notes: list[str] = []
    wanted = set(category.metrics)
    if "dice" in wanted:
        values["dice"] = m.dice(pred, ref)
    if wanted & {"betti_error_0", "betti_error_1"}:
        b0_p, b1_p, _ = m.betti_numbers(pred)
        b0_g, b1_g, _ = m.betti_numbers(ref)
        if "betti_error_0" in wanted:
            values["betti_error_0"] = float(abs(b0_p - b0_g))
        if "betti_error_1" in wanted:
            values["betti_error_1"] = float(abs(b1_p - b1_g))
        values.update(b0_pred=float(b0_p), b0_ref=float(b0_g), b1_pred=float(b1_p), b1_ref=float(b1_g))
    if "cldice" in wanted:
        tprec, tsens = m.cldice_terms(pred, ref)
        values["cldice"] = m.cldice_from_terms(tprec, tsens)
        if tprec == 0 and tsens == 0 and (pred.any() or ref.any()):
            notes.append(
                "clDice = 1.0 by the official formula (1e-6 / 1e-6) although neither mask overlaps the other's "
                f"skeleton (prediction {int(pred.sum())} voxels, reference {int(ref.sum())} voxels)"
            )
    if "hd95" in wanted:
        values["hd95"] = m.hd95(pred, ref)
        if pred.any() != ref.any():
            notes.append(
                f"HD95 = {values['hd95']:.2f} (the image diagonal, the penalty for an empty "
                f"{'prediction' if not pred.any() else 'reference'} against a non-empty one)"
            )
    if "pq" in wanted:
        values["pq"] = m.panoptic_quality(pred, ref)
    return values, notes


def aggregate(cases: dict[str, dict], edition: str) -> tuple[dict[str, float], dict[str, int]]:
    """Means over cases per category under the leaderboard's key names.

    Parameters
    ----------
    cases : case name -> ``{"category": <category name>, <metric>: value, ...}`` as written by
        the evaluation command
    edition : "2024", "2025" or "2026"

    Returns
    -------
    aggregates : e.g. ``{"cfos_dice": 0.8, "cfos_betti_error_0": 3.5, "micro_dice": ...}``;
        categories without cases are left out (never reported as 0).
    n_cases : category name -> number of cases
    """
    edition = check_edition(edition)
    aggregates: dict[str, float] = {}
    n_cases: dict[str, int] = {}
    for category in EDITIONS[edition].values():
        rows = [v for v in cases.values() if v["category"] == category.name]
        n_cases[category.name] = len(rows)
        if not rows:
            continue
        for metric in category.metrics:
            values = [float(r[metric]) for r in rows]
            if any(math.isnan(x) for x in values):
                raise ValueError(f"{category.name} {metric}: a case has NaN; refusing to average it away")
            aggregates[f"{category.key_prefix}_{metric}"] = float(np.mean(values))
    return aggregates, n_cases


def rank_teams(team_aggregates: dict[str, dict[str, float]], edition: str) -> dict:
    """Rank teams the way the challenge did.

    For each metric of each category present: rank the teams' means (ascending for errors and
    HD95, descending for Dice/clDice/PQ; ties share the average rank). A team's category score
    is its mean rank over that category's metrics; its final score is the mean of its category
    scores; the final rank orders final scores (lower is better, ties averaged again).

    Parameters
    ----------
    team_aggregates : team -> aggregates as returned by :func:`aggregate`; every team must
        have the same keys.
    edition : "2024", "2025" or "2026"

    Returns
    -------
    dict with ``edition``, ``order`` (teams best first) and ``teams``: team -> ``metric_ranks``,
    ``category_scores``, ``score``, ``rank``, ``aggregates``.
    """
    from scipy.stats import rankdata

    edition = check_edition(edition)
    teams = list(team_aggregates)
    if not teams:
        raise ValueError("no team to rank")
    keys = set(team_aggregates[teams[0]])
    for team in teams[1:]:
        if set(team_aggregates[team]) != keys:
            raise ValueError(
                f"team {team!r} has aggregates {sorted(team_aggregates[team])} but team {teams[0]!r} has "
                f"{sorted(keys)}; teams must be scored on the same cases"
            )
    metric_ranks: dict[str, dict[str, float]] = {t: {} for t in teams}
    category_scores: dict[str, dict[str, float]] = {t: {} for t in teams}
    for category in EDITIONS[edition].values():
        category_keys = [f"{category.key_prefix}_{metric}" for metric in category.metrics]
        if not all(k in keys for k in category_keys):
            continue  # no cases of this category
        for key, metric in zip(category_keys, category.metrics):
            values = np.array([team_aggregates[t][key] for t in teams], dtype=np.float64)
            ranks = rankdata(-values if HIGHER_IS_BETTER[metric] else values, method="average")
            for team, r in zip(teams, ranks):
                metric_ranks[team][key] = float(r)
        for team in teams:
            category_scores[team][category.name] = float(np.mean([metric_ranks[team][k] for k in category_keys]))
    if not category_scores[teams[0]]:
        raise ValueError(f"the aggregates {sorted(keys)} hold no complete category of edition {edition}")
    scores = {t: float(np.mean(list(category_scores[t].values()))) for t in teams}
    final = rankdata([scores[t] for t in teams], method="average")
    ranked = {
        t: {
            "rank": float(r),
            "score": scores[t],
            "category_scores": category_scores[t],
            "metric_ranks": metric_ranks[t],
            "aggregates": team_aggregates[t],
        }
        for t, r in zip(teams, final)
    }
    order = sorted(teams, key=lambda t: (scores[t], t))
    return {"edition": edition, "order": order, "teams": ranked}

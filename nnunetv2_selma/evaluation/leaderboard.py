"""What each SELMA3D edition scored, per structure category, and how teams were ranked.

* :data:`EDITIONS`: edition -> category -> metric names, with the prefix of the aggregate keys.
* :func:`case_category`: a case's category from its file-name prefix (the prefixes per edition
  live in :mod:`nnunetv2_selma.structures`, the one table of structure names). ``--category``
  overrides it.
* :func:`score_case`: the metrics of one case for its edition and category.
* :func:`aggregate`: per category, under the leaderboard's key names. 2024/2025: means
  (``cfos_dice``, ``micro_betti_error_1``, ``isolated_dice``, ``contiguous_hd95``...). 2026: mean
  and sample standard deviation, the organisers' names (``iso_dice_mean``, ``iso_dice_std``,
  ``iso_panoptic_quality_mean``, ..., ``con_cldice_std``), over the finite values only (2026
  metrics can be NaN per case; their script would crash there, ours reports NaN per case).
* :func:`subgroup_aggregate` (2026): means per dense/sparse x isolated/contiguous subgroup,
  what the 2026 ranking ranks.
* :func:`rank_teams`: mean per metric -> rank per metric -> mean rank per category (2026: per
  subgroup, then the mean over the subgroups of each structure type) -> mean over categories
  (types). Ties get the average of the ranks they span (``scipy.stats.rankdata``
  ``method="average"``), so two teams tied for first both get 1.5.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from nnunetv2_selma import structures
from nnunetv2_selma.evaluation import metrics as m

EDITION_NAMES = structures.EDITIONS


@dataclass(frozen=True)
class Category:
    """One structure category of an edition: its aggregate-key prefix and its metrics."""

    name: str
    kind: str  # "isolated" or "contiguous": what --category and the name table speak of
    key_prefix: str
    metrics: tuple[str, ...]
    cldice_smoothing: bool = True  # the 2024 formula's 1e-6 term; 2026 uses panoptica's, without it


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
    # the organisers' 2026 code: keys iso_*/con_*, per-case "panoptic_quality" (panoptica's pq_dsc)
    "2026": {
        "isolated": Category("isolated", "isolated", "iso", ("dice", "panoptic_quality")),
        "contiguous": Category("contiguous", "contiguous", "con", ("dice", "cldice"), cldice_smoothing=False),
    },
}

#: editions whose aggregates are mean and sample std over the finite values (``<key>_mean``/``_std``)
MEAN_STD_EDITIONS = ("2026",)

#: True where a higher value is better; errors and distances rank ascending.
HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True,
    "cldice": True,
    "pq": True,
    "panoptic_quality": True,
    "betti_error_0": False,
    "betti_error_1": False,
    "hd95": False,
}

#: spellings accepted by ``--category``
CATEGORY_ALIASES = {
    "isolated": "isolated",
    "dot-like": "isolated",
    "contiguous": "contiguous",
    "tree-like": "contiguous",
}


check_edition = structures.check_edition


def category_of_kind(edition: str, kind: str) -> Category:
    """The category of ``edition`` for ``kind`` ("isolated"/"contiguous", or "dot-like"/"tree-like")."""
    edition = check_edition(edition)
    if kind not in CATEGORY_ALIASES:
        raise ValueError(f"unknown category {kind!r}; expected one of {', '.join(CATEGORY_ALIASES)}")
    kind = CATEGORY_ALIASES[kind]
    return next(c for c in EDITIONS[edition].values() if c.kind == kind)


def case_category(case: str, edition: str, forced: str | None = None) -> Category:
    """The structure category of a case, from ``forced`` if given, else from the case's name.

    The name is matched case-insensitively against the prefixes of the structures ``edition``
    scored (:func:`nnunetv2_selma.structures.case_prefixes`); the longest prefix wins. 2026: the
    organisers' ten prefixes (``axonalmarker``, ``blood_vessel``, ``gutnerve``, ``lymphatic_vessel``,
    ``peripheral_nerve`` contiguous; ``AD_plaques``, ``cell_nuclei``, ``cfos_neuron``, ``microglia``,
    ``protein`` isolated) plus older spellings of the same structures.

    Raises
    ------
    ValueError naming the case when no prefix matches it.
    """
    edition = check_edition(edition)
    if forced is not None:
        return category_of_kind(edition, forced)
    structure = structures.structure_of_case(case, edition)
    if structure is None:
        raise ValueError(
            f"case {case!r}: cannot tell its structure category from its name for edition {edition}; expected a "
            f"name starting with one of {', '.join(sorted(structures.case_prefixes(edition)))}, or pass "
            "--category isolated|contiguous"
        )
    return category_of_kind(edition, structure.categories[edition])


def case_subgroup(case: str, category: Category, edition: str) -> str:
    """The 2026 ranking subgroup of a case: ``dense_iso``, ``sparse_con``, ... (density from the name).

    A case whose structure cannot be told from its name (scored under ``--category``) gets the
    category's key prefix alone (``iso``/``con``), a subgroup of its own.
    """
    structure = structures.structure_of_case(case, edition)
    if structure is None or structure.density is None:
        return category.key_prefix
    return f"{structure.density}_{category.key_prefix}"


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
    if "cldice" in wanted and not category.cldice_smoothing:
        values["cldice"] = m.centerline_dice(pred, ref)
        if math.isnan(values["cldice"]):
            notes.append(
                f"clDice is NaN (prediction {int(pred.sum())} voxels, reference {int(ref.sum())} voxels: a skeleton is "
                "empty or neither mask overlaps the other's skeleton); left out of the aggregates"
            )
    elif "cldice" in wanted:
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
    if "panoptic_quality" in wanted:
        values["panoptic_quality"] = m.panoptic_quality(pred, ref)
        if math.isnan(values["panoptic_quality"]):
            notes.append("panoptic quality is NaN (both masks empty); left out of the aggregates")
    return values, notes


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the finite ``values``; NaN where undefined.

    ``statistics.mean``/``stdev`` as in the organisers' 2026 script, which averages every value
    and crashes on a NaN or on fewer than two values; here NaNs are left out and an undefined
    statistic is NaN.
    """
    finite = [x for x in values if math.isfinite(x)]
    mean = statistics.mean(finite) if finite else math.nan
    std = statistics.stdev(finite) if len(finite) >= 2 else math.nan
    return float(mean), float(std)


def aggregate(cases: dict[str, dict], edition: str) -> tuple[dict[str, float], dict[str, int]]:
    """Per-category aggregates under the leaderboard's key names.

    Parameters
    ----------
    cases : case name -> ``{"category": <category name>, <metric>: value, ...}`` as written by
        the evaluation command
    edition : "2024", "2025" or "2026"

    Returns
    -------
    aggregates : 2024/2025 means, e.g. ``{"cfos_dice": 0.8, "cfos_betti_error_0": 3.5, ...}``;
        2026 mean and sample std over the finite values, ``{"iso_dice_mean": ..., "iso_dice_std": ...,
        "iso_panoptic_quality_mean": ..., ..., "con_cldice_std": ...}`` (NaN when no value is finite;
        std NaN with fewer than two). Categories without cases are left out (never reported as 0).
    n_cases : category name -> number of cases

    Raises
    ------
    ValueError when a 2024/2025 metric is NaN (their metrics never are).
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
            key = f"{category.key_prefix}_{metric}"
            if edition in MEAN_STD_EDITIONS:
                aggregates[f"{key}_mean"], aggregates[f"{key}_std"] = _mean_std(values)
                continue
            if any(math.isnan(x) for x in values):
                raise ValueError(f"{category.name} {metric}: a case has NaN; refusing to average it away")
            aggregates[key] = float(np.mean(values))
    return aggregates, n_cases


#: the 2026 scoring rule users trip over, said where ``nnUNetv2_selma_rank --edition 2026`` prints its table
NAN_LEFT_OUT_RULE = (
    "2026 rule (the organisers' evaluate.py): a case whose metric is NaN is left out of that team's mean. An "
    "empty prediction on a contiguous case has no skeleton, so its clDice is NaN and does not count: a team that "
    "predicts nothing on a hard case can tie one that half-segments it (its Dice, 0, still counts).")


def nan_cases(cases: dict[str, dict], edition: str) -> dict[str, list[str]]:
    """``{"<category prefix>_<metric>": [cases]}``: the cases whose metric is NaN, left out of the aggregates.

    Only the editions that leave NaN out (``MEAN_STD_EDITIONS``); metrics without a NaN case are absent.
    """
    edition = check_edition(edition)
    if edition not in MEAN_STD_EDITIONS:
        return {}
    out = {}
    for category in EDITIONS[edition].values():
        rows = {c: v for c, v in cases.items() if v["category"] == category.name}
        for metric in category.metrics if rows else ():
            nan = sorted(c for c, v in rows.items() if not math.isfinite(float(v[metric])))
            if nan:
                out[f"{category.key_prefix}_{metric}"] = nan
    return out


def aggregate_warnings(cases: dict[str, dict], edition: str) -> list[str]:
    """Sentences naming the cases whose NaN metrics the aggregates leave out, and undefined stds."""
    edition = check_edition(edition)
    if edition not in MEAN_STD_EDITIONS:
        return []
    out = []
    for category in EDITIONS[edition].values():
        rows = {c: v for c, v in cases.items() if v["category"] == category.name}
        for metric in category.metrics if rows else ():
            nan = sorted(c for c, v in rows.items() if not math.isfinite(float(v[metric])))
            key = f"{category.key_prefix}_{metric}"
            if nan:
                shown = ", ".join(nan[:10]) + (", ..." if len(nan) > 10 else "")
                out.append(f"{key}: {len(nan)} of {len(rows)} case(s) are NaN ({shown}); mean and std are over "
                           f"the other {len(rows) - len(nan)}")
            if len(rows) - len(nan) < 2:
                out.append(f"{key}_std: fewer than two finite values; the sample standard deviation is NaN")
    return out


def subgroup_aggregate(cases: dict[str, dict], edition: str) -> dict[str, float]:
    """2026: mean per ranking subgroup and metric, ``{"dense_iso_dice_mean": ..., "sparse_con_cldice_mean": ...}``.

    The subgroup comes from the case name (:func:`case_subgroup`); means are over the finite
    values (NaN when none is finite). Other editions have no subgroups: empty dict.
    """
    edition = check_edition(edition)
    if edition not in MEAN_STD_EDITIONS:
        return {}
    out: dict[str, float] = {}
    by_name = {c.name: c for c in EDITIONS[edition].values()}
    groups: dict[tuple[str, str], list[dict]] = {}
    for case, values in sorted(cases.items()):
        category = by_name[values["category"]]
        groups.setdefault((category.name, case_subgroup(case, category, edition)), []).append(values)
    for (category_name, subgroup), rows in sorted(groups.items(), key=lambda kv: kv[0][1]):
        for metric in by_name[category_name].metrics:
            out[f"{subgroup}_{metric}_mean"] = _mean_std([float(r[metric]) for r in rows])[0]
    return out


def _ranking_groups(edition: str) -> list[tuple[Category, str, list[tuple[str, str]]]]:
    """(category, group name, [(aggregate key, metric)]) for every group a ranking may rank.

    2024/2025: one group per category, keys ``<prefix>_<metric>``. 2026: the subgroups dense/sparse
    x iso/con (plus ``iso``/``con`` for cases of unknown density), keys ``<subgroup>_<metric>_mean``.
    """
    groups = []
    for category in EDITIONS[edition].values():
        if edition in MEAN_STD_EDITIONS:
            for sub in (f"{structures.DENSE}_{category.key_prefix}", f"{structures.SPARSE}_{category.key_prefix}",
                        category.key_prefix):
                groups.append((category, sub, [(f"{sub}_{metric}_mean", metric) for metric in category.metrics]))
        else:
            groups.append((category, category.name,
                           [(f"{category.key_prefix}_{metric}", metric) for metric in category.metrics]))
    return groups


def rank_teams(team_aggregates: dict[str, dict[str, float]], edition: str) -> dict:
    """Rank teams the way the challenge did.

    For each metric of each group present: rank the teams' means (ascending for errors and
    HD95, descending for Dice/clDice/PQ; ties share the average rank; a NaN mean ranks last).
    A group's score is a team's mean rank over the group's metrics. 2024/2025: the groups are the
    categories, and the final score is the mean of the category scores. 2026 (the site's rule):
    the groups are the subgroups dense/sparse x isolated/contiguous; a structure type's score is
    the mean of its subgroup scores, and the final score the mean over the two structure types
    (with all four subgroups present this equals the mean over the four). The final rank orders
    final scores (lower is better, ties averaged again).

    Parameters
    ----------
    team_aggregates : team -> aggregates as returned by :func:`aggregate` (2024/2025) or by
        :func:`subgroup_aggregate` (2026); every team must have the same keys.
    edition : "2024", "2025" or "2026"

    Returns
    -------
    dict with ``edition``, ``order`` (teams best first) and ``teams``: team -> ``metric_ranks``,
    ``subgroup_scores`` (2026; empty otherwise), ``category_scores``, ``score``, ``rank``,
    ``aggregates``.
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
    group_scores: dict[str, dict[str, dict[str, float]]] = {t: {} for t in teams}  # team -> category -> group
    for category, group, key_metrics in _ranking_groups(edition):
        if not all(k in keys for k, _ in key_metrics):
            continue  # no cases of this group
        for key, metric in key_metrics:
            values = np.array([team_aggregates[t][key] for t in teams], dtype=np.float64)
            values = np.where(np.isnan(values), -np.inf if HIGHER_IS_BETTER[metric] else np.inf, values)
            ranks = rankdata(-values if HIGHER_IS_BETTER[metric] else values, method="average")
            for team, r in zip(teams, ranks):
                metric_ranks[team][key] = float(r)
        for team in teams:
            group_scores[team].setdefault(category.name, {})[group] = float(
                np.mean([metric_ranks[team][k] for k, _ in key_metrics]))
    if not group_scores[teams[0]]:
        raise ValueError(f"the aggregates {sorted(keys)} hold no complete category of edition {edition}")
    category_scores = {t: {c: float(np.mean(list(g.values()))) for c, g in group_scores[t].items()} for t in teams}
    subgroup_scores = ({t: {sub: v for g in group_scores[t].values() for sub, v in g.items()} for t in teams}
                       if edition in MEAN_STD_EDITIONS else {t: {} for t in teams})
    scores = {t: float(np.mean(list(category_scores[t].values()))) for t in teams}
    final = rankdata([scores[t] for t in teams], method="average")
    ranked = {
        t: {
            "rank": float(r),
            "score": scores[t],
            "subgroup_scores": subgroup_scores[t],
            "category_scores": category_scores[t],
            "metric_ranks": metric_ranks[t],
            "aggregates": team_aggregates[t],
        }
        for t, r in zip(teams, final)
    }
    order = sorted(teams, key=lambda t: (scores[t], t))
    return {"edition": edition, "order": order, "teams": ranked}

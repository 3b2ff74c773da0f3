"""Score a folder of predictions against a folder of references, and rank several folders.

Files are matched by case name (the file name without its image suffix: ``.nii.gz``, ``.nii``,
``.mha``, ``.nrrd``, ``.tif``/``.tiff``), so a reference ``case.nii.gz`` and a prediction
``case.mha`` match. Anything that is not an image (nnU-Net's ``dataset.json``, ``plans.json``,
``predict_from_raw_data_args.json``, ``.npz``/``.pkl`` probabilities) is ignored. Cases are
scored in worker processes, each reading its own two files.

Nothing is scored silently as zero: a prediction or reference holding NaN/infinite values is an
error naming the file; a missing prediction is an error (or, with
``allow_missing``, an empty prediction plus a warning naming the case); extra predictions,
non-binary values and metric edge cases are warnings naming the case, kept in the result.
"""

from __future__ import annotations

import csv
import json
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import write_atomic, write_json_atomic
from nnunetv2_selma.evaluation import leaderboard as lb
from nnunetv2_selma.evaluation.metrics import check_finite
from nnunetv2_selma.volumes.images import image_suffix, read_image, strip_image_suffix

logger = logging.getLogger(__name__)


def list_cases(folder: str | Path) -> dict[str, Path]:
    """Case name -> image file for the images directly inside ``folder``; other files are ignored.

    Raises
    ------
    ValueError when the folder does not exist or two files share a case name
    (``case.nii.gz`` next to ``case.mha``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder; expected a folder of .nii.gz/.mha/.tif images")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not image_suffix(path):
            continue
        case = strip_image_suffix(path)
        if case in cases:
            raise ValueError(f"{folder}: case {case!r} has two files, {cases[case].name} and {path.name}; keep one")
        cases[case] = path
    return cases


def binarisation_note(array: np.ndarray) -> str | None:
    """A sentence describing how ``array > 0`` changes ``array``, or None if it is already binary.

    Binary means boolean, or only the values 0 and 1.
    """
    if array.dtype == bool or array.size == 0:
        return None
    lo, hi = array.min(), array.max()
    if lo >= 0 and hi <= 1 and (np.issubdtype(array.dtype, np.integer) or not np.any((array > 0) & (array < 1))):
        return None
    sample = np.unique(array[:: max(1, array.size // 1_000_000)].ravel())
    shown = ", ".join(f"{v:g}" for v in sample[:6]) + (", ..." if sample.size > 6 else "")
    note = f"holds {array.dtype} values {lo:g}..{hi:g} (e.g. {shown}); expected 0/1; binarised as > 0"
    if lo < 0:
        note += " (negative values count as background)"
    return note


def _score_case_files(case: str, ref_path: Path, pred_path: Path | None, edition: str, category_name: str) -> dict:
    """Worker: read one case's files, check them, score them. Errors name the case."""
    category = lb.EDITIONS[edition][category_name]
    notes: list[str] = []
    try:
        ref, _ = read_image(ref_path)
        check_finite(ref, f"reference {ref_path}")
        note = binarisation_note(ref)
        if note:
            logger.info("case %s: reference %s %s", case, ref_path.name, note)
            notes.append(f"reference {ref_path.name} {note}")
        if pred_path is None:
            pred = np.zeros(ref.shape, dtype=bool)
            notes.append("prediction missing; scored as an empty prediction")
        else:
            pred, _ = read_image(pred_path)
            check_finite(pred, f"prediction {pred_path}")
            if pred.shape != ref.shape:
                raise ValueError(
                    f"prediction {pred_path} has shape {pred.shape} (z, y, x) but reference {ref_path} has "
                    f"{ref.shape}; expected equal shapes"
                )
            note = binarisation_note(pred)
            if note:
                notes.append(f"prediction {pred_path.name} {note}")
        values, metric_notes = lb.score_case(pred, ref, category)
    except Exception as e:
        raise ValueError(f"case {case}: {e}") from e
    return {"category": category_name, **values, "warnings": notes + metric_notes}


def write_cases_csv(path: str | Path, result: dict) -> None:
    """One row per case: case, category, then every metric any case has (blank where absent)."""
    cases = result["cases"]
    columns: list[str] = []
    for values in cases.values():
        columns += [k for k in values if k not in ("category", "warnings") and k not in columns]

    def write(f):
        writer = csv.writer(f)
        writer.writerow(["case", "category", *columns])
        for case, values in cases.items():
            writer.writerow([case, values["category"], *[values.get(c, "") for c in columns]])

    write_atomic(Path(path), write)


def evaluate_folders(
    reference_folder: str | Path,
    prediction_folder: str | Path,
    edition: str,
    output_json: str | Path | None = None,
    *,
    category: str | None = None,
    num_processes: int = 2,
    allow_missing: bool = False,
    csv_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Score every reference case against its prediction with the metrics of ``edition``.

    Parameters
    ----------
    reference_folder, prediction_folder : folders of 3D images, matched by case name
    edition : "2024", "2025" or "2026"
    output_json : where to write the result (written atomically); None writes nothing
    category : force every case into "isolated"/"dot-like" or "contiguous"/"tree-like" instead of
        telling it from the case name (the prefixes of :mod:`nnunetv2_selma.structures`)
    num_processes : worker processes; 1 scores in this process
    allow_missing : score a missing prediction as an empty one (with a warning) instead of failing
    csv_path : per-case CSV; defaults to ``output_json`` with suffix ``.csv``
    progress : show a tqdm bar

    Returns
    -------
    dict with ``edition``, ``reference``, ``prediction``, ``aggregates`` (leaderboard key names;
    2026: mean and std, NaN-aware), ``n_cases`` (per category), ``subgroup_aggregates`` (2026 only:
    the dense/sparse x iso/con means the ranking ranks), ``cases`` (case -> category, metric values and that case's
    ``warnings``) and ``warnings`` (every warning, each naming its case).

    Raises
    ------
    ValueError naming the cases when predictions are missing (without ``allow_missing``), a
    case's category cannot be told, files are unreadable or shapes differ.
    """
    edition = lb.check_edition(edition)
    refs, preds, warnings = _match_cases(reference_folder, prediction_folder, allow_missing)
    categories = {case: lb.case_category(case, edition, category).name for case in refs}
    if any("panoptic_quality" in lb.EDITIONS[edition][c].metrics for c in set(categories.values())):
        import panoptica  # noqa: F401  -- slow import (torch); once here, inherited by forked workers

    jobs = [(case, refs[case], preds.get(case), edition, categories[case]) for case in sorted(refs)]
    cases = _score_all(jobs, edition, num_processes, progress)
    for case, values in cases.items():
        warnings += [f"case {case}: {w}" for w in values["warnings"]]
    warnings += lb.aggregate_warnings(cases, edition)
    for w in warnings:
        logger.warning(w)

    aggregates, n_cases = lb.aggregate(cases, edition)
    subgroups = lb.subgroup_aggregate(cases, edition)
    result = {
        "edition": edition,
        "reference": str(Path(reference_folder).resolve()),
        "prediction": str(Path(prediction_folder).resolve()),
        "aggregates": aggregates,
        "n_cases": n_cases,
        **({"subgroup_aggregates": subgroups} if subgroups else {}),
        "cases": cases,
        "warnings": warnings,
    }
    if output_json is not None:
        output_json = Path(output_json)
        write_json_atomic(output_json, result, indent=2)
        write_cases_csv(csv_path if csv_path is not None else output_json.with_suffix(".csv"), result)
    return result


def _match_cases(reference_folder: str | Path, prediction_folder: str | Path,
                 allow_missing: bool) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """References and predictions by case name, and a warning per prediction without a reference."""
    refs = list_cases(reference_folder)
    preds = list_cases(prediction_folder)
    if not refs:
        raise ValueError(f"{reference_folder}: holds no reference image (.nii.gz/.mha/.tif)")
    warnings: list[str] = []
    missing = sorted(set(refs) - set(preds))
    if missing and not allow_missing:
        raise ValueError(
            f"{prediction_folder}: no prediction for {len(missing)} of {len(refs)} reference cases: "
            f"{', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}; expected a file named like the "
            "reference (any of .nii.gz/.mha/.tif), or pass --allow-missing to score them as empty predictions"
        )
    for case in sorted(set(preds) - set(refs)):
        warnings.append(f"case {case}: prediction {preds[case].name} has no reference; ignored")
    return refs, preds, warnings


def _score_all(jobs: list[tuple], edition: str, num_processes: int, progress: bool) -> dict[str, dict]:
    """Score every case (in worker processes unless ``num_processes`` <= 1), sorted by case; every case
    that cannot be scored is named in one ValueError."""
    from tqdm import tqdm

    cases: dict[str, dict] = {}
    errors: list[str] = []
    bar = tqdm(total=len(jobs), desc=f"SELMA3D {edition} evaluation", unit="case", disable=not progress)
    if num_processes <= 1:
        for job in jobs:
            try:
                cases[job[0]] = _score_case_files(*job)
            except ValueError as e:
                errors.append(str(e))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=min(num_processes, len(jobs))) as pool:
            futures = {pool.submit(_score_case_files, *job): job[0] for job in jobs}
            for future in as_completed(futures):
                try:
                    cases[futures[future]] = future.result()
                except ValueError as e:
                    errors.append(str(e))
                bar.update()
    bar.close()
    if errors:
        raise ValueError(f"{len(errors)} case(s) could not be scored:\n" + "\n".join(sorted(errors)))
    return {case: cases[case] for case in sorted(cases)}


def load_result(path: str | Path) -> dict:
    """A result JSON written by :func:`evaluate_folders`; ValueError naming the file otherwise."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot be read as an evaluation result ({e})") from e
    if not isinstance(result, dict) or not {"edition", "aggregates", "cases"} <= set(result):
        raise ValueError(f"{path}: not an evaluation result; expected keys edition, aggregates, cases")
    return result


def rank_predictions(
    predictions: list[str | Path],
    edition: str,
    output_json: str | Path,
    *,
    reference_folder: str | Path | None = None,
    names: list[str] | None = None,
    category: str | None = None,
    num_processes: int = 2,
    allow_missing: bool = False,
    progress: bool = True,
) -> dict:
    """Score several prediction folders (or load their result JSONs) and rank them.

    Parameters
    ----------
    predictions : prediction folders (scored against ``reference_folder``) or result JSON files
        written by :func:`evaluate_folders`, one per team
    edition : "2024", "2025" or "2026"
    output_json : the ranking (see :func:`leaderboard.rank_teams`), plus a ``.csv`` next to it.
        Each scored folder's full result goes to ``<output stem>.<team>.json``. 2026 adds ``left_out``:
        per team, the cases whose metric is NaN and so left out of its means (:func:`leaderboard.nan_cases`).
    reference_folder : needed when any entry of ``predictions`` is a folder
    names : team names; default: each folder's or JSON file's name
    category, num_processes, allow_missing, progress : as for :func:`evaluate_folders`

    Raises
    ------
    FileNotFoundError naming a prediction that does not exist (before any folder is scored);
    ValueError when team names repeat, results come from another edition or other cases.
    """
    edition = lb.check_edition(edition)
    output_json = Path(output_json)
    if names is None:
        names = [Path(p).stem if Path(p).is_file() else Path(p).name for p in predictions]
    if len(names) != len(predictions):
        raise ValueError(f"got {len(names)} names for {len(predictions)} predictions; expected one name each")
    if len(set(names)) != len(names):
        raise ValueError(f"team names repeat ({', '.join(names)}); pass --names to tell them apart")
    for source in map(Path, predictions):  # all named before any folder is scored
        if not source.exists():
            raise FileNotFoundError(f"{source}: not found; expected a folder of predicted masks or a result JSON "
                                    f"of nnUNetv2_selma_evaluate (-o). Check the path given to -pred.")
    results = _team_results(predictions, names, edition, output_json, reference_folder, category=category,
                            num_processes=num_processes, allow_missing=allow_missing, progress=progress)
    case_sets = {name: sorted(r["cases"]) for name, r in results.items()}
    first = names[0]
    for name in names[1:]:
        if case_sets[name] != case_sets[first]:
            diff = sorted(set(case_sets[name]) ^ set(case_sets[first]))
            raise ValueError(f"teams {first!r} and {name!r} were scored on different cases ({', '.join(diff[:10])})")
    if edition in lb.MEAN_STD_EDITIONS:  # 2026 ranks subgroup means (older result files lack them)
        ranked_on = {name: r.get("subgroup_aggregates") or lb.subgroup_aggregate(r["cases"], edition)
                     for name, r in results.items()}
    else:
        ranked_on = {name: r["aggregates"] for name, r in results.items()}
    ranking = lb.rank_teams(ranked_on, edition)
    if edition in lb.MEAN_STD_EDITIONS:
        ranking["left_out"] = {name: lb.nan_cases(r["cases"], edition) for name, r in results.items()}
    write_json_atomic(output_json, ranking, indent=2)
    _write_ranking_csv(output_json.with_suffix(".csv"), ranking)
    return ranking


def _team_results(predictions: list[str | Path], names: list[str], edition: str, output_json: Path,
                  reference_folder: str | Path | None, **scoring) -> dict[str, dict]:
    """Each team's result: its result JSON read back, or its prediction folder scored now."""
    results: dict[str, dict] = {}
    for name, source in zip(names, predictions):
        source = Path(source)
        if source.is_file():
            result = load_result(source)
            if str(result["edition"]) != edition:
                raise ValueError(f"{source}: scored for edition {result['edition']}, expected {edition}")
        else:
            if reference_folder is None:
                raise ValueError(f"{source}: is a prediction folder; pass -ref with the reference folder")
            result = evaluate_folders(reference_folder, source, edition,
                                      output_json.with_name(f"{output_json.stem}.{name}.json"), **scoring)
        results[name] = result
    return results


def _write_ranking_csv(path: Path, ranking: dict) -> None:
    """One row per team, in rank order: rank, score, category and subgroup mean ranks, metrics and their ranks."""
    first = ranking["order"][0]
    metric_keys = list(ranking["teams"][first]["metric_ranks"])
    category_names = list(ranking["teams"][first]["category_scores"])
    subgroup_names = list(ranking["teams"][first]["subgroup_scores"])

    def write(f):
        writer = csv.writer(f)
        writer.writerow(["team", "rank", "score", *[f"{c}_mean_rank" for c in category_names],
                         *[f"{g}_mean_rank" for g in subgroup_names],
                         *metric_keys, *[f"{k}_rank" for k in metric_keys]])
        for team in ranking["order"]:
            t = ranking["teams"][team]
            writer.writerow([team, t["rank"], t["score"], *[t["category_scores"][c] for c in category_names],
                             *[t["subgroup_scores"][g] for g in subgroup_names],
                             *[t["aggregates"][k] for k in metric_keys], *[t["metric_ranks"][k] for k in metric_keys]])

    write_atomic(path, write)

"""How much foreground each fine-tuned model of an unannotated-benefit study calls on the unseen domains.

    .venv/bin/python benchmarks/foreground_calls.py --work /work/studies/unannotated_cpu_v8 [--structure nuclei]
        [--arms scratch semi_pl] [-o calls.json]

Dice alone does not say whether a model misses objects or outlines look-alikes. For every row of the study's
``--work`` folder (``rows/*/*.json``, test ``unseen_domains``, tested on the structure it was trained on), this
reads nnU-Net's final validation predictions of the unseen-domain patches (the fold's ``validation`` folder)
and the labels in the study's ``nnUNet_raw``, and prints predicted / true foreground, recall and precision,
counted over all the patches together, and each training case's own foreground share (the labelled subset).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_files import read_array, rows_parser  # noqa: E402


def _mask(path: Path) -> np.ndarray:
    return read_array(path, "nnU-Net's validation output or a label") > 0


def foreground_calls(work: Path, structure: str | None = None, arms: list[str] | None = None,
                     skipped: list[str] | None = None) -> list[dict]:
    """One record per (structure, k, arm, seed) of ``work``'s rows on ``unseen_domains``. Rows counted from another
    study (``--reuse``: their model folder is not here) are left out and named in ``skipped``."""
    records, shares = [], {}
    for row_file in sorted(work.glob("rows/*/*.json")):
        for row in json.loads(row_file.read_text()):
            if row["test"] != "unseen_domains" or row["trained_on"] != row["tested_on"]:
                continue
            if (structure and row["structure"] != structure) or (arms and row["arm"] not in arms):
                continue
            model = Path(row["model_folder"])
            if not model.is_dir():
                if skipped is not None:
                    skipped.append(f"{row['structure']} k={row['k']} {row['arm']} seed {row['seed']}: "
                                   f"{row['model_folder']}")
                continue
            raw = work / "nnUNet_raw" / model.parent.name / "labelsTr"
            predicted = true = hits = 0
            validation = model / f"fold_{row['fold']}" / "validation"
            for case in row["per_case_dice"]:
                p, t = _mask(validation / f"{case}.nii.gz"), _mask(raw / f"{case}.nii.gz")
                predicted, true, hits = predicted + int(p.sum()), true + int(t.sum()), hits + int((p & t).sum())
            split = json.loads((work / "nnUNet_preprocessed" / model.parent.name / "splits_final.json").read_text())
            train = split[row["fold"]]["train"]
            for case in train:
                if case not in shares:
                    shares[case] = float(_mask(raw / f"{case}.nii.gz").mean())
            records.append({"structure": row["structure"], "k": row["k"], "arm": row["arm"], "seed": row["seed"],
                            "dice": row["dice"], "predicted_over_true": predicted / max(true, 1),
                            "recall": hits / max(true, 1), "precision": hits / max(predicted, 1),
                            "train_cases": {c: round(shares[c], 4) for c in train},
                            "model_folder": str(model), "fold": row["fold"], "test_cases": list(row["per_case_dice"])})
    return sorted(records, key=lambda r: (r["structure"], str(r["k"]), r["arm"], r["seed"]))


def main(argv: list[str] | None = None) -> int:
    args = (parser := rows_parser(__doc__)).parse_args(argv)
    skipped: list[str] = []
    records = foreground_calls(args.work, args.structure, args.arms, skipped)
    if skipped:
        print(f"{len(skipped)} rows left out, their models are not in {args.work} (reused), e.g. {skipped[0]}")
    if not records:
        parser.error(f"{args.work}: no unseen_domains rows{' of ' + args.structure if args.structure else ''}")
    for r in records:
        train = " ".join(f"{c.rsplit('_', 1)[-1]}:{s:.3f}" for c, s in r["train_cases"].items())
        if len(r["train_cases"]) > 4:
            train = f"{len(r['train_cases'])} cases"
        print(f"{r['structure']:8s} k={r['k']!s:4s} {r['arm']:30s} seed {r['seed']}  Dice {r['dice']:.3f}  "
              f"predicted/true {r['predicted_over_true']:.2f}  recall {r['recall']:.2f}  "
              f"precision {r['precision']:.2f}  labelled share {train}")
    if args.output:
        args.output.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

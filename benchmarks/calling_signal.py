"""Can the unannotated images tell whether a model under- or over-calls a new imaging domain? A label-free check.

    .venv/bin/python benchmarks/calling_signal.py --work /work/studies/unannotated_cpu_d1 [--structure nuclei]
        [--arms scratch] [-o signal.json]

The unannotated-benefit arms help where scratch misses objects in the new domains and hurt where it already calls
too much (RESULTS, draw 1), so a method needs the direction of scratch's calling error without the new domains'
labels. The candidate here is blob coverage: bright blobs (peaks of the scale-normalised Laplacian of Gaussian at
the image's own object scale, :func:`blob_centres`) are found in every image without labels; in the labelled
cases a share ``c_labelled`` of them lies inside the labels (the rest are look-alikes and noise), and in the new
domains the model's predictions cover a share ``c_predicted`` of theirs. ``c_predicted / c_labelled`` below 1 says
the model leaves blobs uncalled that labels would have called, above 1 that it calls more of them.

For every unseen-domain row of the study's ``--work`` folder this prints that ratio beside what it tries to
predict, the model's predicted / true foreground on the same patches (which needs their labels), the share of
blobs the true labels cover there (the assumption: as in the labelled cases), and the Spearman correlation of the
ratio with the true calling error over the rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import spearmanr

from nnunetv2_selma.training.semi_trainers import object_scale

sys.path.insert(0, str(Path(__file__).resolve().parent))
from foreground_calls import foreground_calls  # noqa: E402
from study_files import read_array, rows_parser  # noqa: E402


def blob_centres(image: np.ndarray, z: float = 3.0) -> tuple[np.ndarray, float]:
    """Boolean mask of bright blob centres of ``image`` (z, y, x): local maxima of ``-s^2 LoG_s`` at the image's
    :func:`object_scale` ``s`` in a window of the blob's size, above the response's median plus ``z`` robust
    standard deviations. Returns (centres, the scale s)."""
    x = image.astype(np.float32)
    x = (x - x.mean()) / (x.std() + 1e-6)
    s = object_scale(x)
    response = -(s ** 2) * ndimage.gaussian_laplace(x, s, mode="reflect")
    med = float(np.median(response))
    sd = 1.4826 * float(np.median(np.abs(response - med))) + 1e-6
    window = 2 * int(np.ceil(s)) + 1
    peaks = (response == ndimage.maximum_filter(response, window, mode="reflect")) & (response > med + z * sd)
    return peaks, s


def object_volume(masks: list[np.ndarray], blobs: list[tuple[np.ndarray, float]]) -> float:
    """The median volume, in units of the image's blob scale cubed, of the mask components that hold a blob
    centre: how large the mask draws the objects that the images show, whatever their size in voxels."""
    volumes = []
    for m, (c, s) in zip(masks, blobs):
        components, _ = ndimage.label(m)
        hit = np.unique(components[c & m])
        if hit.size:
            sizes = np.bincount(components.ravel())
            volumes += list(sizes[hit] / s ** 3)
    return float(np.median(volumes)) if volumes else float("nan")


def coverage(masks: list[np.ndarray], blobs: list[tuple[np.ndarray, float]]) -> float:
    """The share of all blob centres that fall inside the masks (pairs of the same shape)."""
    inside = sum(int((m & c).sum()) for m, (c, _) in zip(masks, blobs))
    return inside / max(1, sum(int(c.sum()) for c, _ in blobs))


def calling_signal(work: Path, structure: str | None = None, arms: list[str] | None = None) -> list[dict]:
    """One record per unseen-domain row: :func:`foreground_calls`'s plus ``c_labelled``, ``c_predicted``,
    ``c_true`` (coverage of the unseen patches' blobs by their labels) and ``signal`` (c_predicted / c_labelled)."""
    centres: dict[Path, tuple[np.ndarray, float]] = {}

    def blobs(image: Path) -> tuple[np.ndarray, float]:
        if image not in centres:
            centres[image] = blob_centres(read_array(image, "the study's nnU-Net raw image"))
        return centres[image]

    out = []
    for record in foreground_calls(work, structure, arms):
        model = Path(record["model_folder"])
        raw = work / "nnUNet_raw" / model.parent.name

        def image(case: str, raw: Path = raw) -> Path:
            return raw / "imagesTr" / f"{case}_0000.nii.gz"

        def label(case: str, raw: Path = raw) -> np.ndarray:
            return read_array(raw / "labelsTr" / f"{case}.nii.gz", "a label") > 0

        train, test = list(record["train_cases"]), record["test_cases"]
        validation = model / f"fold_{record['fold']}" / "validation"
        labelled, predicted, true = ([label(c) for c in train],
                                     [read_array(validation / f"{c}.nii.gz", "nnU-Net's validation output") > 0
                                      for c in test], [label(c) for c in test])
        train_blobs, test_blobs = [blobs(image(c)) for c in train], [blobs(image(c)) for c in test]
        c = {"c_labelled": coverage(labelled, train_blobs), "c_predicted": coverage(predicted, test_blobs),
             "c_true": coverage(true, test_blobs), "v_labelled": object_volume(labelled, train_blobs),
             "v_predicted": object_volume(predicted, test_blobs), "v_true": object_volume(true, test_blobs)}
        out.append({**record, **c, "signal": c["c_predicted"] / max(c["c_labelled"], 1e-6),
                    "size_signal": c["v_predicted"] / c["v_labelled"]})
    return out


def main(argv: list[str] | None = None) -> int:
    args = (parser := rows_parser(__doc__)).parse_args(argv)
    records = calling_signal(args.work, args.structure, args.arms)
    if not records:
        parser.error(f"{args.work}: no unseen_domains rows with their models")
    for r in records:
        print(f"{r['structure']:8s} k={r['k']!s:4s} {r['arm']:24s} seed {r['seed']}  Dice {r['dice']:.3f}  "
              f"predicted/true {r['predicted_over_true']:.2f}  blobs covered: labelled {r['c_labelled']:.2f}  "
              f"predicted {r['c_predicted']:.2f}  true {r['c_true']:.2f}  signal {r['signal']:.2f}  "
              f"object volume / s^3: labelled {r['v_labelled']:.1f}  predicted {r['v_predicted']:.1f}  "
              f"true {r['v_true']:.1f}  size signal {r['size_signal']:.2f}")
    for s in sorted({r["structure"] for r in records}):
        mine = [r for r in records if r["structure"] == s]
        if len(mine) > 2:
            for key in ("signal", "size_signal"):
                rho = spearmanr([r[key] for r in mine], [r["predicted_over_true"] for r in mine]).statistic
                print(f"{s}: Spearman rho of the {key} with predicted / true over {len(mine)} rows {rho:+.2f}")
    if args.output:
        args.output.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

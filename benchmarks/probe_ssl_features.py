"""Linear probe of pretrained encoders: do their features already tell objects from background?

A fine-tuning study (``bench_ssl_benefit.py``) costs one to two minutes per run on this CPU, so a pretraining
change takes an hour to judge there. This probe judges the *pretraining* alone, in seconds per checkpoint:
the network of the study's plans is built, a checkpoint's weights are loaded (a random initialisation for
``random:SEED``), every encoder stage's output is upsampled to full resolution and concatenated into one
feature vector per voxel, and a logistic regression on those vectors is fitted on the labelled pool patches
of a structure and scored on its held-out patches (average precision, threshold-free; and Dice at 0.5).
Features that know cells give a better probe than random ones; if a pretrained encoder probes no better than
a random one, fine-tuning has nothing to gain from it, whatever its schedule.

Run on a study's work folder (``bench_ssl_benefit.py --work W``), e.g.::

    python benchmarks/probe_ssl_features.py --work /tmp/ssl_hard \\
        --checkpoints random:0 random:1 random:2 mae=/tmp/ssl_hard/pretraining/mae_seed{0,1,2}/checkpoint_final.pth \\
        -o /tmp/probe.json

``NAME=PATH`` groups checkpoints under NAME (seeds of one method); ``random:SEED`` is nnU-Net's own
initialisation with that torch seed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from bench_ssl_benefit import STRUCTURES
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from torch.nn import functional

from nnunetv2_selma.checkpoints import load_pretrained_weights
from nnunetv2_selma.evaluation.metrics import dice
from nnunetv2_selma.network import build_network
from nnunetv2_selma.normalization import normalize_image

log = logging.getLogger("probe_ssl_features")



def dataset_folder(root: Path, structure: str) -> Path:
    """The study's dataset folder of ``structure`` under ``root`` (nnUNet_raw or nnUNet_preprocessed)."""
    did = STRUCTURES[structure][1]
    found = sorted(p for p in root.glob(f"Dataset{did}_*") if p.is_dir())
    if not found:
        raise FileNotFoundError(f"{root}: no Dataset{did}_* folder for {structure}; expected a bench_ssl_benefit.py "
                                f"--work folder whose study included {structure}")
    return found[0]


def read_case(raw: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz")))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz")))
    return normalize_image(image), label > 0


@torch.no_grad()
def voxel_features(network: torch.nn.Module, image: np.ndarray, with_intensity: bool) -> np.ndarray:
    """(voxels, channels) float32: every encoder stage's output upsampled to the image, plus the intensity."""
    shape = image.shape
    padded = [max(32, -(-s // 8) * 8) for s in shape]
    x = np.zeros(padded, np.float32)
    x[tuple(slice(0, s) for s in shape)] = image
    x = torch.from_numpy(x)[None, None]
    maps = []
    if network is not None:  # a U-Net's encoder returns every stage's output (its skips)
        maps = [functional.interpolate(h, size=padded, mode="trilinear", align_corners=False)
                for h in network.encoder(x)]
    if with_intensity or not maps:
        maps.append(x)
    feats = torch.cat(maps, 1)[0][(slice(None), *(slice(0, s) for s in shape))]
    return feats.reshape(feats.shape[0], -1).T.numpy()


def probe(features_train, labels_train, features_test, labels_test, seed: int, n_fit: int = 40000) -> dict:
    rng = np.random.default_rng(seed)
    X, y = np.concatenate(features_train), np.concatenate([lab.ravel() for lab in labels_train])
    pick = rng.choice(len(y), size=min(n_fit, len(y)), replace=False)
    mean, std = X[pick].mean(0), X[pick].std(0) + 1e-6
    clf = LogisticRegression(max_iter=400, class_weight="balanced", C=1.0)
    clf.fit((X[pick] - mean) / std, y[pick])
    aps, dices = [], []
    for f, lab in zip(features_test, labels_test):
        p = clf.predict_proba((f - mean) / std)[:, 1]
        aps.append(float(average_precision_score(lab.ravel(), p)) if lab.any() else float("nan"))
        dices.append(dice(p.reshape(lab.shape) > 0.5, lab))
    return {"ap": float(np.nanmean(aps)), "dice": float(np.mean(dices))}


def load(spec: str, plans: Path) -> tuple[str, torch.nn.Module | None]:
    if spec == "intensity":
        return "intensity", None
    if spec.startswith("random:"):
        torch.manual_seed(int(spec.split(":")[1]))
        return "random", build_network(plans, num_output_channels=2).eval()
    name, path = spec.split("=", 1)
    network = build_network(plans, num_output_channels=2).eval()
    load_pretrained_weights(network, path, log=lambda *a, **k: None)
    return name, network


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="bench_ssl_benefit.py --work folder")
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="intensity | random:SEED | NAME=PATH (several PATHs per NAME = seeds)")
    parser.add_argument("--structures", nargs="+", default=["nuclei", "cfos", "plaques"], choices=sorted(STRUCTURES))
    parser.add_argument("--pool", type=int, default=8, help="labelled patches the probe is fitted on")
    parser.add_argument("--with-intensity", action="store_true", help="append the raw intensity to every vector")
    parser.add_argument("-o", "--output", type=Path, help="results .json (a .png bar chart is written beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    # the study pretrains every arm with the plans of its first structure (nuclei)
    plans = dataset_folder(args.work / "nnUNet_preprocessed", "nuclei") / "nnUNetSelmaPlans_cpu.json"
    data = {}
    for s in args.structures:
        raw = dataset_folder(args.work / "nnUNet_raw", s)
        cases = sorted(p.name[:-len("_0000.nii.gz")] for p in (raw / "imagesTr").glob("*_0000.nii.gz"))
        data[s] = [read_case(raw, c) for c in cases]
    results = defaultdict(lambda: defaultdict(list))
    for spec in args.checkpoints:
        name, network = load(spec, plans)
        for s, cases in data.items():
            feats = [voxel_features(network, img, args.with_intensity) for img, _ in cases]
            labels = [lab for _, lab in cases]
            r = probe(feats[:args.pool], labels[:args.pool], feats[args.pool:], labels[args.pool:], seed=0)
            results[name][s].append(r)
            log.info("%-28s %-8s AP %.3f Dice %.3f", spec[:28], s, r["ap"], r["dice"])
    summary = {name: {s: {"ap_mean": float(np.mean([r["ap"] for r in rs])),
                          "ap_sd": float(np.std([r["ap"] for r in rs])),
                          "dice_mean": float(np.mean([r["dice"] for r in rs])), "n": len(rs)}
                      for s, rs in per.items()} for name, per in results.items()}
    print("| features | " + " | ".join(f"{s} AP | {s} Dice" for s in args.structures) + " |")
    print("|---|" + "---|---|" * len(args.structures))
    for name, per in summary.items():
        cells = " | ".join(f"{per[s]['ap_mean']:.3f} ± {per[s]['ap_sd']:.3f} | {per[s]['dice_mean']:.3f}"
                           for s in args.structures)
        print(f"| {name} (n={per[args.structures[0]]['n']}) | {cells} |")
    if args.output:
        args.output.write_text(json.dumps({"summary": summary, "runs": {n: dict(p) for n, p in results.items()},
                                           "command": " ".join(sys.argv)}, indent=1))
        plot(summary, args.structures, args.output.with_suffix(".png"))
    return 0


def plot(summary: dict, structures: list[str], path: Path) -> None:
    """Probe AP per structure, one bar per feature set (error bar: SD over its checkpoints)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(structures), 3.2))
    for i, name in enumerate(names):
        xs = np.arange(len(structures)) + (i - (len(names) - 1) / 2) * width
        ax.bar(xs, [summary[name][s]["ap_mean"] for s in structures], width,
               yerr=[summary[name][s]["ap_sd"] for s in structures], capsize=2,
               label=f"{name} (n={summary[name][structures[0]]['n']})")
    ax.set_xticks(np.arange(len(structures)), structures)
    ax.set_ylabel("linear-probe average precision\n(held-out patches)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("What frozen encoder features know about objects", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

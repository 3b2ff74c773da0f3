"""Can a structure's foreground share be read off the images alone? A check for ``semi_align``'s stated share.

    .venv/bin/python benchmarks/share_proxy.py --work /work/studies/unannotated_cpu_v9 [--structure nuclei]
        [-o proxy.json]

``semi_align`` aligns the teacher to a foreground share; aligned to the labelled patches' own share it keeps a
sparse subset's prior (RESULTS, v8). A share taken from the unannotated volumes needs a label-free estimate. This
measures the simplest ones, bright-voxel fractions, against the true share of every annotated patch of an
unannotated-benefit study's ``--work`` folder (the labels in its ``nnUNet_raw``; the domain of each patch from
``download/domains.json``): the fraction above Otsu's threshold, and above the median plus 2 and 3 robust standard
deviations (1.4826 times the median absolute deviation); and the objects' size (``scale``, the blob scale of
:func:`~nnunetv2_selma.training.semi_trainers.object_scale` that ``semi_align = "rescaled"`` cubes). It prints
each patch, the same proxies of the structure's unannotated volume of each domain, and the Spearman correlation of
each proxy with the true share.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
from scipy.stats import spearmanr
from skimage.filters import threshold_otsu

from nnunetv2_selma.training.semi_trainers import object_scale

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_files import STRUCTURES, read_array  # noqa: E402

PROXIES = ("otsu", "z2", "z3", "scale")


def proxies(x: np.ndarray) -> dict[str, float]:
    """:func:`bright_fractions` and the object size (``scale``, :func:`object_scale`) of one image."""
    return {**bright_fractions(x), "scale": object_scale(x)}


def bright_fractions(x: np.ndarray) -> dict[str, float]:
    """The fraction of voxels above Otsu's threshold and above median + 2 and + 3 robust standard deviations."""
    x = x.astype(np.float32)
    med = float(np.median(x))
    sd = 1.4826 * float(np.median(np.abs(x - med))) + 1e-6
    return {"otsu": float((x > threshold_otsu(x)).mean()), "z2": float((x > med + 2 * sd).mean()),
            "z3": float((x > med + 3 * sd).mean())}


def share_proxies(work: Path, structure: str = "nuclei") -> dict:
    """Per annotated patch: domain, role, true share and proxies; per domain: the unannotated volume's proxies;
    per proxy: Spearman's rho with the true share over the patches."""
    prefix, folder = f"Dataset{STRUCTURES[structure][1]}_", f"unannotated_{STRUCTURES[structure][2]}"
    record = json.loads((work / "download" / "domains.json").read_text())
    raws = sorted((work / "nnUNet_raw").glob(f"{prefix}*"))
    if not raws:
        raise FileNotFoundError(f"{work / 'nnUNet_raw'}: no {prefix}* dataset (expected the study's --work folder)")
    raw = raws[0]
    patches = []
    for case in record["cases"]:
        label = next(raw.glob(f"labelsTr/*{case['case']}.nii.gz"), None)
        if label is None:
            raise FileNotFoundError(f"{raw / 'labelsTr'}: no label of {case['case']}")
        image = raw / "imagesTr" / label.name.replace(".nii.gz", "_0000.nii.gz")
        patches.append({**case, "share": float((read_array(label, "a label") > 0).mean()),
                        **proxies(read_array(image, "the study's nnU-Net raw dataset"))})
    volumes = []
    for d in range(len(record["domains"])):
        slices = sorted((work / "download" / folder / f"sample_{d + 1}").glob("*/*.tif"),
                        key=lambda f: (f.parent.name, int(f.stem.rsplit("_", 1)[-1])))
        if slices:
            volumes.append({"domain": d, **proxies(np.stack([tifffile.imread(f) for f in slices]))})
    shares = [p["share"] for p in patches]
    rho = {k: float(spearmanr(shares, [p[k] for p in patches]).statistic) for k in PROXIES}
    return {"structure": structure, "patches": patches, "volumes": volumes, "spearman": rho}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the study's --work folder")
    parser.add_argument("--structure", default="nuclei", choices=sorted(STRUCTURES))
    parser.add_argument("-o", "--output", type=Path, help="also write the records as JSON here")
    args = parser.parse_args(argv)
    out = share_proxies(args.work, args.structure)
    for p in out["patches"]:
        print(f"{p['case']}  domain {p['domain']}  {p['role']:15s} share {p['share']:.3f}  "
              + "  ".join(f"{k} {p[k]:.3f}" for k in PROXIES))
    for v in out["volumes"]:
        print(f"unannotated volume, domain {v['domain']}:  " + "  ".join(f"{k} {v[k]:.3f}" for k in PROXIES))
    print("Spearman rho with the true share over the patches: "
          + ", ".join(f"{k} {r:+.2f}" for k, r in out["spearman"].items()))
    if args.output:
        args.output.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

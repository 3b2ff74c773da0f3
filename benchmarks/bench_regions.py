"""Accuracy, time and peak memory of ``nnUNetv2_selma_regions`` on synthetic brains of two sizes.

Each brain is the toy BrainGlobe atlas (50 um, written in BrainGlobe's own format) warped by a known affine +
smooth deformation onto another voxel size and orientation (``ial``), with 234 cells in the cores of known
regions (:mod:`nnunetv2_selma.synthetic.atlas_brain`); the large one has voxels ``--scale`` times smaller per
axis (``scale**3`` times the voxels) and is read as a folder of TIFF slices. The command runs in a child process
whose process-tree RSS is sampled every 50 ms. Reports, per brain: counted vs true cells per region and
hemisphere, the point error in atlas space (um), wall time per step and in total, peak RSS.

Run: ``.venv/bin/python benchmarks/bench_regions.py [--scale 8] [--work DIR]``
(results in ``benchmarks/results/regions_<name>.json``)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from nnunetv2_selma.synthetic.atlas_brain import TEST_ORIENTATION, TEST_VOXEL_SIZE, write_test_brain, write_toy_atlas

RESULTS = Path(__file__).resolve().parent / "results"


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``command``'s process tree."""
    t0 = time.perf_counter()
    process = psutil.Popen(command)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit status {process.returncode}")
    return time.perf_counter() - t0, peak / 2**20


def point_errors_um(brain: Path, out: Path, resolution: float) -> np.ndarray:
    points = pd.read_csv(out / "points_atlas_space.csv")
    objects = pd.read_csv(brain / "objects" / "objects.csv")
    cells = pd.read_csv(brain / "cells.csv")
    by_voxel = {tuple(v): k for k, v in enumerate(cells[["sample_z", "sample_y", "sample_x"]].to_numpy())}
    centroids = np.rint(objects[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()).astype(int)
    truth = cells.iloc[[by_voxel[tuple(v)] for v in centroids]]
    columns = ["atlas_z", "atlas_y", "atlas_x"]
    return np.linalg.norm(points[columns].to_numpy() - truth[columns].to_numpy(), axis=1) * resolution


def bench(name: str, scale: int, work: Path, brainglobe: Path, atlas: str) -> dict:
    brain = work / name
    t0 = time.perf_counter()
    if (brain / "truth.json").is_file():  # made by an earlier run in the same --work folder
        truth = json.loads((brain / "truth.json").read_text())
    else:
        truth = write_test_brain(brain, brainglobe, atlas_name=atlas, scale_up=scale, as_slices=scale > 1)
    made = time.perf_counter() - t0
    image = brain / ("brain" if scale > 1 else "brain.tif")
    out = work / f"{name}_out"
    shutil.rmtree(out, ignore_errors=True)  # a finished run there would be resumed, i.e. skipped
    command = [sys.executable, "-m", "nnunetv2_selma.cli.regions", "-i", str(brain / "objects"), "--image",
               str(image), "--voxel-size", *map(str, truth["voxel_size"]), "--orientation", TEST_ORIENTATION,
               "--atlas", atlas, "--brainglobe-dir", str(brainglobe), "-o", str(out), "--quiet"]
    seconds, peak = run_measured(command)
    regions = pd.read_csv(out / "regions.csv")
    summary = json.loads((out / "summary.json").read_text())
    rows = [{"acronym": r.acronym, "hemisphere": r.hemisphere,
             "truth": truth["counts"][f"{r.region_id}_{r.hemisphere}"], "counted": int(r.count)}
            for r in regions.itertuples()]
    errors = point_errors_um(brain, out, summary["atlas_resolution_um"][0])
    image_mb = float(np.prod(truth["shape"])) * 2 / 2**20
    return {"name": name, "shape": truth["shape"], "voxel_size_um": truth["voxel_size"], "image_mb": round(image_mb, 1),
            "cells": truth["cells"], "rows": rows,
            "max_count_error_percent": max(abs(r["counted"] - r["truth"]) / r["truth"] * 100 for r in rows),
            "point_error_um": {"mean": round(float(errors.mean()), 2), "median": round(float(np.median(errors)), 2),
                               "max": round(float(errors.max()), 2)},
            "seconds_total": round(seconds, 1), "seconds_per_step": summary["seconds"],
            "peak_rss_mb": round(peak, 0), "seconds_to_make_brain": round(made, 1), "command": command}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=8, help="voxels per axis of the large brain vs the small one")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--large-only", action="store_true", help="only the large brain")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_regions_"))
    brainglobe = work / "brainglobe"
    atlas = write_toy_atlas(brainglobe)  # the same atlas again (deterministic)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": psutil.cpu_count(),
               "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version()}
    RESULTS.mkdir(exist_ok=True)
    brains = (("small", 1), (f"large_x{args.scale}", args.scale))
    for name, scale in brains[1:] if args.large_only else brains:
        result = {"machine": machine, "atlas": atlas, "base_voxel_size_um": list(TEST_VOXEL_SIZE),
                  **bench(name, scale, work, brainglobe, atlas)}
        (RESULTS / f"regions_{name}.json").write_text(json.dumps(result, indent=2))
        print(f"{name}: shape {result['shape']} ({result['image_mb']} MB), {result['seconds_total']} s, peak RSS "
              f"{result['peak_rss_mb']} MB, max count error {result['max_count_error_percent']:.1f}%, point error "
              f"{result['point_error_um']}")
        for row in result["rows"]:
            print(f"  {row['acronym']:5s} {row['hemisphere']:5s} truth {row['truth']:3d} counted {row['counted']:3d}")


if __name__ == "__main__":
    main()

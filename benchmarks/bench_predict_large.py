"""Benchmark: whole-volume block inference (ours) beside stock ``nnUNetPredictor`` (tiny model, CPU).

Reports peak resident memory and voxels/s for ours on a generated volume of ``--shape`` and on the
stock-sized volume, and for stock ``predict_single_npy_array`` on ``--stock-shape`` (a volume stock can
hold), with stock's peak memory per voxel. Each measurement runs in its own child process (peak RSS
from ``resource.getrusage``). Same tile step, no mirroring, one fold, same model for all rows.

Fair timing: both children import torch and nnU-Net before the clock starts, and model loading is
excluded from both ``time s`` columns (reported in ``load s``). Stock's time is
``predict_single_npy_array`` on an array already in memory (crop, normalise, sliding window, export);
ours is statistics pass + block prediction (reading the input) + writing the output, each reported
apart (``predict_large``'s record, ``runs[-1]["seconds"]``). ``time/voxel vs stock`` compares equal
work: ours' ``predict`` alone and ours' total (statistics + predict + write).

    .venv/bin/python benchmarks/bench_predict_large.py --shape 512 1024 1024 --stock-shape 64 256 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _write_volume(path: Path, shape, seed: int = 0) -> None:
    """A light-sheet-like uint16 volume written slab by slab into a .b2nd (never whole in memory)."""
    import blosc2

    rng = np.random.default_rng(seed)
    array = blosc2.zeros(tuple(shape), dtype=np.uint16, chunks=(16, min(256, shape[1]), min(256, shape[2])),
                         urlpath=str(path), mode="w")
    for z0 in range(0, shape[0], 16):
        z1 = min(shape[0], z0 + 16)
        array[z0:z1] = (rng.gamma(2.0, 40.0, size=(z1 - z0, *shape[1:])) + 1).astype(np.uint16)


def _child(args) -> None:
    import psutil

    # imports before any clock: both sides pay them equally outside the measurement
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunetv2_selma.inference.volume_io import open_volume
    from nnunetv2_selma.inference.whole_volume import RECORD_SUFFIX, predict_large

    if args.child == "ours":
        baseline = psutil.Process().memory_info().rss
        predict_large(args.volume, args.output, args.model, block_size=args.block, progress=False)
        record = json.loads(Path(args.output + RECORD_SUFFIX).read_text())
        phases = record["runs"][-1]["seconds"]
        result = {"seconds": phases["statistics"] + phases["predict"] + phases["write"],
                  "load": phases["model_load"], "phases": phases, "block_size": record["block_size"],
                  "blocks": record["blocks"], "redundancy": record["redundancy"]}
    else:
        source = open_volume(args.volume)
        image = source.read(tuple(slice(0, s) for s in source.shape))
        start = time.perf_counter()
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                    allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(args.model, (0,))
        load = time.perf_counter() - start
        baseline = psutil.Process().memory_info().rss - image.nbytes  # the input array counts as stock's cost
        start = time.perf_counter()
        predictor.predict_single_npy_array(image[None].astype(np.float32), {"spacing": [1.0, 1.0, 1.0]})
        seconds = time.perf_counter() - start
        result = {"seconds": seconds, "load": load, "phases": {"predict": seconds}}
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["baseline_rss"] = baseline
    print(json.dumps(result))


def _measure(kind: str, volume: Path, model: Path, output: Path, block) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--volume", str(volume), "--model", str(model),
               "--output", str(output)] + (["--block", *map(str, block)] if block else [])
    done = subprocess.run(command, env=os.environ.copy(), check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 1024, 1024])
    parser.add_argument("--stock-shape", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--patch", type=int, nargs=3, default=[32, 32, 32])
    parser.add_argument("--block", type=int, nargs=3, default=None)
    parser.add_argument("--child", choices=["ours", "stock"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    root = Path(tempfile.mkdtemp(prefix="bench_predict_large_"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        os.environ[name] = str(root / name)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from model_factory import make_model_folder

    model = make_model_folder(root / "nnUNet_results", "Dataset561_bench", patch_size=tuple(args.patch))
    big, small = root / "big.b2nd", root / "small.b2nd"
    _write_volume(big, args.shape)
    _write_volume(small, args.stock_shape, seed=1)
    rows = [
        ("stock nnUNetPredictor", args.stock_shape, _measure("stock", small, model, root / "unused", None)),
        ("ours (block-wise)", args.stock_shape, _measure("ours", small, model, root / "small_out.b2nd", args.block)),
    ]
    if list(args.shape) != list(args.stock_shape):
        rows.append(("ours (block-wise)", args.shape, _measure("ours", big, model, root / "big_out.b2nd", args.block)))
    stock_spv = rows[0][2]["seconds"] / np.prod(args.stock_shape)
    # bytes per voxel: peak minus the process before predicting (python, torch, nnU-Net, the model)
    stock_bpv = (rows[0][2]["peak_rss"] - rows[0][2]["baseline_rss"]) / np.prod(args.stock_shape)
    print(f"tiny ResEnc U-Net, patch {tuple(args.patch)}, tile step 0.5, no mirroring, CPU "
          f"({os.cpu_count()} cores), block {args.block or 'default'}")
    print("| run | volume (z,y,x) | voxels | load s | stats s | predict s | write s | time s | voxels/s "
          "| peak RSS GB | baseline GB | (peak-baseline)/voxel B | predict/voxel vs stock | time/voxel vs stock |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, shape, m in rows:
        n = int(np.prod(shape))
        extra = (m["peak_rss"] - m["baseline_rss"]) / n
        ph = m["phases"]
        stats = f"{ph['statistics']:.1f}" if "statistics" in ph else "-"
        write = f"{ph['write']:.1f}" if "write" in ph else "-"
        print(f"| {name} | {tuple(shape)} | {n:.3g} | {m['load']:.1f} | {stats} | {ph['predict']:.1f} | {write} | "
              f"{m['seconds']:.1f} | {n / m['seconds']:.3g} | {m['peak_rss'] / 1e9:.2f} | "
              f"{m['baseline_rss'] / 1e9:.2f} | {extra:.1f} | {ph['predict'] / n / stock_spv:.2f} | "
              f"{m['seconds'] / n / stock_spv:.2f} |")
    for name, shape, m in rows[1:]:
        print(f"{name} {tuple(shape)}: block {m['block_size']}, {m['blocks']} blocks, tiles computed "
              f"{m['redundancy']:.3f}x the whole-volume run")
    from nnunetv2_selma.inference.whole_volume import default_block_size, plan_blocks

    full_shape = (512, 1024, 1024)
    block = args.block or default_block_size(args.patch, 1, 2)
    plan = plan_blocks(full_shape, args.patch, 0.5, block)
    region = max(int(np.prod([b - a for a, b in blk.region])) for blk in plan.blocks)
    print(f"ours planned on {full_shape}: block {plan.block_size}, {len(plan.blocks)} blocks, redundancy "
          f"{plan.redundancy:.3f}, largest region {region / 1e6:.0f} Mvoxel, ~{region * 12 / 1e9:.2f} GB "
          f"(input 4 + logits 4 + weights 2 + isinf 2 B/voxel) on top of the baseline")
    full = int(np.prod(full_shape))
    print(f"stock extrapolated to 1024x1024x512: {stock_bpv * full / 1e9:.1f} GB peak (at {stock_bpv:.1f} B/voxel)")


if __name__ == "__main__":
    main()

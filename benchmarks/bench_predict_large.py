"""Benchmark: whole-volume block inference (ours) beside stock ``nnUNetPredictor`` (tiny model, CPU).

Reports peak resident memory and voxels/s for ours on a generated volume of ``--shape`` and on the
stock-sized volume, and for stock ``predict_single_npy_array`` on ``--stock-shape`` (a volume stock can
hold), with stock's peak memory per voxel. Each measurement runs in its own child process (peak RSS
from ``resource.getrusage``). Same tile step, no mirroring, one fold, same model for all rows.

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

    if args.child == "ours":
        from nnunetv2_selma.inference.whole_volume import predict_large

        baseline = psutil.Process().memory_info().rss
        start = time.perf_counter()
        predict_large(args.volume, args.output, args.model, block_size=args.block, progress=False)
    else:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        from nnunetv2_selma.inference.volume_io import open_volume

        source = open_volume(args.volume)
        image = source.read(tuple(slice(0, s) for s in source.shape))
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                    allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(args.model, (0,))
        baseline = psutil.Process().memory_info().rss - image.nbytes  # the input array counts as stock's cost
        start = time.perf_counter()
        predictor.predict_single_npy_array(image[None].astype(np.float32), {"spacing": [1.0, 1.0, 1.0]})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "baseline_rss": baseline}))


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
        ("ours (block-wise)", args.shape, _measure("ours", big, model, root / "big_out.b2nd", args.block)),
    ]
    stock_spv = rows[0][2]["seconds"] / np.prod(args.stock_shape)
    # bytes per voxel: peak minus the process before predicting (python, torch, nnU-Net, the model)
    stock_bpv = (rows[0][2]["peak_rss"] - rows[0][2]["baseline_rss"]) / np.prod(args.stock_shape)
    print(f"tiny ResEnc U-Net, patch {tuple(args.patch)}, tile step 0.5, no mirroring, CPU "
          f"({os.cpu_count()} cores), block {args.block or 'default'}")
    print("| run | volume (z,y,x) | voxels | time s | voxels/s | peak RSS GB | baseline GB "
          "| (peak-baseline)/voxel B | time/voxel vs stock |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, shape, m in rows:
        n = int(np.prod(shape))
        extra = (m["peak_rss"] - m["baseline_rss"]) / n
        print(f"| {name} | {tuple(shape)} | {n:.3g} | {m['seconds']:.1f} | {n / m['seconds']:.3g} | "
              f"{m['peak_rss'] / 1e9:.2f} | {m['baseline_rss'] / 1e9:.2f} | {extra:.1f} | "
              f"{m['seconds'] / n / stock_spv:.2f} |")
    full = 512 * 1024 * 1024
    print(f"stock extrapolated to 1024x1024x512: {stock_bpv * full / 1e9:.1f} GB peak (at {stock_bpv:.1f} B/voxel)")


if __name__ == "__main__":
    main()

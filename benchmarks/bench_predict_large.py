"""Benchmark: block-wise ``predict_large`` beside stock ``nnUNetPredictor`` on volumes that need many blocks.

For each edge in ``--sizes`` a cube of light-sheet-like uint16 noise is written to ``.b2nd`` and predicted
twice with the same tiny ResEnc U-Net (``tests/model_factory.py``, patch ``--patch``, tile step
``--step``, no mirroring, one fold): by stock ``nnUNetPredictor.predict_single_npy_array`` on the
whole volume in memory, and by ours with ``--block`` (the same block at every size, so ours' memory is
bounded by the block while stock's grows with the volume). Reported per size: blocks, tile redundancy
(``BlockPlan.redundancy``: tiles computed / tiles of the whole-volume run), wall and CPU seconds of
the prediction (model loading and imports excluded on both sides: stock's time is
``predict_single_npy_array`` on the array read beforehand; ours is statistics + predict + write from
``predict_large``'s record), their ratio, and the peak RSS of the whole process tree (the child and
every descendant, summed, sampled every 50 ms by this process with psutil; ``ru_maxrss`` of the child
is printed beside it as a cross-check). Each measurement runs in a fresh child process.

Bit identity: ours runs the default path (statistics measured by the streaming pass, nothing handed
in) and its mask is compared with stock's voxel by voxel; on the smallest size ours also runs with
the exact (float64, histogram) statistics the streaming pass used before it reproduced numpy's
float32 sums, to show what that difference costs.

Stock is skipped (``-``) where its estimated peak (``--stock-bytes-per-voxel`` x voxels) exceeds the
memory available. Torch runs ``--threads`` threads on both sides (``nnUNet_def_n_proc``).

    nice -n 19 .venv/bin/python benchmarks/bench_predict_large.py --sizes 128 192 256 --patch 64 --block 96 \\
        --json benchmarks/results/predict_large_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

SAMPLE_SECONDS = 0.05


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

    from nnunetv2_selma.inference.whole_volume import RECORD_SUFFIX, predict_large
    from nnunetv2_selma.volumes import open_volume

    if args.child == "ours":
        stats = json.loads(args.stats) if args.stats else None
        baseline = psutil.Process().memory_info().rss
        cpu = time.process_time()
        predict_large(args.volume, args.output, args.model, block_size=args.block, tile_step_size=args.step,
                      intensity_stats=stats, progress=False)
        cpu = time.process_time() - cpu
        record = json.loads(Path(args.output + RECORD_SUFFIX).read_text())
        phases = record["runs"][-1]["seconds"]
        result = {"seconds": phases["statistics"] + phases["predict"] + phases["write"], "cpu_seconds": cpu,
                  "load": phases["model_load"], "phases": phases, "block_size": record["block_size"],
                  "blocks": record["blocks"], "redundancy": record["redundancy"],
                  "statistics": record["statistics"]}
    else:
        start = time.perf_counter()
        predictor = nnUNetPredictor(tile_step_size=args.step, use_mirroring=False, device=torch.device("cpu"),
                                    allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(args.model, (0,))
        load = time.perf_counter() - start
        baseline = psutil.Process().memory_info().rss  # before the volume is read: the array is stock's cost
        source = open_volume(args.volume)
        image = source.read(tuple(slice(0, s) for s in source.shape))
        cpu, start = time.process_time(), time.perf_counter()
        seg = predictor.predict_single_npy_array(image[None].astype(np.float32), {"spacing": [1.0, 1.0, 1.0]})
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        np.save(args.output, np.asarray(seg, dtype=np.uint8))
        result = {"seconds": seconds, "cpu_seconds": cpu, "load": load, "phases": {"predict": seconds}}
    result["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["baseline_rss"] = baseline
    print(json.dumps(result))


def _tree_rss(process) -> int:
    """RSS of a process and all its descendants, summed (shared pages count once per process)."""
    import psutil

    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _measure(kind: str, volume: Path, model: Path, output: Path, args, stats=None) -> dict:
    """Run one child, sampling the peak RSS of its whole process tree from here."""
    import psutil

    command = [sys.executable, __file__, "--child", kind, "--volume", str(volume), "--model", str(model),
               "--output", str(output), "--block", *map(str, args.block), "--step", str(args.step)]
    if stats is not None:
        command += ["--stats", json.dumps(stats)]
    env = dict(os.environ, nnUNet_def_n_proc=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _tree_rss(process))
            except psutil.NoSuchProcess:
                return
            done.wait(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    stdout, stderr = child.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if child.returncode:
        raise RuntimeError(f"{kind} child failed ({child.returncode}):\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["tree_peak_rss"] = peak[0]
    result["child_wall"] = wall
    return result


def _exact_stats(volume: Path) -> list[list[float]]:
    """The float64 mean/std of the exact histogram: what the streaming pass handed nnU-Net before it
    reproduced numpy's float32 sums."""
    from nnunetv2_selma.volumes import ExactHistogram, open_volume

    source = open_volume(volume)
    histogram = ExactHistogram(source.dtype)
    for z0 in range(0, source.shape[0], 16):
        histogram.update(source.read((slice(z0, min(source.shape[0], z0 + 16)), slice(None), slice(None))))
    return [list(histogram.moments())]


def _read_mask(path: Path) -> np.ndarray:
    from nnunetv2_selma.volumes import open_volume

    source = open_volume(path)
    return source.read(tuple(slice(0, s) for s in source.shape))


def _gb(b: float) -> str:
    return f"{b / 1e9:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256], help="cube edges, growing")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--block", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--step", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--stock-bytes-per-voxel", type=float, default=100.0,
                        help="estimate of stock's peak per voxel, to skip sizes it cannot hold")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", choices=["ours", "stock"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--volume", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--stats", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    import psutil

    root = Path(tempfile.mkdtemp(prefix="bench_predict_large_"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir()
        os.environ[name] = str(root / name)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from model_factory import make_model_folder

    model = make_model_folder(root / "nnUNet_results", "Dataset561_bench", patch_size=tuple(args.patch))
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    load_before = os.getloadavg()
    rows = []
    for i, edge in enumerate(args.sizes):
        shape = (edge, edge, edge)
        n = edge ** 3
        volume = root / f"volume_{edge}.b2nd"
        _write_volume(volume, shape, seed=i)
        row = {"shape": list(shape), "voxels": n}
        if n * args.stock_bytes_per_voxel < 0.8 * psutil.virtual_memory().available:
            row["stock"] = _measure("stock", volume, model, root / f"stock_{edge}.npy", args)
        row["ours"] = _measure("ours", volume, model, root / f"ours_{edge}.b2nd", args)
        if "stock" in row:
            reference = np.load(root / f"stock_{edge}.npy")
            row["differing_voxels"] = int((_read_mask(root / f"ours_{edge}.b2nd") != reference).sum())
            if i == 0:
                exact = _exact_stats(volume)
                _measure("ours", volume, model, root / f"ours_exact_{edge}.b2nd", args, stats=exact)
                row["exact_float64_stats"] = {"mean_std": exact[0], "streamed_float32": [
                    row["ours"]["statistics"]["mean"][0], row["ours"]["statistics"]["std"][0]],
                    "differing_voxels": int((_read_mask(root / f"ours_exact_{edge}.b2nd") != reference).sum())}
            (root / f"stock_{edge}.npy").unlink()
        rows.append(row)
        print(json.dumps({"size": edge, **{k: v for k, v in row.items() if k not in ("stock", "ours")}}),
              flush=True)

    result = {"started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "memory_gb": round(psutil.virtual_memory().total / 1e9, 1)},
              "settings": {"patch": args.patch, "block": args.block, "tile_step_size": args.step,
                           "threads": args.threads, "mirroring": False, "model": "tests/model_factory.py"},
              "command": " ".join(["python", "benchmarks/bench_predict_large.py", *sys.argv[1:]]),
              "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")

    print(f"tiny ResEnc U-Net, patch {tuple(args.patch)}, tile step {args.step}, no mirroring, CPU "
          f"({os.cpu_count()} cores, {args.threads} torch thread(s)), block {tuple(args.block)}")
    print("| volume | voxels | blocks | redundancy | stock s (CPU s) | ours s (CPU s) | ours/stock | "
          "stock peak RSS GB (tree) | ours peak RSS GB (tree) | differing voxels |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        o, s = row["ours"], row.get("stock")
        stock_time = f"{s['seconds']:.1f} ({s['cpu_seconds']:.1f})" if s else "-"
        ratio = f"{o['seconds'] / s['seconds']:.2f}" if s else "-"
        print(f"| {'x'.join(map(str, row['shape']))} | {row['voxels'] / 1e6:.1f} M | {o['blocks']} | "
              f"{o['redundancy']:.2f} | {stock_time} | {o['seconds']:.1f} ({o['cpu_seconds']:.1f}) | {ratio} | "
              f"{_gb(s['tree_peak_rss']) if s else '-'} | {_gb(o['tree_peak_rss'])} | "
              f"{row.get('differing_voxels', '-')} |")
    for row in rows:
        if "exact_float64_stats" in row:
            e = row["exact_float64_stats"]
            print(f"{'x'.join(map(str, row['shape']))} with the exact float64 statistics {e['mean_std']} instead of "
                  f"numpy's float32 {e['streamed_float32']}: {e['differing_voxels']} voxels differ from stock")


if __name__ == "__main__":
    main()

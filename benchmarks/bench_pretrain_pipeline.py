"""Benchmark of the pretraining data pipeline against the network it feeds.

    .venv/bin/python benchmarks/bench_pretrain_pipeline.py [--preset cpu] [--device cpu] [--iterations 10]
        [--workers 0 1 2] [--batch-size 2] [--store STORE] [--work /tmp/bench_pretrain]

1. Unless ``--store`` is given: writes two synthetic unannotated volumes (``--shape``, default
   64 x 256 x 256) with the project's generator and ingests them into a store.
2. Plans for the SELMA preset (``cpu``: 32^3 / 4 stages; ``M``: 128^3; ``L``: 160^3, nnssl's).
3. Network: pretraining iterations/s of the masked-image-modelling step on one fixed batch
   (AdamW; AMP and torch.compile on CUDA as in the loop) and peak memory.
4. Data pipeline: batches/s of the background-worker DataLoader (tissue-aware sampling,
   normalisation, light augmentation, masks) for each ``--workers`` value, and its ratio to the
   network's patches/s measured in the same run (> 1: the network never waits for data).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def make_store(work: Path, shape: tuple[int, int, int]) -> Path:
    from nnunetv2_selma.store.ingest import ingest_store
    from nnunetv2_selma.synthetic.download import write_unannotated_volume

    store = work / "store"
    if (store / "manifest.json").is_file():
        return store
    for i, structure in enumerate(("cfos", "nucleus")):
        write_unannotated_volume(work / "download" / f"unannotated_{structure}" / f"s{i}", shape, structure,
                                 seed=i, picture=False)
    report = ingest_store(work / "download", store, progress=False)
    assert report.ok, report.failed
    return store


def preset_plans(preset: str, work: Path) -> Path:
    """A plans file holding only what building and sampling need, for a SELMA preset."""
    from nnunetv2_selma.normalization import NORMALIZATION_SCHEME
    from nnunetv2_selma.training.planner import get_preset

    p = get_preset(preset)
    plans = {"dataset_name": "bench", "plans_name": f"nnUNetSelmaPlans_{preset}",
             "configurations": {"3d_fullres": {
                 "data_identifier": "bench", "preprocessor_name": "DefaultPreprocessor", "batch_size": p.batch_size,
                 "patch_size": list(p.patch_size), "spacing": [1.0, 1.0, 1.0],
                 "normalization_schemes": [NORMALIZATION_SCHEME], "use_mask_for_norm": [False],
                 "architecture": p.architecture()}}}
    path = work / f"plans_{preset}.json"
    path.write_text(json.dumps(plans, indent=2))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    parser.add_argument("--store", default=None)
    parser.add_argument("--work", default="/tmp/bench_pretrain")
    parser.add_argument("--data-only", action="store_true",
                        help="skip the network (e.g. preset L on a CPU machine): data pipeline rows only")
    args = parser.parse_args()

    from nnunetv2_selma.pretraining.benchmark import measure_data_pipeline, measure_network

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    store = Path(args.store) if args.store else make_store(work, tuple(args.shape))
    print(f"store {store} ready in {time.perf_counter() - t0:.1f} s; cpus: {os.cpu_count()}")
    plans = preset_plans(args.preset, work)

    if args.data_only:
        from nnunetv2_selma.training.planner import get_preset

        net = {"patch_size": list(get_preset(args.preset).patch_size), "device": "-", "compiled": "-",
               "network_iterations_per_s": float("nan"), "network_patches_per_s": float("nan"),
               "peak_memory_bytes": float("nan")}
    else:
        net = measure_network(plans, args.batch_size, args.iterations, args.device)
    print(f"\nnetwork: preset {args.preset}, patch {net['patch_size']}, batch {args.batch_size}, "
          f"device {net['device']}, compiled {net['compiled']}")
    print("| what | it/s | patches/s | peak memory (MiB) | ratio to network |")
    print("|---|---|---|---|---|")
    if not args.data_only:
        print(f"| network (fwd+bwd+AdamW) | {net['network_iterations_per_s']:.2f} | "
              f"{net['network_patches_per_s']:.2f} | {net['peak_memory_bytes'] / 2**20:.0f} | 1.00 |")
    for w in args.workers:
        d = measure_data_pipeline(store, tuple(net["patch_size"]), args.batch_size, max(args.iterations, 8), w)
        print(f"| data pipeline, {w} worker(s) | {d['data_batches_per_s']:.2f} | {d['data_patches_per_s']:.2f} | - | "
              f"{d['data_patches_per_s'] / net['network_patches_per_s']:.2f} |")


if __name__ == "__main__":
    main()

"""Throughput of the pretraining data pipeline against what the network consumes.

For a device script (GPU timing)::

    from nnunetv2_selma.pretraining.benchmark import benchmark_pretraining
    print(benchmark_pretraining(store, plans_json, iterations=50, device="cuda"))

or ``python -m nnunetv2_selma.pretraining.benchmark --store S --plans P --iterations 50 --device cuda``.
The data pipeline keeps the GPU busy when ``data_patches_per_s / network_patches_per_s > 1``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunetv2_selma.pretraining.data import PretrainingBatches, default_num_workers, make_loader
from nnunetv2_selma.pretraining.loop import build_pretraining_network, do_compile, plans_patch_size, train_step
from nnunetv2_selma.pretraining.methods import PretrainingMethod, get_method


def measure_data_pipeline(
    store: Any, patch_size: tuple[int, ...], batch_size: int, iterations: int, num_workers: int,
    method: PretrainingMethod | None = None, warmup: int = 2,
) -> dict[str, float]:
    """Batches the background-worker DataLoader delivers per second (after ``warmup`` batches).

    Returns ``{"num_workers", "data_batches_per_s", "data_patches_per_s"}``.
    """
    method = method or get_method("mae")
    loader = iter(make_loader(PretrainingBatches(store, patch_size, batch_size, method, seed=0), num_workers))
    for _ in range(warmup):
        next(loader)
    t0 = time.perf_counter()
    for _ in range(iterations):
        next(loader)
    dt = time.perf_counter() - t0
    del loader
    return {"num_workers": num_workers, "data_batches_per_s": iterations / dt,
            "data_patches_per_s": iterations * batch_size / dt}


def measure_network(
    plans: dict | str | Path, batch_size: int, iterations: int, device: str | torch.device = "cuda",
    configuration: str = "3d_fullres", method: PretrainingMethod | None = None, warmup: int = 3,
) -> dict[str, Any]:
    """Training iterations per second of the pretraining network on one fixed batch (no data wait).

    Same step as :func:`~nnunetv2_selma.pretraining.loop.pretrain`: AdamW, autocast + GradScaler
    and ``torch.compile`` (nnU-Net's rule) on CUDA. Returns iterations/s, patches/s, compile flag and
    peak memory (CUDA: ``max_memory_allocated``; CPU: peak resident set size of the process).
    """
    device = torch.device(device)
    method = method or get_method("mae")
    patch_size = plans_patch_size(plans, configuration)
    network = build_pretraining_network(plans, configuration, method, seed=0).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    scaler = torch.GradScaler("cuda") if device.type == "cuda" else None
    compiled = do_compile(device)
    forward = torch.compile(network) if compiled else network
    images = np.random.default_rng(0).standard_normal((batch_size, 1, *patch_size), dtype=np.float32)
    batch = {k: torch.from_numpy(v).to(device) for k, v in method.make_batch(images, np.random.default_rng(1)).items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        train_step(forward, method, batch, optimizer, scaler, device)
    sync()
    t0 = time.perf_counter()
    for _ in range(iterations):
        loss = train_step(forward, method, batch, optimizer, scaler, device)
    sync()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"device": str(device), "patch_size": list(patch_size), "batch_size": batch_size, "compiled": compiled,
            "network_iterations_per_s": iterations / dt, "network_patches_per_s": iterations * batch_size / dt,
            "peak_memory_bytes": int(peak), "final_loss": float(loss)}


def benchmark_pretraining(
    store: Any, plans: dict | str | Path, iterations: int = 20, batch_size: int = 2,
    device: str | torch.device = "cuda", num_workers: int | None = None, configuration: str = "3d_fullres",
    method: str = "mae",
) -> dict[str, Any]:
    """Data pipeline patches/s vs network patches/s for N iterations (see the module docstring).

    Returns the merged dicts of :func:`measure_network` and :func:`measure_data_pipeline` plus
    ``"data_to_network_ratio"`` (> 1: the GPU never waits for data).
    """
    m = get_method(method)
    workers = default_num_workers() if num_workers is None else num_workers
    net = measure_network(plans, batch_size, iterations, device, configuration, m)
    data = measure_data_pipeline(store, tuple(net["patch_size"]), batch_size, iterations, workers, m)
    return {**net, **data, "data_to_network_ratio": data["data_patches_per_s"] / net["network_patches_per_s"]}


def main(argv: list[str] | None = None) -> int:
    """CLI around :func:`benchmark_pretraining`; prints one JSON object."""
    parser = argparse.ArgumentParser(description="Pretraining throughput: data pipeline vs network")
    parser.add_argument("--store", required=True)
    parser.add_argument("--plans", required=True, help="plans .json")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--method", default="mae")
    args = parser.parse_args(argv)
    result = benchmark_pretraining(args.store, args.plans, args.iterations, args.batch_size, args.device,
                                   args.num_workers, args.configuration, args.method)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

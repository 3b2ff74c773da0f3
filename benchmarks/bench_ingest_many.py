"""Ingest of many small 3D files (the 2026 layout: ~35,000 unannotated 300^3 patches).

Part A: write N generated 64^3 uint16 .mha files under ``unannotated_synthetic/``, then time
(1) a plain loop that reads each file and writes it as .npy (the floor any ingester pays) and
(2) ``ingest_store`` (blosc2 array + tissue mask + statistics + CRC + manifest); report seconds
per file and manifest bytes per entry.
Part B: a store of M entries made from part A's by hard links under new names (a generated
manifest), then the time to open it (``PretrainingStore``) and draw the first and 100 random
32^3 patches.

usage: python benchmarks/bench_ingest_many.py [--n 2000] [--m 35000] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=2000, help="files to ingest (part A)")
    p.add_argument("--m", type=int, default=35000, help="manifest entries (part B)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args()

    from nnunetv2_selma.atomic import write_json_atomic
    from nnunetv2_selma.store.format import MANIFEST_NAME, load_manifest, volume_paths
    from nnunetv2_selma.store.ingest import ingest_store
    from nnunetv2_selma.store.reader import PretrainingStore
    from nnunetv2_selma.volumes.images import read_image, write_image

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_ingest_many_"))
    src = work / "download" / "unannotated_synthetic"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    zz = np.linspace(0, 1, 64)[:, None, None]
    for i in range(args.n):  # tissue-like: a bright half plus noise, so a tissue mask exists
        vol = (200 + 1500 * (zz < 0.5) + rng.normal(0, 40, (64, 64, 64))).clip(0, 65535).astype(np.uint16)
        write_image(src / f"patch_{i:05d}.mha", vol)

    plain = work / "plain"
    plain.mkdir()
    t = time.perf_counter()
    for f in sorted(src.iterdir()):
        arr, _ = read_image(f)
        np.save(plain / (f.stem + ".npy"), arr)
    t_plain = (time.perf_counter() - t) / args.n

    store = work / "store"
    t = time.perf_counter()
    report = ingest_store(work / "download", store, num_processes=1, progress=False)
    t_ingest = (time.perf_counter() - t) / args.n
    assert report.ok and len(report.written) == args.n, report.failed[:3]
    manifest_bytes = (store / MANIFEST_NAME).stat().st_size

    # Part B: M entries by hard links (the files are identical; the manifest and the open are what is timed)
    big = work / "store_big"
    base = load_manifest(store)
    entries = list(base["volumes"].values())
    volumes = {}
    for k in range(args.m):
        e = dict(entries[k % len(entries)])
        e["sample"] = f"p{k:06d}"
        e["name"] = f"{e['structure']}/{e['sample']}/{e['channel']}"
        for a, b in zip(volume_paths(store, entries[k % len(entries)]["name"]), volume_paths(big, e["name"])):
            b.parent.mkdir(parents=True, exist_ok=True)
            os.link(a, b)
            for key, value in e.items():  # the entry's own relative file paths
                if value == a.relative_to(store).as_posix():
                    e[key] = b.relative_to(big).as_posix()
        volumes[e["name"]] = e
    write_json_atomic(big / MANIFEST_NAME, {**base, "volumes": volumes})
    big_bytes = (big / MANIFEST_NAME).stat().st_size

    t = time.perf_counter()
    s = PretrainingStore(big)
    t_open = time.perf_counter() - t
    rng = np.random.default_rng(1)
    t = time.perf_counter()
    s.sample_patch((32, 32, 32), rng)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(100):
        s.sample_patch((32, 32, 32), rng)
    t_100 = time.perf_counter() - t

    result = {"n_files": args.n, "plain_read_write_s_per_file": round(t_plain, 5),
              "ingest_s_per_file": round(t_ingest, 5), "ratio": round(t_ingest / t_plain, 2),
              "manifest_bytes_per_entry": round(manifest_bytes / args.n), "m_entries": args.m,
              "manifest_mb_at_m": round(big_bytes / 2**20, 2), "open_store_s": round(t_open, 3),
              "first_patch_s": round(t_first, 3), "sample_100_patches_s": round(t_100, 3)}
    print(json.dumps(result, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

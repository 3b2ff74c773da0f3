"""How fast the synthetic generator writes: ``write_download`` defaults and a large unannotated volume.

Usage: ``python benchmarks/bench_synthetic.py [--shape Z Y X] [--structure vessel] [--slab 32]``.
The baseline is a 64x128x128 volume of the same structure in the same run; the table gives seconds,
CPU seconds, throughput (Mvoxel/s per channel) and the peak resident memory growth of the large
volume (it should scale with the slab, not with the volume). When ``--shape`` has fewer planes than
``--estimate-z``, the time for ``--estimate-z`` planes is extrapolated linearly (slabs are independent).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from nnunetv2_selma.synthetic.download import write_download, write_unannotated_volume
from nnunetv2_selma.synthetic.volumes import n_channels


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shape", type=int, nargs=3, default=(128, 1024, 1024))
    p.add_argument("--estimate-z", type=int, default=512)
    p.add_argument("--structure", default="vessel")
    p.add_argument("--slab", type=int, default=32)
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_synthetic_"))
    try:
        rows = []
        wall, cpu = _timed(lambda: write_download(tmp / "download"))
        rows.append(("write_download defaults", "-", wall, cpu, float("nan")))
        base_shape = (64, 128, 128)
        wall, cpu = _timed(lambda: write_unannotated_volume(tmp / "base", base_shape, a.structure, slab=a.slab))
        nch = n_channels(a.structure)
        base_rate = nch * 64 * 128 * 128 / wall / 1e6
        rows.append((f"{a.structure} volume (baseline)", "x".join(map(str, base_shape)), wall, cpu, base_rate))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        shape = tuple(a.shape)
        wall, cpu = _timed(lambda: write_unannotated_volume(tmp / "large", shape, a.structure, slab=a.slab))
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        voxels = shape[0] * shape[1] * shape[2]
        rate = nch * voxels / wall / 1e6
        rows.append((f"{a.structure} volume, slab {a.slab}", "x".join(map(str, shape)), wall, cpu, rate))
        if shape[0] < a.estimate_z:
            f = a.estimate_z / shape[0]
            est = (a.estimate_z, *shape[1:])
            rows.append((f"{a.structure} volume (extrapolated)", "x".join(map(str, est)), wall * f, cpu * f, rate))
        print(f"{'what':38s} {'shape zyx':>16s} {'wall s':>9s} {'cpu s':>9s} {'Mvox/s':>8s} {'rate/baseline':>13s}")
        for what, shp, w, c, r in rows:
            ratio = r / base_rate if r == r else float("nan")
            print(f"{what:38s} {shp:>16s} {w:9.2f} {c:9.2f} {r:8.2f} {ratio:13.2f}")
        print(f"peak RSS growth during the large volume: {(rss1 - rss0) / 1024:.0f} MiB "
              f"(one slab of float32 with halo: {4 * (a.slab + 14) * shape[1] * shape[2] / 2**20:.0f} MiB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

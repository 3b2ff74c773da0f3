"""How long the SELMA3D metrics take on one 500x500x50 case (the VessAP patch shape).

Content: a reference of curved random tubes (vessel-like, contiguous) and one of blobs
(cell-like, isolated); the prediction is the reference shifted by a voxel, with some tubes or
blobs dropped and some false ones added, so every metric has real work to do. Prints one table:
seconds per metric, per edition/category total (through ``score_case``, as the command runs it),
and, as a baseline measured in the same run, HD95 via two full-volume Euclidean distance
transforms (scipy) against the k-d tree HD95 used here.

Run: ``.venv/bin/python benchmarks/bench_evaluate.py``
"""

from __future__ import annotations

import time

import numpy as np

from nnunetv2_selma.evaluation import leaderboard as lb
from nnunetv2_selma.evaluation import metrics as m

SHAPE = (50, 500, 500)


def random_tubes(rng: np.random.Generator, n: int, shape=SHAPE) -> np.ndarray:
    """Union of ``n`` curved tubes (random walks with momentum, radius 1.5-3.5 voxels)."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        p = rng.uniform([0, 0, 0], shape)
        d = rng.normal(size=3)
        d[0] *= 0.3  # thin z: tubes run mostly in-plane, like vessels in a 50-slice patch
        d /= np.linalg.norm(d)
        radius = rng.uniform(1.5, 3.5)
        r = int(np.ceil(radius))
        offsets = np.argwhere(np.ones((2 * r + 1,) * 3, bool)) - r
        ball = offsets[(offsets**2).sum(1) <= radius**2]
        for _ in range(400):
            d += rng.normal(scale=0.15, size=3)
            d[0] *= 0.7
            d /= np.linalg.norm(d)
            p = p + d
            if not all(0 <= p[i] < shape[i] for i in range(3)):
                break
            pts = np.round(p).astype(int) + ball
            pts = pts[np.all((pts >= 0) & (pts < shape), axis=1)]
            mask[pts[:, 0], pts[:, 1], pts[:, 2]] = True
    return mask


def random_blobs(rng: np.random.Generator, n: int, shape=SHAPE) -> np.ndarray:
    """``n`` ellipsoidal blobs of radius 2-5 voxels."""
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n):
        c = rng.uniform([0, 0, 0], shape)
        r = rng.uniform(2, 5, size=3)
        lo = np.maximum(np.floor(c - r).astype(int), 0)
        hi = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= inside
    return mask


def timed(fn, *args) -> tuple[tuple[float, float], object]:
    """((wall seconds, CPU seconds of this process), result); CPU time is robust on a shared machine."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return (time.perf_counter() - t0, time.process_time() - c0), out


def hd95_edt_baseline(pred: np.ndarray, ref: np.ndarray) -> float:
    """HD95 with two full-volume distance transforms (the straightforward way)."""
    from scipy.ndimage import distance_transform_edt

    sp, sr = m._surface(pred), m._surface(ref)
    d_to_ref = distance_transform_edt(~sr)[sp]
    d_to_pred = distance_transform_edt(~sp)[sr]
    return float(np.percentile(np.concatenate([d_to_ref, d_to_pred]), 95))


def main() -> None:
    rng = np.random.default_rng(0)
    ref_tubes = random_tubes(rng, 120)
    pred_tubes = np.roll(ref_tubes, 1, axis=2) & ~random_blobs(rng, 60) | random_tubes(rng, 10)
    ref_blobs = random_blobs(rng, 3000)
    pred_blobs = np.roll(ref_blobs, 1, axis=1) & ~random_blobs(rng, 200) | random_blobs(rng, 150)

    small = np.zeros((8, 8, 8), bool)
    small[2:5, 2:5, 2:5] = True
    for metric in (m.betti_numbers, m.skeleton):  # warm-up: imports are not part of a case's cost
        metric(small)
    m.panoptic_quality(small, small)

    rows: list[tuple[str, tuple[float, float], str]] = []
    t, v = timed(m.dice, pred_tubes, ref_tubes)
    rows.append(("dice (tubes)", t, f"{v:.4f}"))
    t, v = timed(m.betti_numbers, ref_tubes)
    rows.append(("betti_numbers, one mask (tubes)", t, str(v)))
    t, v = timed(m.betti_errors, pred_tubes, ref_tubes)
    rows.append(("betti_errors (tubes, both masks)", t, str(v)))
    t, v = timed(m.cldice, pred_tubes, ref_tubes)
    rows.append(("cldice (tubes)", t, f"{v:.4f}"))
    t_kd, v = timed(m.hd95, pred_tubes, ref_tubes)
    rows.append(("hd95 k-d tree (tubes)", t_kd, f"{v:.3f}"))
    t_edt, v_edt = timed(hd95_edt_baseline, pred_tubes, ref_tubes)
    rows.append(("  baseline: hd95 via 2 full EDTs", t_edt, f"{v_edt:.3f} (x{t_edt[1] / t_kd[1]:.1f} the CPU time)"))
    t, v = timed(m.panoptic_quality, pred_blobs, ref_blobs)
    rows.append(("panoptic_quality (3000 blobs)", t, f"{v:.4f}"))
    for edition, name, pred, ref in [
        ("2024", "tree-like", pred_tubes, ref_tubes),
        ("2024", "dot-like", pred_blobs, ref_blobs),
        ("2025", "contiguous", pred_tubes, ref_tubes),
        ("2025", "isolated", pred_blobs, ref_blobs),
        ("2026", "contiguous", pred_tubes, ref_tubes),
        ("2026", "isolated", pred_blobs, ref_blobs),
    ]:
        t, _ = timed(lb.score_case, pred, ref, lb.EDITIONS[edition][name])
        rows.append((f"TOTAL score_case {edition} {name}", t, ",".join(lb.EDITIONS[edition][name].metrics)))

    print(f"SELMA3D metrics on one {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} case (x*y*z), one process; "
          f"tubes {ref_tubes.mean():.2%} foreground, blobs {ref_blobs.mean():.2%}")
    print(f"| {'what':40s} | {'wall s':>7s} | {'CPU s':>7s} | value |")
    print(f"|{'-' * 42}|{'-' * 9}|{'-' * 9}|-------|")
    for name, (wall, cpu), value in rows:
        print(f"| {name:40s} | {wall:7.2f} | {cpu:7.2f} | {value} |")


if __name__ == "__main__":
    main()

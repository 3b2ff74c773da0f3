"""The low-resolution tissue mask and tissue statistics of a volume, gathered slab by slab in one pass.

Owned here, below its two users, so that both compute the same mask: the pretraining store keeps one
beside every volume (``store.ingest``) and whole-volume inference sets labels outside it to 0
(``inference.tissue``). The mask has one voxel per ``factors`` voxels (powers of two >= 8 keeping
every side <= ``MASK_MAX_SIDE``); a block is tissue when its mean reaches Otsu's threshold of 2D
block means on a few evenly spaced planes (read before the first slab's statistics are taken, so
the statistics of a slab can be restricted to tissue while it is in memory). Statistics over tissue
(mean, std, percentiles) come from a regular sub-grid (every 4th voxel per axis).
"""

from __future__ import annotations

import math

import numpy as np

from nnunetv2_selma.volumes.moments import ExactHistogram

#: low-resolution tissue masks are at most this many voxels per axis
MASK_MAX_SIDE = 256
#: the tissue-threshold pre-pass reads this many evenly spaced slices
THRESHOLD_SLICES = 8
#: slab depth the z factor must divide; the pretraining store's default chunk depth
#: (``store.ingest.DEFAULT_CHUNKS[0]``), so a mask computed for inference equals the store's
DEFAULT_CHUNK_Z = 64


def _pow2_at_least(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def mask_factors(shape: tuple[int, int, int], chunk_z: int) -> tuple[int, int, int]:
    """Down-sampling factors (z, y, x) of the tissue mask: powers of two >= 8 keeping every mask
    side <= ``MASK_MAX_SIDE``; the z factor divides ``chunk_z`` so a mask block never straddles slabs."""
    f = [max(8, _pow2_at_least(s / MASK_MAX_SIDE)) for s in shape]
    f[0] = min(f[0], chunk_z)
    return tuple(f)


class TissueStats:
    """Block means (the low-resolution image) and a histogram / sample of tissue voxels on a sub-grid,
    updated slab by slab (:meth:`update`); :meth:`mask` and :meth:`stats` give the results."""

    def __init__(self, shape, dtype, factors, threshold: float) -> None:
        self.shape, self.dtype, self.f = shape, np.dtype(dtype), factors
        # statistics and block means use every 4th voxel per axis (1/64 of the data): enough
        # samples (8+ per mask block, millions per volume) and cheap beside reading + compressing
        self.step = tuple(min(4, f) for f in factors)
        self.threshold = threshold
        self.low_shape = tuple(math.ceil(s / f) for s, f in zip(shape, factors))
        self.low_sum = np.zeros(self.low_shape, np.float64)
        self.low_cnt = np.zeros(self.low_shape, np.int64)
        self.hist = ExactHistogram(self.dtype) if ExactHistogram.handles(self.dtype) else None
        if self.hist is None:  # other dtypes keep the sampled tissue voxels for their percentiles
            self.samples: list[np.ndarray] = []
        self.n_tissue_sub = 0
        self.n_sub = 0

    def _block_sums(self, sub: np.ndarray, z0: int):
        """Sums and counts of ``sub`` (sub-grid of a slab starting at voxel ``z0``) per mask block."""
        fz, fy, fx = (f // s for f, s in zip(self.f, self.step))  # sub-grid points per block side
        nz, ny, nx = sub.shape
        bz0 = z0 // self.f[0]
        pz, py, px = math.ceil(nz / fz) * fz, math.ceil(ny / fy) * fy, math.ceil(nx / fx) * fx
        shape6 = (pz // fz, fz, py // fy, fy, px // fx, fx)
        if (pz, py, px) == (nz, ny, nx):
            sums = sub.reshape(shape6).sum(axis=(1, 3, 5), dtype=np.float64)
            cnts = np.full(sums.shape, fz * fy * fx, np.int64)
        else:
            pad = np.zeros((pz, py, px), np.float64)
            cnt = np.zeros((pz, py, px), np.int32)
            pad[:nz, :ny, :nx] = sub
            cnt[:nz, :ny, :nx] = 1
            sums = pad.reshape(shape6).sum(axis=(1, 3, 5))
            cnts = cnt.reshape(shape6).sum(axis=(1, 3, 5))
        nbz = min(sums.shape[0], self.low_shape[0] - bz0)
        ly, lx = self.low_shape[1], self.low_shape[2]
        return sums[:nbz, :ly, :lx], cnts[:nbz, :ly, :lx], bz0

    def update(self, slab: np.ndarray, z0: int) -> None:
        sz, sy, sx = self.step
        # z0 is a multiple of chunk_z, itself a multiple of the z factor: the sub-grid stays aligned
        sub = np.ascontiguousarray(slab[::sz, ::sy, ::sx])
        sums, cnts, bz0 = self._block_sums(sub, z0)
        self.low_sum[bz0 : bz0 + sums.shape[0]] += sums
        self.low_cnt[bz0 : bz0 + sums.shape[0]] += cnts
        means = sums / np.maximum(cnts, 1)
        tissue_blocks = means >= self.threshold
        fz, fy, fx = (f // s for f, s in zip(self.f, self.step))
        sel = np.repeat(np.repeat(np.repeat(tissue_blocks, fz, 0), fy, 1), fx, 2)
        sel = sel[: sub.shape[0], : sub.shape[1], : sub.shape[2]]
        values = sub[sel]
        self.n_sub += sub.size
        self.n_tissue_sub += values.size
        if self.hist is not None:
            self.hist.update(values)
        else:
            self.samples.append(values.astype(np.float64).ravel())

    def mask(self) -> np.ndarray:
        means = self.low_sum / np.maximum(self.low_cnt, 1)
        return means >= self.threshold

    def stats(self) -> dict:
        qs = {"p00_5": 0.5, "p01": 1.0, "p05": 5.0, "p25": 25.0, "p50": 50.0, "p75": 75.0, "p95": 95.0,
              "p99": 99.0, "p99_5": 99.5}
        out: dict = {"sampled_voxels": int(self.n_tissue_sub),
                     "tissue_fraction": self.n_tissue_sub / max(self.n_sub, 1),
                     "sample_step": list(self.step), "threshold": float(self.threshold)}
        if self.n_tissue_sub == 0:
            out.update({"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, **{k: 0.0 for k in qs}})
            return out
        if self.hist is not None:
            mean, std = self.hist.moments()
            lo, hi = self.hist.min_max()
            out.update({"mean": mean, "std": std, "min": float(lo), "max": float(hi)})
            out.update(dict(zip(qs, self.hist.percentiles(qs.values()))))
        else:
            v = np.concatenate(self.samples)
            out.update({"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())})
            pct = np.percentile(v, list(qs.values()))
            out.update({k: float(p) for k, p in zip(qs, pct)})
        return out


def tissue_threshold(reader, factors) -> float:
    """Otsu threshold of 2D block means on a few evenly spaced slices (the whole volume's tissue
    threshold, known before the statistics of the first slab are taken)."""
    z = reader.shape[0]
    picks = sorted({int(round(i)) for i in np.linspace(0, z - 1, min(THRESHOLD_SLICES, z))})
    _, fy, fx = factors
    means = []
    for k in picks:
        plane = reader.read_planes(k, k + 1)[0]
        if plane.dtype.kind == "f" and np.isnan(plane).any():
            raise ValueError(f"{reader.where(k)}: found NaN voxels; expected finite intensities")
        sy, sx = max(1, fy // 4), max(1, fx // 4)
        sub = plane[::sy, ::sx].astype(np.float64)
        gy, gx = fy // sy, fx // sx
        py, px = math.ceil(sub.shape[0] / gy) * gy, math.ceil(sub.shape[1] / gx) * gx
        pad = np.full((py, px), np.nan)
        pad[: sub.shape[0], : sub.shape[1]] = sub
        means.append(np.nanmean(pad.reshape(py // gy, gy, px // gx, gx), axis=(1, 3)).ravel())
    # a constant image returns its value: everything is "tissue"
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(np.concatenate(means)))


def low_resolution_tissue_mask(reader, chunk_z: int = DEFAULT_CHUNK_Z) -> tuple[np.ndarray, tuple, float]:
    """The tissue mask the pretraining store keeps beside a volume, for a volume ``reader`` from
    :func:`~nnunetv2_selma.volumes.open_volume`: same factors, same Otsu threshold on block means, same sub-grid.

    Reads the volume once, ``factors[0]`` planes at a time. Returns ``(mask, factors, threshold)``:
    boolean ``mask`` of shape ``ceil(shape / factors)``, one value per ``factors`` (z, y, x) voxels.
    ``predict_large --tissue-mask auto`` uses it on its input.
    """
    factors = mask_factors(tuple(reader.shape), chunk_z)
    threshold = tissue_threshold(reader, factors)
    stats = TissueStats(tuple(reader.shape), reader.dtype, factors, threshold)
    for z0 in range(0, reader.shape[0], factors[0]):
        stats.update(reader.read_planes(z0, min(reader.shape[0], z0 + factors[0])), z0)
    return stats.mask(), factors, threshold

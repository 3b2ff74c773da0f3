"""The low-resolution tissue mask and tissue statistics of a volume, gathered slab by slab in one pass.

Owned here, below its two users, so that both compute the same mask: the pretraining store keeps one
beside every volume (``store.ingest``) and whole-volume inference sets labels outside it to 0
(``inference.tissue_mask``). The mask has one voxel per ``factors`` voxels (powers of two >= 8 keeping
every side <= ``MASK_MAX_SIDE``); the tissue threshold comes from 2D block means on a few evenly spaced
planes (read before the first slab's statistics are taken, so the statistics of a slab can be restricted
to tissue while it is in memory). Statistics over tissue (mean, std, percentiles) come from a regular
sub-grid (every 4th voxel per axis).

Why the threshold is not simply Otsu's: Otsu always splits in two, also a volume that is tissue
everywhere (a crop inside the brain), where it calls the dimmer half of the tissue background, or the
tissue itself background beside a few bright objects. A block is outside the sample only when the block
means show a dark mode clearly apart from the tissue (:func:`tissue_threshold`); otherwise every block
is tissue and the mask removes nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from nnunetv2_selma.volumes.moments import ExactHistogram

#: low-resolution tissue masks are at most this many voxels per axis
MASK_MAX_SIDE = 256
#: the tissue-threshold pre-pass reads this many evenly spaced slices
THRESHOLD_SLICES = 8
#: slab depth the z factor must divide; the pretraining store's default chunk depth
#: (``store.ingest.DEFAULT_CHUNKS[0]``), so a mask computed for inference equals the store's
DEFAULT_CHUNK_Z = 64
#: the two classes of block means must be this many pooled within-class standard deviations apart
#: (Otsu's split of one Gaussian mode gives 2.65; the real light-sheet volume 5 to 10)
MIN_SEPARATION = 3.0
#: the dark class's mean may lie at most this fraction of the way from the dark level to the tissue's
#: mean (the real light-sheet volume: 0.03 to 0.08)
MAX_DARKNESS = 0.15
#: at most this fraction of the sampled voxels of tissue-class blocks may lie under the threshold; a
#: class of blocks lifted by a few bright objects (tissue everywhere) has 0.35 to 0.6, real tissue 0.02
MAX_DARK_IN_TISSUE = 0.2
#: the dark level: this percentile of the sampled voxels (the camera offset as the data shows it)
DARK_LEVEL_PERCENTILE = 0.5


@dataclass(frozen=True)
class TissueThreshold:
    """The tissue decision of a volume: ``value`` is the block mean from which a block is tissue, or
    ``None`` when no clear outside was found and every block is tissue; ``reason`` says why, in words.

    The other fields are what the decision was made on (block means of the sampled planes): Otsu's
    threshold, the dark level (``DARK_LEVEL_PERCENTILE`` of the sampled voxels), the means of the dark
    and the tissue class, their ``separation`` (in pooled within-class standard deviations),
    ``darkness`` (where the dark class lies between the dark level, 0, and the tissue, 1) and
    ``dark_in_tissue`` (fraction of the tissue class's voxels under Otsu's threshold); NaN where a class
    is empty.
    """

    value: float | None
    reason: str
    otsu: float
    dark_level: float
    dark_mean: float
    tissue_mean: float
    separation: float
    darkness: float
    dark_in_tissue: float

    @property
    def removes(self) -> bool:
        """Whether some blocks can be outside the sample (a clear dark mode was found)."""
        return self.value is not None

    def info(self) -> dict:
        """The decision as a JSON-ready dict (NaN as ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


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

    def __init__(self, shape, dtype, factors, threshold: TissueThreshold) -> None:
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
        tissue_blocks = self._is_tissue(means)
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

    def _is_tissue(self, means: np.ndarray) -> np.ndarray:
        if self.threshold.value is None:
            return np.ones(means.shape, bool)
        return means >= self.threshold.value

    def mask(self) -> np.ndarray:
        return self._is_tissue(self.low_sum / np.maximum(self.low_cnt, 1))

    def stats(self) -> dict:
        qs = {"p00_5": 0.5, "p01": 1.0, "p05": 5.0, "p25": 25.0, "p50": 50.0, "p75": 75.0, "p95": 95.0,
              "p99": 99.0, "p99_5": 99.5}
        out: dict = {"sampled_voxels": int(self.n_tissue_sub),
                     "tissue_fraction": self.n_tissue_sub / max(self.n_sub, 1),
                     "sample_step": list(self.step), "threshold": self.threshold.value,
                     "tissue_rule": self.threshold.info()}
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


def tissue_threshold(reader, factors) -> TissueThreshold:
    """The tissue decision of a volume from 2D block means on a few evenly spaced planes (known before the
    statistics of the first slab are taken).

    Otsu's threshold splits the block means in two classes; blocks under it are outside the sample only
    when all of these hold, else every block is tissue (``value`` ``None``):

    1. the histogram is bimodal: the class means are ``MIN_SEPARATION`` pooled within-class standard
       deviations apart or more;
    2. the low class is dark: its mean lies within ``MAX_DARKNESS`` of the way from the dark level (a low
       percentile of the voxels: the camera offset) to the tissue class's mean;
    3. the high class is tissue, not blocks lifted by a few bright objects: at most ``MAX_DARK_IN_TISSUE``
       of the voxels of its interior blocks (whose 4 in-plane neighbours are in the class too; all of its
       blocks when none is) are under the threshold.

    Raises ValueError naming the plane when it holds NaN voxels.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    z = reader.shape[0]
    picks = sorted({int(round(i)) for i in np.linspace(0, z - 1, min(THRESHOLD_SLICES, z))})
    _, fy, fx = factors
    blocks, interior = [], []
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
        # one row per block, its sampled voxels (NaN where the block passes the plane's edge)
        blocks.append(pad.reshape(py // gy, gy, px // gx, gx).transpose(0, 2, 1, 3).reshape(py // gy, px // gx, -1))
    means = [np.nanmean(b, axis=2) for b in blocks]
    otsu = float(threshold_otsu(np.concatenate([m.ravel() for m in means])))  # a constant image returns its value
    # tissue-class blocks whose 4 in-plane neighbours are tissue class too: inside the sample, away from its
    # surface, where a block is all tissue, whereas a block lifted by a bright object is mostly not bright
    interior = np.concatenate([ndimage.binary_erosion(m >= otsu, border_value=1).ravel() for m in means])
    blocks = np.concatenate([b.reshape(-1, b.shape[2]) for b in blocks])
    means = np.concatenate([m.ravel() for m in means])
    voxels = blocks[~np.isnan(blocks)]
    low, high = means[means < otsu], means[means >= otsu]
    dark_level = float(np.percentile(voxels, DARK_LEVEL_PERCENTILE))
    nan = float("nan")
    if low.size == 0 or high.size == 0:
        return TissueThreshold(None, "one intensity level: no dark mode; every block is tissue", otsu, dark_level,
                               nan, nan, nan, nan, nan)
    dark_mean, tissue_mean = float(low.mean()), float(high.mean())
    spread = math.sqrt((low.var() + high.var()) / 2)
    separation = (tissue_mean - dark_mean) / spread if spread > 0 else math.inf
    darkness = (dark_mean - dark_level) / max(tissue_mean - dark_level, np.finfo(float).tiny)
    tissue_voxels = blocks[interior] if interior.any() else blocks[means >= otsu]
    tissue_voxels = tissue_voxels[~np.isnan(tissue_voxels)]
    dark_in_tissue = float((tissue_voxels < otsu).mean())
    failed = []
    if not separation >= MIN_SEPARATION:
        failed.append(f"the block means are not bimodal (classes {separation:.2f} standard deviations apart; "
                      f"needs {MIN_SEPARATION:g})")
    if not darkness <= MAX_DARKNESS:
        failed.append(f"the low class (mean {dark_mean:.1f}) is not near the dark level {dark_level:.1f} "
                      f"({darkness:.2f} of the way to the tissue's {tissue_mean:.1f}; needs <= {MAX_DARKNESS:g})")
    if not dark_in_tissue <= MAX_DARK_IN_TISSUE:
        failed.append(f"the high class is not tissue but blocks lifted by bright objects ({dark_in_tissue:.0%} of "
                      f"its voxels under the threshold; needs <= {MAX_DARK_IN_TISSUE:.0%})")
    if failed:
        value, reason = None, "no clear outside, every block is tissue: " + "; ".join(failed)
    else:
        value, reason = otsu, (f"dark outside (block means near {dark_mean:.1f}, dark level {dark_level:.1f}) apart "
                               f"from tissue (near {tissue_mean:.1f}): blocks under {otsu:.1f} are outside")
    return TissueThreshold(value, reason, otsu, dark_level, dark_mean, tissue_mean, float(separation),
                           float(darkness), dark_in_tissue)


def low_resolution_tissue_mask(reader, chunk_z: int = DEFAULT_CHUNK_Z
                               ) -> tuple[np.ndarray, tuple, TissueThreshold]:
    """The tissue mask the pretraining store keeps beside a volume, for a volume ``reader`` from
    :func:`~nnunetv2_selma.volumes.open_volume`: same factors, same threshold on block means, same sub-grid.

    Reads the volume once, ``factors[0]`` planes at a time. Returns ``(mask, factors, threshold)``:
    boolean ``mask`` of shape ``ceil(shape / factors)``, one value per ``factors`` (z, y, x) voxels (all
    ``True`` when ``threshold`` found no clear outside, see :func:`tissue_threshold`).
    ``predict_large --tissue-mask auto`` uses it on its input.
    """
    factors = mask_factors(tuple(reader.shape), chunk_z)
    threshold = tissue_threshold(reader, factors)
    stats = TissueStats(tuple(reader.shape), reader.dtype, factors, threshold)
    for z0 in range(0, reader.shape[0], factors[0]):
        stats.update(reader.read_planes(z0, min(reader.shape[0], z0 + factors[0])), z0)
    return stats.mask(), factors, threshold

"""Intensity moments of volumes streamed in pieces (slabs, sub-grids), two ways.

:class:`ExactHistogram` counts integer images of at most 16 bits (the light-sheet case): one
``np.bincount`` per piece, exact integer sums, so the mean and std are exact to float64 rounding
and percentiles need no sample. The pretraining store's tissue statistics use it.

:class:`NumpyFloat32Sum` gives instead the float32 sum numpy would give for the whole array, rounding
included: whole-volume inference must reproduce nnU-Net's float32 mean and std to the bit, not the
exact value (``inference.volume_statistics.gather_volume_statistics``).
"""

from __future__ import annotations

import math

import numpy as np


class ExactHistogram:
    """Exact intensity histogram of a <= 16-bit integer image, filled piece by piece.

    Bins are the voxels' bit patterns (``values.view(uint)``): bin ``i`` counts the value whose
    unsigned bit pattern is ``i`` (two's complement for signed types), so counting needs no
    conversion. Bin 0 counts the zeros, so zeros outside a region of interest can be removed
    afterwards without a second pass (see :meth:`moments`).
    """

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        if not self.handles(self.dtype):
            raise ValueError(f"ExactHistogram: found dtype {self.dtype}; expected an integer type of at most 16 bits")
        self.bins = 1 << (8 * self.dtype.itemsize)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self._unsigned = np.dtype(f"u{self.dtype.itemsize}")

    @staticmethod
    def handles(dtype: np.dtype) -> bool:
        """Whether ``dtype`` can be counted exactly (integer, at most 16 bits)."""
        return np.dtype(dtype).kind in "ui" and np.dtype(dtype).itemsize <= 2

    def update(self, values: np.ndarray) -> np.ndarray:
        """Add the voxels of ``values`` (any shape, this histogram's dtype); returns their own counts
        (bin 0 = number of zeros)."""
        flat = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1).view(self._unsigned)
        counts = np.bincount(flat, minlength=self.bins)
        self.counts += counts
        return counts

    @property
    def total(self) -> int:
        """Number of voxels counted."""
        return int(self.counts.sum())

    def ordered(self, zeros_to_remove: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(values, counts)`` in increasing value order (int64), with ``zeros_to_remove`` taken off the zeros."""
        counts = self.counts.copy()
        counts[0] -= zeros_to_remove
        if self.dtype.kind == "i":  # two's complement: the negative half of the bins comes first in value order
            half = self.bins // 2
            return np.arange(-half, half, dtype=np.int64), np.concatenate([counts[half:], counts[:half]])
        return np.arange(self.bins, dtype=np.int64), counts

    def moments(self, zeros_to_remove: int = 0) -> tuple[float, float]:
        """Mean and population std (``numpy.std`` with ``ddof=0``) of the voxels counted, less
        ``zeros_to_remove`` zeros; ``(0.0, 0.0)`` when none is left."""
        values, counts = self.ordered(zeros_to_remove)
        used = np.flatnonzero(counts)
        c = [int(i) for i in counts[used]]
        v = [int(i) for i in values[used]]
        n = sum(c)
        if n == 0:
            return 0.0, 0.0
        s1 = sum(ci * vi for ci, vi in zip(c, v))
        s2 = sum(ci * vi * vi for ci, vi in zip(c, v))
        return s1 / n, math.sqrt((n * s2 - s1 * s1) / (n * n))  # exact integers until the last division

    def min_max(self) -> tuple[int, int]:
        """Smallest and largest value counted (ValueError when the histogram is empty)."""
        values, counts = self.ordered()
        used = np.flatnonzero(counts)
        if not used.size:
            raise ValueError("ExactHistogram.min_max: no voxel counted")
        return int(values[used[0]]), int(values[used[-1]])

    def percentiles(self, qs) -> list[float]:
        """Lower percentiles (numpy's ``method="inverted_cdf"``): for each ``q`` in percent, the smallest
        value whose cumulative count reaches ``q / 100`` of the voxels."""
        values, counts = self.ordered()
        cdf = np.cumsum(counts)
        n = cdf[-1]
        return [float(values[np.searchsorted(cdf, q / 100.0 * n)]) for q in qs]


class NumpyFloat32Sum:
    """The float32 sum numpy's ``add.reduce`` gives for a whole float32 array, fed in C-order pieces.

    numpy reduces a whole array in buffers of ``np.getbufsize()`` (8192) elements taken in C order
    (contiguous arrays and cropped views alike), sums each buffer pairwise and adds the buffer sums
    one after the other in float32. Fed the same values in the same order, this gives the same bits,
    so ``ZScoreNormalization``'s float32 mean and std of a volume nnU-Net would hold whole are
    reproduced without holding it (an exact mean, rounded once to float32, is often 1-2 ULP away).
    """

    def __init__(self) -> None:
        self.total = np.float32(0)
        self.count = 0
        self._rest = np.empty(0, dtype=np.float32)

    def update(self, values: np.ndarray) -> None:
        """Add the next float32 values (any shape, taken in C order)."""
        flat = values.reshape(-1)
        if self._rest.size:
            flat = np.concatenate([self._rest, flat])
        buffer = np.getbufsize()
        full = flat.size - flat.size % buffer
        if full:
            sums = np.add.reduce(flat[:full].reshape(-1, buffer), axis=1)  # each buffer pairwise
            self.total = np.cumsum(np.concatenate([[self.total], sums]), dtype=np.float32)[-1]  # one by one
        self._rest = flat[full:].copy()
        self.count += values.size

    def mean(self) -> np.float32:
        """``sum / count`` as ``ndarray.mean`` rounds it (float64 division, then float32)."""
        total = self.total + np.add.reduce(self._rest) if self._rest.size else self.total
        return np.float32(np.float64(total) / self.count) if self.count else np.float32(0)

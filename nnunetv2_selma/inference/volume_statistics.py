"""Intensity statistics and non-zero bounding box of a whole volume, streamed, with nnU-Net's float32
arithmetic, so that whole-volume inference normalises exactly as ``nnUNetPredictor`` would if it could
hold the volume (see :mod:`nnunetv2_selma.normalization`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nnunetv2_selma.inference.blocks import row_regions
from nnunetv2_selma.volumes import NumpyFloat32Sum, VolumeSource


def _refuse_non_finite(source: VolumeSource, values: np.ndarray, region: tuple[slice, slice, slice]) -> None:
    """Raise ValueError naming the slice file (or the volume and plane) of the first NaN/inf voxel."""
    z = region[0].start + int(np.flatnonzero(~np.isfinite(values).all(axis=(1, 2)))[0])
    raise ValueError(f"{source.where(z)}: found NaN or infinite voxels; expected finite intensities (nnU-Net's "
                     f"normalisation and the network cannot use them). Fix or re-export that plane.")


def gather_volume_statistics(sources: Sequence[VolumeSource], intensity_stats: Sequence[Sequence[float]] | None = None,
                             max_voxels: int = 2**24, progress: bool = True) -> dict:
    """Intensity statistics and non-zero bounding box of a volume, streamed region by region.

    The statistics are those ``ZScoreNormalization`` (no mask) computes on the cropped case, to the
    bit: float32 mean and population std per channel over the non-zero bounding box, summed in the
    order numpy sums the array nnU-Net holds (:class:`NumpyFloat32Sum`). Reads: one pass finds the
    box and sums the whole volume (that sum is the mean when the box is the whole volume), a pass over
    the box sums the squared deviations from the float32 mean as ``ndarray.std`` does; a volume with
    zero borders needs one more pass for the mean of the box alone.

    Parameters
    ----------
    sources : one lazy volume per channel, same shape.
    intensity_stats : optional ``[(mean, std)]`` per channel to use instead of measuring them (e.g.
        from the pretraining store's manifest); the box is still measured.
    max_voxels : voxels read at a time per channel (bounds memory).

    Returns
    -------
    dict with ``mean`` and ``std`` (lists, one per channel), ``bbox`` (``[[lo, hi]] * 3``, original
    frame; ``None`` when every voxel is 0) and ``source`` (``"measured"`` or ``"given"``).
    """
    from tqdm import tqdm

    if intensity_stats is not None and len(intensity_stats) != len(sources):
        raise ValueError(f"intensity_stats holds {len(intensity_stats)} (mean, std) pairs; expected one per "
                         f"input channel ({len(sources)})")
    shape = sources[0].shape
    lo, hi = [None] * 3, [None] * 3
    measure = intensity_stats is None
    sums = [NumpyFloat32Sum() if measure else None for _ in sources]
    regions = list(row_regions(shape, max_voxels))
    for region in tqdm(regions, desc="statistics", disable=not progress, leave=False):
        arrays = [s.read(region) for s in sources]
        for s, a in zip(sources, arrays):
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                _refuse_non_finite(s, a, region)
        for a, total in zip(arrays, sums):
            if total is not None:
                total.update(a.astype(np.float32))  # nnU-Net casts the case to float32 first
        for axis, e in enumerate(_nonzero_extents(arrays, region)):
            if e is not None:
                lo[axis] = e[0] if lo[axis] is None else min(lo[axis], e[0])
                hi[axis] = e[1] if hi[axis] is None else max(hi[axis], e[1])
    bbox = None if lo[0] is None else [[lo[i], hi[i]] for i in range(3)]
    if not measure:
        return {"mean": [float(m) for m, _ in intensity_stats], "std": [float(s) for _, s in intensity_stats],
                "bbox": bbox, "source": "given"}
    if bbox is None:  # all zero: nothing to normalise, nothing predicted
        return {"mean": [0.0] * len(sources), "std": [0.0] * len(sources), "bbox": None, "source": "measured"}
    box_regions = [tuple(slice(r.start + a, r.stop + a) for r, (a, _) in zip(region, bbox))
                   for region in row_regions([b - a for a, b in bbox], max_voxels)]  # C order of the box
    cropped = math.prod(b - a for a, b in bbox) < math.prod(shape)
    moments = [_box_mean_std(s, None if cropped else total, box_regions, progress) for s, total in zip(sources, sums)]
    return {"mean": [m for m, _ in moments], "std": [s for _, s in moments], "bbox": bbox, "source": "measured"}


def _nonzero_extents(arrays: Sequence[np.ndarray], region: tuple[slice, ...]) -> list[tuple[int, int] | None]:
    """Per axis, the extent (original frame) of the voxels non-zero in any channel of a region; None if none."""
    if all(a.all() for a in arrays):  # every voxel non-zero: the region extends the box by its own extent
        return [(r.start, r.stop) for r in region]
    nonzero = arrays[0] != 0
    for a in arrays[1:]:
        nonzero |= a != 0
    extents = []
    for axis in range(3):
        other = tuple(i for i in range(3) if i != axis)
        idx = np.flatnonzero(nonzero.any(axis=other))
        extents.append(None if not idx.size else
                       (int(idx[0]) + region[axis].start, int(idx[-1]) + 1 + region[axis].start))
    return extents


def _box_mean_std(source: VolumeSource, total: NumpyFloat32Sum | None, box_regions: list[tuple[slice, ...]],
                  progress: bool) -> tuple[float, float]:
    """Float32 mean and population std of one channel over the box, in nnU-Net's summation order. ``total`` is
    the whole volume's sum when the box is the whole volume, else None (the box's own sum is read)."""
    from tqdm import tqdm

    if total is None:
        # nnU-Net crops to the non-zero box before normalising: the zeros outside it do not count
        total = NumpyFloat32Sum()
        for region in tqdm(box_regions, desc="statistics (mean)", disable=not progress, leave=False):
            total.update(source.read(region).astype(np.float32))
    mean = total.mean()
    squares = NumpyFloat32Sum()
    for region in tqdm(box_regions, desc="statistics (std)", disable=not progress, leave=False):
        deviation = source.read(region).astype(np.float32)
        deviation -= mean
        deviation *= deviation
        squares.update(deviation)
    return float(mean), float(np.sqrt(squares.mean()))  # float32 square root, as ndarray.std


__all__ = ["gather_volume_statistics"]

"""Tissue masks for whole-volume inference: labels outside the sample are set to 0.

A network fine-tuned on patches inside the tissue never saw the outside of the sample (mounting
medium, chamber walls, bright dust, reflections), and predicts false positives there. ``auto``
computes the tissue mask exactly as ingest does for the pretraining store
(:func:`~nnunetv2_selma.volumes.tissue.low_resolution_tissue_mask`: Otsu's threshold on
block means, one mask voxel per ``factors`` voxels, factors powers of two >= 8 keeping every mask
side <= 256), as the union over the input channels, then dilates it by ``TISSUE_MARGIN_BLOCKS``
mask voxel (26-connected), i.e. by ``factors`` voxels per axis (>= 8).

Why a margin of one mask voxel: a mask voxel is tissue when its block's mean reaches the
threshold; at the surface of the sample a block only partly filled with tissue can fall under it,
and that is where surface structures (pial vessels, the outer cortex) lie. One mask voxel of
dilation brings back every block touching a tissue block, and no more: the false positives
removed are those at least one block away from tissue. A given mask (``PATH``) is used as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_selma.volumes import VolumeSource, open_volume

#: dilation of the automatic tissue mask, in mask voxels (each ``factors`` voxels per axis, >= 8)
TISSUE_MARGIN_BLOCKS = 1


class TissueMask:
    """Where labels are kept, for any region of a volume of ``shape``.

    Either a small boolean ``low`` mask mapped onto the volume per axis (``index[axis][i]`` is the mask
    voxel of volume index ``i``), or a full-resolution mask volume read region by region.
    """

    def __init__(self, shape: Sequence[int], low: np.ndarray | None = None,
                 index: Sequence[np.ndarray] | None = None, source: VolumeSource | None = None,
                 info: dict | None = None) -> None:
        self.shape, self.low, self.index, self.source = tuple(shape), low, index, source
        self.info = info or {}

    def region(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        """Boolean tissue mask of ``region`` (slices with explicit start/stop)."""
        if self.source is not None:
            return self.source.read(region) != 0
        return self.low[np.ix_(*[ix[r] for ix, r in zip(self.index, region)])]

    @property
    def fraction(self) -> float:
        """Fraction of the volume kept (exact for a low-resolution mask; not measured for a full one)."""
        if self.low is None:
            return float("nan")
        weights = [np.bincount(ix, minlength=n) for ix, n in zip(self.index, self.low.shape)]
        kept = np.einsum("zyx,z,y,x->", self.low.astype(np.float64), *weights)
        return float(kept / np.prod(self.shape))


def auto_tissue_mask(sources: Sequence[VolumeSource], margin_blocks: int = TISSUE_MARGIN_BLOCKS) -> TissueMask:
    """Ingest's low-resolution tissue mask of each channel, united, dilated by ``margin_blocks`` mask voxels."""
    from scipy import ndimage

    from nnunetv2_selma.volumes.tissue import low_resolution_tissue_mask

    low, factors, thresholds = None, None, []
    for source in sources:
        mask, factors, threshold = low_resolution_tissue_mask(source)
        low = mask if low is None else low | mask
        thresholds.append(threshold)
    if margin_blocks > 0 and low.any():
        low = ndimage.binary_dilation(low, ndimage.generate_binary_structure(3, 3), iterations=margin_blocks)
    shape = tuple(sources[0].shape)
    index = [np.minimum(np.arange(s) // f, n - 1) for s, f, n in zip(shape, factors, low.shape)]
    info = {"mode": "auto", "factors": list(factors), "thresholds": thresholds, "margin_blocks": margin_blocks,
            "margin_voxels": [int(f) * margin_blocks for f in factors]}
    mask = TissueMask(shape, low=low, index=index, info=info)
    mask.info["fraction"] = mask.fraction
    return mask


def open_tissue_mask(path: str | Path, shape: Sequence[int]) -> TissueMask:
    """A tissue mask volume (non-zero = tissue) for a volume of ``shape``: the same shape (read region by
    region), or smaller on every axis (a low-resolution mask, loaded whole and scaled by nearest neighbour).

    Raises ValueError naming the file when the mask is larger than the volume on some axis.
    """
    path = Path(path)
    source = open_volume(path)
    shape = tuple(int(s) for s in shape)
    info = {"mode": "path", "path": str(path.resolve()), "shape": list(source.shape)}
    if tuple(source.shape) == shape:
        return TissueMask(shape, source=source, info=info)
    if any(m > s for m, s in zip(source.shape, shape)):
        raise ValueError(f"{path}: tissue mask of shape {tuple(source.shape)}; expected the input's shape {shape} "
                         f"or a smaller (low-resolution) one on every axis")
    low = source.read(tuple(slice(0, m) for m in source.shape)) != 0
    index = [(np.arange(s) * m) // s for s, m in zip(shape, source.shape)]
    mask = TissueMask(shape, low=low, index=index, info=info)
    mask.info["fraction"] = mask.fraction
    return mask

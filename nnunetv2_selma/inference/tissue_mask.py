"""Tissue masks for whole-volume inference: labels outside the sample are set to 0.

A network fine-tuned on patches inside the tissue never saw the outside of the sample (mounting
medium, chamber walls, bright dust, reflections), and predicts false positives there. ``auto``
computes the tissue mask exactly as ingest does for the pretraining store
(:func:`~nnunetv2_selma.volumes.tissue.low_resolution_tissue_mask`: a threshold on block means, one
mask voxel per ``factors`` voxels, factors powers of two >= 8 keeping every mask side <= 256), as the
union over the input channels, then dilates it by ``TISSUE_MARGIN_BLOCKS`` mask voxel (26-connected),
i.e. by ``factors`` voxels per axis (>= 8).

``auto`` only removes what is clearly outside the sample: a dark mode of block means near the dark
level, well apart from the tissue (:func:`~nnunetv2_selma.volumes.tissue.tissue_threshold`). A volume
without one (a crop inside the brain, tissue everywhere) keeps every label, and the record and the log
say why. Where it removes something, objects are kept whole: a connected component of the labels
(26-connected, any label > 0) with a voxel in the mask is kept entirely, also its part outside; one
without is removed (:func:`keep_whole_objects`). So a predicted object is never cut in half.

Why a margin of one mask voxel: a mask voxel is tissue when its block's mean reaches the
threshold; at the surface of the sample a block only partly filled with tissue can fall under it,
and that is where surface structures (pial vessels, the outer cortex) lie. One mask voxel of
dilation brings back every block touching a tissue block, and no more: the false positives
removed are those at least one block away from tissue. A given mask (``PATH``) is used as is, voxel by
voxel (objects are cut at its edge: it says exactly where labels are wanted).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nnunetv2_selma.inference.objects import (
    CONNECTIVITY_RANK,
    DEFAULT_OBJECT_BLOCK,
    ObjectJob,
    measure_block,
    merge_block_tables,
    plan_object_blocks,
)
from nnunetv2_selma.volumes import VolumeSource, create_mask_writer, open_volume
from nnunetv2_selma.volumes.tissue import low_resolution_tissue_mask
from nnunetv2_selma.volumes.writers import write_blocks

logger = logging.getLogger(__name__)

#: dilation of the automatic tissue mask, in mask voxels (each ``factors`` voxels per axis, >= 8)
TISSUE_MARGIN_BLOCKS = 1
#: objects of the labels: this many neighbours per voxel (objects' default)
OBJECT_CONNECTIVITY = 26
#: how ``auto`` treats objects at the mask's edge, in the record
WHOLE_OBJECTS = ("kept whole: a connected component of the labels (26-connected, any label > 0) with a voxel "
                 "in the mask is kept entirely, also outside it; one without is removed")


class TissueMask:
    """Where labels are kept, for any region of a volume of ``shape``.

    Either a small boolean ``low`` mask mapped onto the volume per axis (``index[axis][i]`` is the mask
    voxel of volume index ``i``), or a full-resolution mask volume read region by region.
    """

    def __init__(self, shape: Sequence[int], low: np.ndarray | None = None,
                 index: Sequence[np.ndarray] | None = None, source: VolumeSource | None = None,
                 info: dict | None = None, whole_objects: bool = False) -> None:
        self.shape, self.low, self.index, self.source = tuple(shape), low, index, source
        self.info = info or {}
        #: keep every object touching the mask whole (``auto``) instead of cutting labels at its edge
        self.whole_objects = whole_objects

    @property
    def keeps_everything(self) -> bool:
        """Whether the mask is tissue everywhere (then it changes no label)."""
        return self.source is None and bool(self.low.all())

    def region(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        """Boolean tissue mask of ``region`` (slices with explicit start/stop)."""
        if self.source is not None:
            return self.source.read(region) != 0
        return self.low[np.ix_(*[ix[r] for ix, r in zip(self.index, region)])]

    @property
    def fraction(self) -> float:
        """Fraction of the volume in the mask (a full-resolution mask: counted when it was opened)."""
        if self.low is None:
            return float(self.info.get("fraction", float("nan")))
        weights = [np.bincount(ix, minlength=n) for ix, n in zip(self.index, self.low.shape)]
        kept = np.einsum("zyx,z,y,x->", self.low.astype(np.float64), *weights)
        return float(kept / np.prod(self.shape))


def auto_tissue_mask(sources: Sequence[VolumeSource], margin_blocks: int = TISSUE_MARGIN_BLOCKS) -> TissueMask:
    """Ingest's low-resolution tissue mask of each channel, united, dilated by ``margin_blocks`` mask voxels.

    Tissue everywhere (every voxel kept) when no channel has a clear dark outside; ``info["rule"]`` says,
    per channel, what was decided and why (:meth:`~nnunetv2_selma.volumes.tissue.TissueThreshold.info`).
    """
    from scipy import ndimage

    low, factors, thresholds = None, None, []
    for source in sources:
        mask, factors, threshold = low_resolution_tissue_mask(source)
        low = mask if low is None else low | mask
        thresholds.append(threshold)
    if margin_blocks > 0 and low.any():
        low = ndimage.binary_dilation(low, ndimage.generate_binary_structure(3, 3), iterations=margin_blocks)
    shape = tuple(sources[0].shape)
    index = [np.minimum(np.arange(s) // f, n - 1) for s, f, n in zip(shape, factors, low.shape)]
    info = {"mode": "auto", "factors": list(factors), "thresholds": [t.value for t in thresholds],
            "margin_blocks": margin_blocks, "margin_voxels": [int(f) * margin_blocks for f in factors],
            "rule": [t.info() for t in thresholds]}
    mask = TissueMask(shape, low=low, index=index, info=info, whole_objects=True)
    mask.info["fraction"] = mask.fraction
    if mask.keeps_everything:
        mask.info["outcome"] = "kept everything: " + " | ".join(t.reason for t in thresholds)
    else:
        mask.info["outcome"] = f"removed what lies outside the sample; objects {WHOLE_OBJECTS}"
        mask.info["object_rule"] = WHOLE_OBJECTS
    return mask


def open_tissue_mask(path: str | Path, shape: Sequence[int]) -> TissueMask:
    """A tissue mask volume (non-zero = tissue) for a volume of ``shape``: the same shape (read region by
    region), or smaller by a whole factor on every axis (a low-resolution mask, loaded whole, each voxel
    standing for ``shape // mask shape`` voxels).

    The mask is read once to check it and measure ``info["fraction"]``; an all-zero mask is accepted
    (every label becomes 0) with a warning in the log and in ``info["warning"]``.

    Raises
    ------
    ValueError naming the file: no such file (the message names the accepted words ``auto``, ``none``),
    any other shape, NaN voxels.
    """
    path = Path(path)
    shape = tuple(int(s) for s in shape)
    if not path.exists():
        raise ValueError(f"--tissue-mask {path}: not auto, not none, and no such file or folder; expected auto, "
                         f"none or the path of a mask volume (non-zero = tissue) of the input's shape {shape}")
    source = open_volume(path)
    found = tuple(int(m) for m in source.shape)
    info = {"mode": "path", "path": str(path.resolve()), "shape": list(found)}
    if found != shape and (len(found) != len(shape)
                           or any(m < 1 or m > s or s % m for m, s in zip(found, shape))):
        example = tuple(s // 2 if s % 2 == 0 else s for s in shape)
        raise ValueError(f"{path}: tissue mask of shape {found}; expected the input's shape {shape} or a "
                         f"low-resolution one that divides it by a whole number on every axis (e.g. {example}). "
                         f"Resample the mask to one of these shapes.")
    kept = 0
    for z0 in range(0, found[0], 16):  # slab by slab: a full-resolution mask can be as large as the input
        slab = source.read_planes(z0, min(found[0], z0 + 16))
        if slab.dtype.kind == "f" and np.isnan(slab).any():
            z = z0 + int(np.flatnonzero(np.isnan(slab).reshape(slab.shape[0], -1).any(axis=1))[0])
            raise ValueError(f"{source.where(z)}: tissue mask with NaN voxels; expected 0 (outside) or non-zero "
                             f"(tissue) everywhere. Replace the NaN voxels.")
        kept += int(np.count_nonzero(slab))
    info["fraction"] = kept / float(np.prod(found))
    if found == shape:
        mask = TissueMask(shape, source=source, info=info)
    else:
        low = source.read(tuple(slice(0, m) for m in found)) != 0
        index = [np.arange(s) // (s // m) for s, m in zip(shape, found)]
        info["factors"] = [s // m for s, m in zip(shape, found)]
        mask = TissueMask(shape, low=low, index=index, info=info)
    if kept == 0:
        info["warning"] = f"{path}: the tissue mask is 0 everywhere: every label of the output is 0"
        logger.warning("%s", info["warning"])
    return mask


def keep_whole_objects(labels: str | Path, tissue: TissueMask, work_dir: str | Path,
                       connectivity: int = OBJECT_CONNECTIVITY, progress: bool = False
                       ) -> tuple[list, Callable[[object], np.ndarray], dict]:
    """Which objects of a label volume the ``tissue`` mask keeps, whole: a connected component of
    ``labels > 0`` with a voxel in the mask is kept entirely, one without is removed.

    Uses the objects machinery (:mod:`~nnunetv2_selma.inference.objects`: block tables, seam merge), so the
    memory is a block, not the volume; writes the mask at full resolution and the tables into ``work_dir``.

    Returns
    -------
    ``(placed, load, counts)`` for :func:`~nnunetv2_selma.volumes.writers.write_blocks`: each block's region
    and key, ``load(key)`` the block's labels with removed objects set to 0, and ``counts`` (``objects``,
    ``objects_removed``, ``voxels_removed``, ``objects_kept_across_edge``, ``voxels_kept_outside``).
    """
    from scipy import ndimage

    work_dir = Path(work_dir)
    source = open_volume(labels)
    blocks = plan_object_blocks(tissue.shape, DEFAULT_OBJECT_BLOCK)
    tissue_file = work_dir / "tissue.b2nd"  # the mask as the objects' one "image": its maximum says "touches"
    with create_mask_writer(tissue_file, work_dir / "tissue.tmp.b2nd", tissue.shape, source.geometry) as writer:
        write_blocks(writer, [(b.slices, b.slices) for b in blocks], lambda r: tissue.region(r).astype(np.uint8))
    # a fresh key: readers cached by path in this process must not be those of an earlier run
    job = ObjectJob(str(labels), (str(tissue_file),), tissue.shape, connectivity, str(work_dir), uuid.uuid4().hex)
    job.blocks_dir.mkdir(parents=True, exist_ok=True)
    for block in blocks:
        measure_block(job, block)
    merged = merge_block_tables(job, blocks)
    count, inside = merged["count"], merged["intensity_mean"][:, 0] * merged["count"]
    touches = merged["intensity_max"][:, 0] > 0
    keep_node = np.r_[False, touches][merged["node_ids"]]
    offsets = merged["offsets"]
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])
    counts = {"objects": int(count.size), "objects_removed": int((~touches).sum()),
              "voxels_removed": int(count[~touches].sum()),
              "objects_kept_across_edge": int((touches & (inside < count - 0.5)).sum()),
              "voxels_kept_outside": int(np.rint((count - inside)[touches].sum()))}

    def load(block) -> np.ndarray:
        data = source.read(block.slices)
        components, n = ndimage.label(data != 0, structure=structure)  # as measure_block numbered them
        lut = np.zeros(n + 1, bool)
        lut[1:] = keep_node[offsets[block.index]: offsets[block.index] + n]
        return data * lut[components]

    return [(b.slices, b) for b in blocks], load, counts

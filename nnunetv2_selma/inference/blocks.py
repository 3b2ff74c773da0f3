"""Block geometry of whole-volume inference: nnU-Net's network frame, its tile grid and the blocks.

The network frame is the volume as ``nnUNetPredictor`` holds it: transposed, cropped to the non-zero
bounding box, padded to at least the patch size (:class:`VolumeFrame`). Its tiles are placed where
nnU-Net places them (:func:`compute_tile_starts`). :func:`plan_blocks` cuts the frame into cores and
gives each block the whole-volume tiles that touch its core; :func:`default_block_size` picks the core
that fits a memory budget. Nothing here reads a volume or loads a model.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: bytes a block may use for its region (input, logits, weights, temporaries) when block_size is not given;
#: with the process itself (python, torch, nnU-Net: ~0.5 GB) the peak stays under 3 GB
DEFAULT_BLOCK_MEMORY = 2.0e9


@dataclass(frozen=True)
class Block:
    """One unit of work, in the network frame (transposed, cropped, padded volume).

    ``core``: the voxels this block decides, per axis ``(start, stop)``; cores tile the frame.
    ``region``: what it reads, the union of the whole-volume tiles touching the core.
    ``tile_starts``: per axis, the whole-volume tile starts whose tiles touch the core.
    """

    index: int
    core: tuple[tuple[int, int], ...]
    region: tuple[tuple[int, int], ...]
    tile_starts: tuple[tuple[int, ...], ...]

    @property
    def n_tiles(self) -> int:
        return math.prod(len(s) for s in self.tile_starts)


@dataclass(frozen=True)
class VolumeFrame:
    """Where nnU-Net's network frame sits in the original volume.

    ``shape``: original (z, y, x); ``transpose_forward``: plans' axis order; ``bbox``: non-zero
    bounding box in the original frame ``[(lo, hi)] * 3``; ``pad_below``/``padded_shape``: padding of
    the cropped, transposed volume to at least the patch size (as ``pad_nd_image`` does).
    """

    shape: tuple[int, int, int]
    transpose_forward: tuple[int, int, int]
    bbox: tuple[tuple[int, int], ...]
    patch_size: tuple[int, int, int]
    pad_below: tuple[int, int, int]
    padded_shape: tuple[int, int, int]

    @classmethod
    def create(cls, shape: Sequence[int], transpose_forward: Sequence[int], bbox: Sequence[Sequence[int]],
               patch_size: Sequence[int]) -> VolumeFrame:
        t = tuple(int(i) for i in transpose_forward)
        cropped = [bbox[t[i]][1] - bbox[t[i]][0] for i in range(3)]
        padded = [max(c, int(p)) for c, p in zip(cropped, patch_size)]
        pad_below = [(p - c) // 2 for p, c in zip(padded, cropped)]
        return cls(tuple(int(s) for s in shape), t, tuple((int(a), int(b)) for a, b in bbox),
                   tuple(int(p) for p in patch_size), tuple(pad_below), tuple(padded))

    @property
    def transpose_backward(self) -> tuple[int, int, int]:
        return tuple(int(i) for i in np.argsort(self.transpose_forward))

    def valid(self, box: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
        """Part of a network-frame box that is real volume (not padding), in network coordinates."""
        out = []
        for i, (a, b) in enumerate(box):
            lo = self.pad_below[i]
            hi = lo + self.bbox[self.transpose_forward[i]][1] - self.bbox[self.transpose_forward[i]][0]
            out.append((max(a, lo), min(b, hi)))
        return tuple(out)

    def to_original(self, box: Sequence[tuple[int, int]]) -> tuple[slice, slice, slice]:
        """Original-frame slices of a network-frame box that lies inside the real volume."""
        net = []
        for i, (a, b) in enumerate(box):
            offset = self.bbox[self.transpose_forward[i]][0] - self.pad_below[i]
            net.append(slice(a + offset, b + offset))
        return tuple(net[j] for j in self.transpose_backward)


def compute_tile_starts(padded_shape: Sequence[int], patch_size: Sequence[int],
                        tile_step_size: float) -> list[list[int]]:
    """Tile starts per axis, exactly as ``nnUNetPredictor`` places them for an image of ``padded_shape``."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    return [list(map(int, s)) for s in compute_steps_for_sliding_window(tuple(padded_shape), tuple(patch_size),
                                                                        tile_step_size)]


@dataclass(frozen=True)
class BlockPlan:
    """The blocks of a whole-volume run and what they cost.

    ``redundancy``: tiles computed over all blocks divided by tiles of the whole-volume run (>= 1).
    """

    blocks: tuple[Block, ...]
    block_size: tuple[int, int, int]
    n_tiles_whole: int
    redundancy: float


def plan_blocks(padded_shape: Sequence[int], patch_size: Sequence[int], tile_step_size: float,
                block_size: Sequence[int]) -> BlockPlan:
    """Cut the network frame into cores of ``block_size`` and find the tiles and region of each.

    Parameters
    ----------
    padded_shape : (3,) ints, network frame (after transpose, crop, padding to the patch size).
    patch_size : (3,) ints, the configuration's patch size.
    tile_step_size : float in (0, 1], as ``nnUNetPredictor``.
    block_size : (3,) ints, core edge per axis; clipped to ``padded_shape``.

    Returns
    -------
    BlockPlan whose blocks are in raster order (axis 0 slowest).
    """
    starts = compute_tile_starts(padded_shape, patch_size, tile_step_size)
    block_size = tuple(min(max(1, int(b)), int(s)) for b, s in zip(block_size, padded_shape))
    per_axis = []
    for axis in range(3):
        entries = []
        for c0 in range(0, padded_shape[axis], block_size[axis]):
            c1 = min(c0 + block_size[axis], padded_shape[axis])
            touching = tuple(s for s in starts[axis] if s < c1 and s + patch_size[axis] > c0)
            entries.append(((c0, c1), (min(touching), max(touching) + patch_size[axis]), touching))
        per_axis.append(entries)
    blocks = []
    for index, combo in enumerate(itertools.product(*per_axis)):
        blocks.append(Block(index, tuple(e[0] for e in combo), tuple(e[1] for e in combo),
                            tuple(e[2] for e in combo)))
    n_whole = math.prod(len(s) for s in starts)
    redundancy = sum(b.n_tiles for b in blocks) / n_whole
    return BlockPlan(tuple(blocks), block_size, n_whole, redundancy)


def default_block_size(patch_size: Sequence[int], num_channels: int, num_heads: int,
                       memory_bytes: float = DEFAULT_BLOCK_MEMORY) -> tuple[int, int, int]:
    """Largest core (a multiple of the patch size per axis, same multiple on each axis) whose block fits
    ``memory_bytes``.

    Per region voxel: float32 input (4 per channel), float16 logits (2 per head), float16 weights (2),
    nnU-Net's ``isinf`` check on the logits (1 per head); the uint8 core mask and argmax slabs are small.
    Tiles that straddle cores are computed by both blocks, so larger is faster:
    ``(1 + step / core) ** 3`` tiles per whole-volume tile (1.10 for a 32^3 patch at step 0.5 and 2 GB).
    """
    bytes_per_voxel = 4 * num_channels + 3 * num_heads + 2
    best = tuple(int(p) for p in patch_size)
    for m in range(1, 64):
        core = tuple(m * int(p) for p in patch_size)
        region = math.prod(c + 2 * (int(p) - 1) for c, p in zip(core, patch_size))
        if region * bytes_per_voxel > memory_bytes:
            break
        best = core
    return best


def row_regions(shape: Sequence[int], max_voxels: int):
    """Regions (z slab or rows of one plane, full x) of at most ~max_voxels, in raster order."""
    z, y, x = shape
    plane = y * x
    if plane <= max_voxels:
        depth = max(1, max_voxels // plane)
        for z0 in range(0, z, depth):
            yield (slice(z0, min(z, z0 + depth)), slice(0, y), slice(0, x))
    else:
        rows = max(1, max_voxels // x)
        for z0 in range(z):
            for y0 in range(0, y, rows):
                yield (slice(z0, z0 + 1), slice(y0, min(y, y0 + rows)), slice(0, x))


__all__ = ["DEFAULT_BLOCK_MEMORY", "Block", "BlockPlan", "VolumeFrame", "compute_tile_starts", "default_block_size",
           "plan_blocks", "row_regions"]

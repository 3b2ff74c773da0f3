"""Whole-volume (whole-brain) nnU-Net inference with memory bounded by a block, not the volume.

How the result stays identical to ``nnUNetPredictor`` on the whole volume
-------------------------------------------------------------------------
``nnUNetPredictor`` preprocesses a case (transpose, crop to the non-zero bounding box, z-score with
the case's statistics, pad to at least the patch size), places tiles at
``compute_steps_for_sliding_window(padded_shape, patch_size, tile_step_size)``, and sums the
Gaussian-weighted tile predictions in float16, tile after tile in lexicographic order, before
dividing by the summed weights and taking the argmax.

Here the same frame and the same tile grid are computed from the whole volume's shape, its
non-zero bounding box and its intensity statistics (streamed, summed in numpy's order). The padded frame is cut
into *cores* (``block_size``); a block reads the union of the whole-volume tiles that touch its
core (a halo of up to ``patch_size - 1``) and runs nnU-Net's own
``_internal_predict_sliding_window_return_logits`` on exactly those tiles, in the whole-volume
order. Every core voxel then receives the same tile predictions, added in the same order with the
same float16 rounding, so the mask is bit-identical to the whole-volume run (on CPU; on GPU,
cuDNN algorithm choice may differ between processes). The price: tiles that straddle two cores
are computed by both blocks (``BlockPlan.redundancy`` says how many times each tile is computed
on average); larger blocks make it smaller.

Memory: one block region (float32 input, float16 logits and weights), plus one z plane of the
output while the output is assembled. Finished blocks are stored as small compressed ``.b2nd`` files in
``<output>.partial/`` and recorded in ``progress.json`` (atomic writes): a killed run restarted
with the same arguments skips them. On several GPUs or machines, blocks are tasks of
``dask.distributed``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import math
import os
import pickle
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_selma.io import write_json_atomic
from nnunetv2_selma.normalization import NORMALIZATION_SCHEME, zscore
from nnunetv2_selma.volumes import (
    SUPPORTED_OUTPUTS,
    VolumeSource,
    create_mask_writer,
    open_volume,
    volume_kind,
)

logger = logging.getLogger(__name__)

#: bytes a block may use for its region (input, logits, weights, temporaries) when block_size is not given;
#: with the process itself (python, torch, nnU-Net: ~0.5 GB) the peak stays under 3 GB
DEFAULT_BLOCK_MEMORY = 2.0e9
PROGRESS_FILE = "progress.json"
RECORD_SUFFIX = ".predict_large.json"
PARTIAL_SUFFIX = ".partial"


# ----------------------------------------------------------------------------------------------
# geometry: the whole-volume frame, the tile grid and the blocks
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# statistics: streamed, with nnU-Net's float32 arithmetic
# ----------------------------------------------------------------------------------------------
def _row_regions(shape: Sequence[int], max_voxels: int):
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


class _NumpyFloat32Sum:
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


def _refuse_non_finite(source: VolumeSource, values: np.ndarray, region: tuple[slice, slice, slice]) -> None:
    """Raise ValueError naming the slice file (or the volume and plane) of the first NaN/inf voxel."""
    z = region[0].start + int(np.flatnonzero(~np.isfinite(values).all(axis=(1, 2)))[0])
    where = source.series.files[z] if source.kind == "slices" else f"{source.path} (plane z={z})"
    raise ValueError(f"{where}: found NaN or infinite voxels; expected finite intensities (nnU-Net's "
                     f"normalisation and the network cannot use them). Fix or re-export that plane.")


def gather_volume_statistics(sources: Sequence[VolumeSource], intensity_stats: Sequence[Sequence[float]] | None = None,
                             max_voxels: int = 2**24, progress: bool = True) -> dict:
    """Intensity statistics and non-zero bounding box of a volume, streamed region by region.

    The statistics are those ``ZScoreNormalization`` (no mask) computes on the cropped case, to the
    bit: float32 mean and population std per channel over the non-zero bounding box, summed in the
    order numpy sums the array nnU-Net holds (:class:`_NumpyFloat32Sum`). Reads: one pass finds the
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
    sums = [_NumpyFloat32Sum() if measure else None for _ in sources]
    regions = list(_row_regions(shape, max_voxels))
    for region in tqdm(regions, desc="statistics", disable=not progress, leave=False):
        arrays = [s.read(region) for s in sources]
        for s, a in zip(sources, arrays):
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                _refuse_non_finite(s, a, region)
        for a, total in zip(arrays, sums):
            if total is not None:
                total.update(a.astype(np.float32))  # nnU-Net casts the case to float32 first
        if all(a.all() for a in arrays):  # every voxel non-zero: the region extends the box by its own extent
            extents = [(r.start, r.stop) for r in region]
        else:
            nonzero = arrays[0] != 0
            for a in arrays[1:]:
                nonzero |= a != 0
            extents = []
            for axis in range(3):
                other = tuple(i for i in range(3) if i != axis)
                idx = np.flatnonzero(nonzero.any(axis=other))
                extents.append(None if not idx.size else
                               (int(idx[0]) + region[axis].start, int(idx[-1]) + 1 + region[axis].start))
        for axis, e in enumerate(extents):
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
                   for region in _row_regions([b - a for a, b in bbox], max_voxels)]  # C order of the box
    means, stds = [], []
    for s, total in zip(sources, sums):
        if math.prod(b - a for a, b in bbox) < math.prod(shape):
            # nnU-Net crops to the non-zero box before normalising: the zeros outside it do not count
            total = _NumpyFloat32Sum()
            for region in tqdm(box_regions, desc="statistics (mean)", disable=not progress, leave=False):
                total.update(s.read(region).astype(np.float32))
        mean = total.mean()
        squares = _NumpyFloat32Sum()
        for region in tqdm(box_regions, desc="statistics (std)", disable=not progress, leave=False):
            deviation = s.read(region).astype(np.float32)
            deviation -= mean
            deviation *= deviation
            squares.update(deviation)
        means.append(float(mean))
        stds.append(float(np.sqrt(squares.mean())))  # float32 square root, as ndarray.std
    return {"mean": means, "std": stds, "bbox": bbox, "source": "measured"}


# ----------------------------------------------------------------------------------------------
# the model: nnU-Net's predictor, run on the tiles of one block
# ----------------------------------------------------------------------------------------------
#: what torch.load raises for a truncated, corrupted or foreign file (zip reader, pickle, short read)
_UNREADABLE_CHECKPOINT = (RuntimeError, OSError, EOFError, KeyError, TypeError, pickle.UnpicklingError)


def _unreadable_checkpoint_message(path: Path | str, error: BaseException) -> str:
    reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0]  # torch's first sentence says it all
    return (f"{path}: unreadable nnU-Net checkpoint ({type(error).__name__}: {reason}); the file is "
            f"truncated, corrupted or not a checkpoint of nnUNetv2_train. Copy it again from the training "
            f"machine (compare its size) or pick another one with -chk.")


def read_model_configuration(model_folder: str | Path, folds: Sequence[int | str],
                             checkpoint_name: str = "checkpoint_final.pth"):
    """``(plans_manager, configuration_manager, dataset_json, configuration_name)`` of a model folder,
    with the configuration taken from the first fold's checkpoint as ``nnUNetPredictor`` does."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model_folder = Path(model_folder)
    for name in ("plans.json", "dataset.json"):
        if not (model_folder / name).is_file():
            raise FileNotFoundError(f"{model_folder / name}: missing; expected an nnU-Net model folder "
                                    f"(nnUNet_results/DatasetXXX/Trainer__Plans__Configuration)")
    for fold in folds:
        checkpoint_path = model_folder / f"fold_{fold}" / checkpoint_name
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"{checkpoint_path}: missing; folds {list(folds)} were asked for")
    checkpoint_path = model_folder / f"fold_{folds[0]}" / checkpoint_name
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        configuration_name = checkpoint["init_args"]["configuration"]
    except _UNREADABLE_CHECKPOINT as e:
        raise ValueError(_unreadable_checkpoint_message(checkpoint_path, e)) from e
    plans_manager = PlansManager(json.loads((model_folder / "plans.json").read_text()))
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    return plans_manager, plans_manager.get_configuration(configuration_name), dataset_json, configuration_name


def _check_model_fits_streaming(configuration_manager, num_inputs: int, num_channels: int, spacing_zyx,
                                transpose_forward, model_folder: Path) -> None:
    schemes = list(configuration_manager.normalization_schemes)
    if any(s != NORMALIZATION_SCHEME for s in schemes):
        raise ValueError(f"{model_folder}: normalization_schemes {schemes}; whole-volume inference supports "
                         f"{NORMALIZATION_SCHEME} only (design decision 2)")
    if any(configuration_manager.use_mask_for_norm):
        raise ValueError(f"{model_folder}: use_mask_for_norm is True; whole-volume inference needs statistics "
                         f"over the whole (cropped) volume, expected use_mask_for_norm False")
    if num_inputs != num_channels:
        raise ValueError(f"{model_folder}: the model takes {num_channels} channel(s); {num_inputs} input "
                         f"volume(s) were given (one per channel, in _0000, _0001 order)")
    spacing = [float(spacing_zyx[i]) for i in transpose_forward]
    target = [float(s) for s in configuration_manager.spacing]
    if len(target) != 3 or any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(spacing, target)):
        raise ValueError(f"{model_folder}: the configuration's spacing is {target}, the input's is {spacing}; "
                         f"whole-volume inference does not resample. Use a model planned at the input's spacing "
                         f"(SELMA plans use spacing 1).")


class BlockPredictor:
    """nnU-Net's ``nnUNetPredictor`` loaded once, run on the tiles of one block at a time.

    Parameters
    ----------
    model_folder, folds, checkpoint_name : as ``nnUNetPredictor.initialize_from_trained_model_folder``.
    device : ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    tile_step_size, use_mirroring, use_gaussian : as ``nnUNetPredictor``.
    """

    def __init__(self, model_folder: str | Path, folds: Sequence[int | str] = (0,), device: str = "cpu",
                 tile_step_size: float = 0.5, use_mirroring: bool = False, use_gaussian: bool = True,
                 checkpoint_name: str = "checkpoint_final.pth") -> None:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.device = torch.device(device)
        # nnU-Net prints "perform_everything_on_device=True is only supported for cuda" for any CPU device,
        # even when False is passed: once per process (per dask worker) of noise on stdout
        with contextlib.redirect_stdout(io.StringIO()):
            self.predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=use_gaussian,
                                             use_mirroring=use_mirroring,
                                             perform_everything_on_device=self.device.type == "cuda",
                                             device=self.device, verbose=False, allow_tqdm=False)
        try:
            self.predictor.initialize_from_trained_model_folder(str(model_folder), list(folds), checkpoint_name)
        except _UNREADABLE_CHECKPOINT as e:
            paths = ", ".join(str(Path(model_folder) / f"fold_{f}" / checkpoint_name) for f in folds)
            raise ValueError(_unreadable_checkpoint_message(paths, e)) from e
        self.predictor.network = self.predictor.network.to(self.device)
        self.predictor.network.eval()

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.predictor.configuration_manager.patch_size)

    def predict_logits(self, data: np.ndarray, tile_starts: Sequence[Sequence[int]],
                       region_start: Sequence[int]):
        """Float16 logits ``(heads, *data.shape[1:])`` from the given tiles only.

        ``data``: float32 ``(channels, *region)``, normalised. Voxels no tile covers hold NaN.
        Mirrors ``nnUNetPredictor.predict_logits_from_preprocessed_data`` (fold loop, float16 sum,
        autocast on CUDA, thread count) with the whole-volume tiles instead of the block's own grid.
        """
        import torch
        from nnunetv2.configuration import default_num_processes
        from nnunetv2.utilities.helpers import dummy_context, empty_cache

        p = self.predictor
        patch = self.patch_size
        slicers = [tuple([slice(None), *[slice(s - r, s - r + k) for s, r, k in zip(starts, region_start, patch)]])
                   for starts in itertools.product(*tile_starts)]
        tensor = torch.from_numpy(data)
        n_threads = torch.get_num_threads()
        torch.set_num_threads(min(default_num_processes, n_threads))
        prediction = None
        try:
            with torch.inference_mode():
                autocast = torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" \
                    else dummy_context()
                with autocast:
                    for params in p.list_of_parameters:
                        p.network.load_state_dict(params)
                        if self.device.type == "cuda":
                            try:
                                logits = p._internal_predict_sliding_window_return_logits(tensor, slicers, True)
                            except RuntimeError:
                                empty_cache(self.device)
                                logits = p._internal_predict_sliding_window_return_logits(tensor, slicers, False)
                        else:
                            logits = p._internal_predict_sliding_window_return_logits(tensor, slicers, False)
                        logits = logits.to("cpu")
                        prediction = logits if prediction is None else prediction.add_(logits)
                    if len(p.list_of_parameters) > 1:
                        prediction /= len(p.list_of_parameters)
        finally:
            torch.set_num_threads(n_threads)
        return prediction

    def segment(self, logits_core, max_voxels: int = 2**22) -> np.ndarray:
        """uint8 labels from float16 logits ``(heads, z, y, x)`` exactly as nnU-Net's export does
        (argmax of the float16 numpy array, or the region nonlinearity for region models).

        Done slab by slab along axis 0 (labels are per voxel): argmax returns int64, which for a
        whole core would cost 8 bytes per voxel.
        """
        logits = logits_core.numpy()
        out = np.empty(logits.shape[1:], dtype=np.uint8)
        step = max(1, max_voxels // max(1, math.prod(logits.shape[2:])))
        for z0 in range(0, out.shape[0], step):
            seg = self.predictor.label_manager.convert_logits_to_segmentation(logits[:, z0:z0 + step])
            out[z0:z0 + step] = np.asarray(seg)
        return out


# ----------------------------------------------------------------------------------------------
# one block, end to end (runs in this process or on a dask worker)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to predict and store a block (picklable)."""

    inputs: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    frame: VolumeFrame
    model_folder: str
    folds: tuple
    checkpoint_name: str
    device: str
    tile_step_size: float
    use_mirroring: bool
    blocks_dir: str


_WORKER_CACHE: dict = {}


def _cached(key, factory):
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = factory()
    return _WORKER_CACHE[key]


def block_file(blocks_dir: str | Path, index: int) -> Path:
    return Path(blocks_dir) / f"block_{index:06d}.b2nd"


def save_block(blocks_dir: str | Path, index: int, seg: np.ndarray) -> None:
    """Store a finished block's mask compressed (masks are mostly 0: ~1-5% of 1 byte/voxel on disk),
    written under a temporary name and renamed, so a killed run never leaves a half block."""
    import blosc2

    target = block_file(blocks_dir, index)
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.b2nd")
    chunks = tuple(max(1, min(s, c)) for s, c in zip(seg.shape, (8, 1 << 30, 1 << 30)))
    blosc2.asarray(np.ascontiguousarray(seg), urlpath=str(tmp), mode="w", chunks=chunks)
    os.replace(tmp, target)


def load_block(blocks_dir: str | Path, index: int):
    """A stored block mask, opened lazily (blosc2 NDArray: slicing decompresses only what is asked)."""
    import blosc2

    return blosc2.open(str(block_file(blocks_dir, index)), mode="r")


def read_block_input(job: BlockJob, block: Block, sources: Sequence[VolumeSource]) -> np.ndarray:
    """Normalised float32 ``(channels, *region)`` of a block; padding (outside the crop) is 0 as in nnU-Net."""
    shape = tuple(b - a for a, b in block.region)
    data = np.zeros((len(sources), *shape), dtype=np.float32)
    valid = job.frame.valid(block.region)
    if any(b <= a for a, b in valid):
        return data
    original = job.frame.to_original(valid)
    inner = tuple(slice(a - r, b - r) for (a, b), (r, _) in zip(valid, block.region))
    for c, source in enumerate(sources):
        # normalised in place in the block array: no extra float32 copy of the region
        zscore(source.read(original).transpose(job.frame.transpose_forward), job.mean[c], job.std[c],
               out=data[(c, *inner)])
    return data


def predict_block(job: BlockJob, block: Block, predictor: BlockPredictor,
                  sources: Sequence[VolumeSource]) -> np.ndarray | None:
    """uint8 mask of the block's core restricted to the real volume, in the original frame's axis order
    (``None`` when the core is only padding)."""
    valid = job.frame.valid(block.core)
    if any(b <= a for a, b in valid):
        return None
    data = read_block_input(job, block, sources)
    logits = predictor.predict_logits(data, block.tile_starts, [r for r, _ in block.region])
    core = tuple(slice(a - r, b - r) for (a, b), (r, _) in zip(valid, block.region))
    seg = predictor.segment(logits[(slice(None), *core)])
    return seg.transpose(job.frame.transpose_backward)


def run_block(job: BlockJob, block: Block) -> int:
    """Predict one block and store it atomically in ``job.blocks_dir``; returns the block index.

    The predictor and the input readers are cached per process (one model load per dask worker).
    """
    predictor = _job_predictor(job)
    sources = _cached(("sources", job.inputs), lambda: [open_volume(p) for p in job.inputs])
    seg = predict_block(job, block, predictor, sources)
    save_block(job.blocks_dir, block.index, seg if seg is not None else np.zeros((0, 0, 0), np.uint8))
    return block.index


def _job_predictor(job: BlockJob) -> BlockPredictor:
    """The job's predictor, loaded once per process."""
    device = job.device
    if device.startswith("cuda") and ":" not in device:
        device = _worker_cuda_device()
    return _cached(("predictor", job.model_folder, job.folds, job.checkpoint_name, device, job.tile_step_size,
                    job.use_mirroring),
                   lambda: BlockPredictor(job.model_folder, job.folds, device, job.tile_step_size,
                                          job.use_mirroring, checkpoint_name=job.checkpoint_name))


def _worker_cuda_device() -> str:
    """One GPU per dask worker of a local cluster (worker names 0..N-1), else the default GPU."""
    import torch

    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else abs(hash(name))
        return f"cuda:{index % max(1, torch.cuda.device_count())}"
    except (ImportError, ValueError):
        return "cuda"


# ----------------------------------------------------------------------------------------------
# the run: checks, resumable progress record, local or dask execution, output assembly
# ----------------------------------------------------------------------------------------------
def _describe_existing(path: Path) -> str:
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        return f"a folder with {len(entries)} entries (e.g. {', '.join(entries[:3])})"
    return f"a file of {path.stat().st_size} bytes"


def _signature_mismatch(a: dict, b: dict) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class InputChangedError(ValueError):
    """An input volume differs from the one a partial run or a finished output was computed from."""


#: z planes whose content is hashed into an input's signature, and voxels hashed per plane at most
CONTENT_SAMPLE_PLANES = 5
CONTENT_SAMPLE_VOXELS = 2**20


def input_content_signature(source: VolumeSource) -> dict:
    """What stands for an input's content in the resume signature, cheaply: no full read.

    ``files``: how many files; ``stat``: a digest of every file's name, size and modification time
    (ns), which catches any rewrite by ordinary tools; ``sample``: a digest of the voxels of
    ``CONTENT_SAMPLE_PLANES`` evenly spaced z planes (a central band of at most
    ``CONTENT_SAMPLE_VOXELS`` voxels each), which catches a copy that kept the old times (``cp -p``,
    ``rsync -t``). A change outside the sampled bands with times kept is the one thing not seen.
    """
    import hashlib

    files = source.files()
    stat = hashlib.blake2b(digest_size=16)
    for f in files:
        st = f.stat()
        stat.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    z, y, x = source.shape
    rows = max(1, min(y, CONTENT_SAMPLE_VOXELS // max(1, x)))
    band = slice((y - rows) // 2, (y - rows) // 2 + rows)
    sample = hashlib.blake2b(digest_size=16)
    for plane in sorted({round(i * (z - 1) / max(1, CONTENT_SAMPLE_PLANES - 1)) for i in range(CONTENT_SAMPLE_PLANES)}):
        sample.update(np.ascontiguousarray(source.read((slice(plane, plane + 1), band, slice(0, x)))).tobytes())
    return {"files": len(files), "stat": stat.hexdigest(), "sample": sample.hexdigest()}


def _check_inputs_unchanged(recorded: dict, current: dict, what: str, remedy: str) -> None:
    """Raise :class:`InputChangedError` naming the first input whose content signature differs."""
    old_inputs, new_inputs = recorded.get("inputs"), current["inputs"]
    old_content = recorded.get("input_content")
    if old_inputs != new_inputs or old_content == current["input_content"]:
        return  # other inputs altogether: the generic signature message says so
    if not isinstance(old_content, list) or len(old_content) != len(new_inputs):
        raise InputChangedError(f"{what} records no content signature of its input (made by an older version), "
                                f"so it cannot be proven to match {new_inputs[0]}; nothing was resumed. {remedy}")
    for path, old, new in zip(new_inputs, old_content, current["input_content"]):
        if old == new:
            continue
        changes = []
        if old.get("files") != new["files"]:
            changes.append(f"{old.get('files')} files then, {new['files']} now")
        elif old.get("stat") != new["stat"]:
            changes.append("file sizes or modification times differ")
        if old.get("sample") != new["sample"]:
            changes.append("sampled voxels differ")
        raise InputChangedError(f"{path}: input changed since {what} was computed from it ({'; '.join(changes)}); "
                                f"nothing was resumed or overwritten. {remedy}")


def _assemble_output(writer, frame: VolumeFrame, plan: BlockPlan, blocks_dir: Path, progress: bool,
                     tissue=None) -> None:
    """Write the stored blocks into ``writer``; labels outside ``tissue`` (a ``TissueMask``) become 0."""
    from tqdm import tqdm

    placed = []
    for block in plan.blocks:
        valid = frame.valid(block.core)
        if any(b <= a for a, b in valid):
            continue
        placed.append((frame.to_original(valid), block.index))
    if not writer.sequential:
        for region, index in tqdm(placed, desc="writing", disable=not progress, leave=False):
            data = load_block(blocks_dir, index)[...]
            if tissue is not None:
                data = data * tissue.region(region)
            writer.write_region(region, data)
        return
    shape = frame.shape
    open_maps: dict = {}
    for z in tqdm(range(shape[0]), desc="writing", disable=not progress, leave=False):
        plane = np.zeros(shape[1:], dtype=np.uint8)
        for region, index in placed:
            if region[0].start <= z < region[0].stop:
                if index not in open_maps:
                    open_maps[index] = load_block(blocks_dir, index)
                plane[region[1], region[2]] = open_maps[index][z - region[0].start]
            elif z >= region[0].stop:
                open_maps.pop(index, None)  # this block is behind us: release the mapping
        if tissue is not None:
            plane *= tissue.region((slice(z, z + 1), slice(0, shape[1]), slice(0, shape[2])))[0]
        writer.write_plane(z, plane)


def predict_large(input: str | Path | Sequence[str | Path], output: str | Path, model_folder: str | Path,
                  folds: Sequence[int | str] = (0,), block_size: int | Sequence[int] | None = None,
                  device: str = "cpu", tile_step_size: float = 0.5, use_mirroring: bool = False,
                  workers: int | None = None, scheduler: str | None = None,
                  checkpoint_name: str = "checkpoint_final.pth",
                  intensity_stats: Sequence[Sequence[float]] | None = None, progress: bool = True,
                  tissue_mask: str | Path | None = None) -> Path:
    """Segment a volume of any size with an nnU-Net model, block by block, resumably.

    Parameters
    ----------
    input : path, or one path per channel (``_0000``, ``_0001`` order)
        Folder of 2D TIFF slices, 3D ``.tif``, ``.nii.gz``/``.nii``/``.mha``/``.nrrd``, ``.b2nd`` or
        OME-Zarr (needs ``zarr``). All channels must have one shape.
    output : path
        Kind from the suffix: no suffix = folder of TIFF slices (named like the input slices when the
        input is a slice folder), ``.tif``, ``.b2nd``, ``.nii.gz``, ``.mha``... uint8 labels.
        Must not exist (or be an empty folder), unless it is the finished output of this very run.
    model_folder : nnU-Net model folder (``Trainer__Plans__Configuration``).
    folds : folds to ensemble (logits averaged as ``nnUNetPredictor`` does).
    block_size : core edge in voxels (int or (z, y, x) in the network's axis order); default: the
        largest multiple of the patch size whose block needs about 2 GB (peak < 3 GB). Larger blocks compute fewer
        tiles twice (``BlockPlan.redundancy``).
    device : ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    tile_step_size, use_mirroring : as ``nnUNetPredictor`` (Gaussian weighting is always on).
    workers : start a local ``dask.distributed`` cluster with this many worker processes (one GPU each
        with ``device="cuda"``). ``scheduler`` : address of an existing dask scheduler instead (the
        workers must see the input, the model folder and the output's parent folder).
    checkpoint_name : checkpoint file in each ``fold_X``.
    intensity_stats : ``[(mean, std)]`` per channel to use instead of measuring them.
    progress : show progress bars (voxels/s, time left).
    tissue_mask : ``None``/``"none"`` (default here: the labels equal ``nnUNetPredictor``'s), ``"auto"``
        (the command line's default: ingest's low-resolution tissue mask of the input, dilated by one mask
        voxel, see :mod:`nnunetv2_selma.inference.tissue`) or the path of a mask volume (non-zero = tissue,
        the input's shape or a smaller one). Labels outside the mask are set to 0 when the output is written.

    Returns
    -------
    Path of the output. Next to it, ``<output>.predict_large.json`` records how it was made, with the
    seconds of each phase of each run (``runs[i]["seconds"]``: ``statistics``, ``model_load``,
    ``predict``, ``write``).

    Raises
    ------
    FileExistsError when ``output`` holds something else (nothing is overwritten) or a partial run of
    other arguments sits in ``<output>.partial``; ValueError naming the file for unreadable or
    inconsistent input (bad slice, slices of different sizes, channel shapes differ) or a model this
    path cannot reproduce (normalisation other than z-score, resampling needed).
    """
    from tqdm import tqdm

    timings = {"statistics": 0.0, "model_load": 0.0, "predict": 0.0, "write": 0.0}
    inputs = [input] if isinstance(input, (str, Path)) else list(input)
    inputs = [Path(p).resolve() for p in inputs]
    output = Path(output).resolve()
    model_folder = Path(model_folder).resolve()
    folds = tuple(f if f == "all" else int(f) for f in folds)
    kind = volume_kind(output)
    if kind in ("zarr", "") or (kind == "slices" and any(c.isalpha() for c in output.suffix)):
        raise ValueError(f"{output}: cannot write output of kind {output.suffix or output.name!r}; expected "
                         f"{SUPPORTED_OUTPUTS} (a folder of TIFF slices is a path without a suffix)")
    if workers is not None and scheduler is not None:
        raise ValueError("give either workers (a local dask cluster) or scheduler (an existing one), not both")
    _check_run_numbers(block_size, tile_step_size, workers, intensity_stats)

    sources = [open_volume(p) for p in inputs]
    for p, s in zip(inputs[1:], sources[1:]):
        if s.shape != sources[0].shape:
            raise ValueError(f"{p}: channel of shape {s.shape}; expected {sources[0].shape} like {inputs[0]}")
    tissue_setting = "none" if tissue_mask is None or str(tissue_mask) == "none" else str(tissue_mask)
    given_tissue = None
    if tissue_setting not in ("none", "auto"):
        from nnunetv2_selma.inference.tissue import open_tissue_mask

        given_tissue = open_tissue_mask(tissue_setting, sources[0].shape)  # checked before any work
        tissue_setting = given_tissue.info["path"]
    plans_manager, configuration_manager, dataset_json, configuration_name = read_model_configuration(
        model_folder, folds, checkpoint_name)
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    num_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    spacing_zyx = tuple(float(s) for s in sources[0].geometry["spacing"])[::-1]
    transpose_forward = tuple(int(i) for i in plans_manager.transpose_forward)
    _check_model_fits_streaming(configuration_manager, len(sources), num_channels, spacing_zyx, transpose_forward,
                                model_folder)
    patch_size = tuple(int(p) for p in configuration_manager.patch_size)
    num_heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    if block_size is None:
        block_size = default_block_size(patch_size, num_channels, num_heads)
    elif isinstance(block_size, int):
        block_size = (block_size,) * 3
    block_size = tuple(int(b) for b in block_size)

    signature = {
        "inputs": [str(p) for p in inputs], "shape": list(sources[0].shape),
        "dtype": [str(s.dtype) for s in sources], "model_folder": str(model_folder), "folds": list(folds),
        "checkpoint_name": checkpoint_name, "configuration": configuration_name, "block_size": list(block_size),
        "tile_step_size": float(tile_step_size), "use_mirroring": bool(use_mirroring),
        "intensity_stats": None if intensity_stats is None else [list(map(float, s)) for s in intensity_stats],
        "input_content": [input_content_signature(s) for s in sources],
    }
    record_path = output.with_name(output.name + RECORD_SUFFIX)
    work_dir = output.with_name(output.name + PARTIAL_SUFFIX)
    output_exists = output.exists() and (not output.is_dir() or any(output.iterdir()))
    if output_exists:
        if record_path.is_file():
            record = json.loads(record_path.read_text())
            _check_inputs_unchanged(record.get("signature", {}), signature, f"the finished output {output}",
                                    f"To predict the new content, remove {output} and {record_path.name}, or choose "
                                    f"another output path.")
            if not _signature_mismatch(record.get("signature", {}), signature) and \
                    record.get("tissue_mask", {}).get("setting", "none") == tissue_setting:
                logger.info("%s: already predicted with these arguments; nothing to do", output)
                return output
        raise FileExistsError(f"{output}: already holds {_describe_existing(output)}, not the output of this run; "
                              f"nothing was overwritten. Choose another output path or remove it.")

    progress_path = work_dir / PROGRESS_FILE
    blocks_dir = work_dir / "blocks"
    if progress_path.is_file():
        state = json.loads(progress_path.read_text())
        _check_inputs_unchanged(state.get("signature", {}), signature,
                                f"the partial run in {work_dir} ({len(state.get('done', []))} blocks done)",
                                f"To start fresh on the new content, remove {work_dir} and rerun; to resume, "
                                f"restore the original input.")
        differ = _signature_mismatch(state.get("signature", {}), signature)
        if differ:
            raise FileExistsError(f"{work_dir}: holds a partial run with other {', '.join(differ)}; nothing was "
                                  f"overwritten. Rerun with the same arguments to resume, or remove that folder.")
        stats = state["statistics"]
        logger.info("%s: resuming (%d blocks already done)", output, len(state["done"]))
    else:
        if work_dir.exists():
            raise FileExistsError(f"{work_dir}: exists without {PROGRESS_FILE}; it is not a run of this tool. "
                                  f"Remove it or choose another output path.")
        for s in sources:
            s.check_all_planes()
        t0 = time.perf_counter()
        stats = gather_volume_statistics(sources, intensity_stats, progress=progress)
        timings["statistics"] = time.perf_counter() - t0
        work_dir.mkdir(parents=True)
        blocks_dir.mkdir()
        state = {"signature": signature, "statistics": stats, "done": [], "runs": []}
        write_json_atomic(progress_path, state)

    bbox = stats["bbox"] or [[0, 0]] * 3
    frame = VolumeFrame.create(sources[0].shape, transpose_forward, bbox, patch_size)
    if stats["bbox"] is None:
        plan = BlockPlan((), block_size, 0, 1.0)  # all-zero volume: nnU-Net would see nothing; output is 0
    else:
        plan = plan_blocks(frame.padded_shape, patch_size, tile_step_size, block_size)
    job = BlockJob(tuple(str(p) for p in inputs), tuple(stats["mean"]), tuple(stats["std"]), frame,
                   str(model_folder), folds, checkpoint_name, device, float(tile_step_size), bool(use_mirroring),
                   str(blocks_dir))
    # a block is done when its file is stored, whether recorded in state["done"] or not yet (killed in between)
    done = {b.index for b in plan.blocks if block_file(blocks_dir, b.index).is_file()}
    pending = [b for b in plan.blocks if b.index not in done]

    def voxels(block: Block) -> int:
        return math.prod(max(0, b - a) for a, b in frame.valid(block.core))

    run_info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "computed": 0, "blocks": len(plan.blocks),
                "redundancy": plan.redundancy, "seconds": timings}
    state["runs"].append(run_info)
    state["done"] = sorted(done)
    write_json_atomic(progress_path, state)
    logger.info("%s: %d blocks of %s (tiles computed %.2fx the whole-volume run), %d to do", output,
                len(plan.blocks), block_size, plan.redundancy, len(pending))

    by_index = {b.index: b for b in plan.blocks}
    bar = tqdm(total=sum(voxels(b) for b in plan.blocks), initial=sum(voxels(by_index[i]) for i in done),
               unit="vox", unit_scale=True, desc="predict_large", disable=not progress)

    def finished(index: int) -> None:
        done.add(index)
        run_info["computed"] += 1
        state["done"] = sorted(done)
        write_json_atomic(progress_path, state)
        bar.update(voxels(by_index[index]))

    try:
        if workers is None and scheduler is None:
            if pending:
                t0 = time.perf_counter()
                _job_predictor(job)  # load the model here so that its time is reported apart
                timings["model_load"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for block in pending:
                finished(run_block(job, block))
        else:
            t0 = time.perf_counter()  # model loading happens on the workers and counts as predicting
            _run_on_dask(job, pending, workers, scheduler, finished)
        timings["predict"] = time.perf_counter() - t0
    finally:
        bar.close()

    tissue = given_tissue
    if tissue_setting == "auto":
        from nnunetv2_selma.inference.tissue import auto_tissue_mask

        t0 = time.perf_counter()
        tissue = auto_tissue_mask(sources)
        timings["tissue_mask"] = time.perf_counter() - t0
        logger.info("%s: tissue mask kept %.1f%% of the volume", output, 100 * tissue.info["fraction"])
    slice_names = [p.name for p in sources[0].series.files] if sources[0].kind == "slices" else None
    writer = create_mask_writer(output, work_dir / "output", sources[0].shape, sources[0].geometry, slice_names)
    t0 = time.perf_counter()
    try:
        _assemble_output(writer, frame, plan, blocks_dir, progress, tissue)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    timings["write"] = time.perf_counter() - t0
    write_json_atomic(record_path, {"signature": signature, "statistics": stats, "blocks": len(plan.blocks),
                               "block_size": list(plan.block_size), "redundancy": plan.redundancy,
                               "tissue_mask": {"setting": tissue_setting, **(tissue.info if tissue else {})},
                               "runs": state["runs"]})
    shutil.rmtree(work_dir)
    return output


def _check_run_numbers(block_size, tile_step_size, workers, intensity_stats) -> None:
    """Refuse numbers that would make a run loop, divide by zero or make no sense, before any work."""
    sizes = [block_size] if isinstance(block_size, (int, np.integer)) else list(block_size or [])
    if block_size is not None and (len(sizes) not in (1, 3) or any(int(b) != b or b < 1 for b in sizes)):
        raise ValueError(f"block_size {block_size}: expected one integer or three (z, y, x), each >= 1")
    if not (math.isfinite(tile_step_size) and 0 < tile_step_size <= 1):
        raise ValueError(f"tile_step_size {tile_step_size}: expected a number in (0, 1] (nnU-Net's default 0.5)")
    if workers is not None and (int(workers) != workers or workers < 1):
        raise ValueError(f"workers {workers}: expected an integer >= 1")
    for c, pair in enumerate(intensity_stats or []):
        mean, std = (float(v) for v in pair)
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"intensity_stats of channel {c}: mean {mean}, std {std}; expected a finite mean "
                             f"and a finite std > 0")


def _run_on_dask(job, pending: Sequence, workers: int | None, scheduler: str | None, finished,
                 task=None) -> None:
    """Blocks as dask.distributed tasks ``task(job, block)`` (default :func:`run_block`), each returning the
    block's index; ``finished(index)`` is called here as each one completes. ``objects`` uses it too."""
    task = run_block if task is None else task
    from distributed import Client, LocalCluster, as_completed

    # distributed logs ~24 INFO lines per local cluster (start, each worker, shutdown) and, at shutdown, a
    # "killed by signal 9" warning for a worker that the nanny stopped on purpose: keep its warnings while
    # the blocks run (a worker that really dies), silence it while the cluster is closed on purpose
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    cluster = None
    try:
        if scheduler is None:
            dask_logger.setLevel(logging.WARNING)
            cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                   dashboard_address=":0", silence_logs=logging.WARNING)
            client = Client(cluster)
        else:
            client = Client(scheduler)
        try:
            futures = [client.submit(task, job, block, key=f"selma-{task.__name__}-{block.index}-{os.getpid()}",
                                     pure=False) for block in pending]
            for future in as_completed(futures):
                finished(future.result())
        finally:
            dask_logger.setLevel(logging.CRITICAL)
            client.close()
            if cluster is not None:
                cluster.close()
    finally:
        dask_logger.setLevel(level)


__all__ = ["Block", "BlockJob", "BlockPlan", "BlockPredictor", "InputChangedError", "VolumeFrame",
           "compute_tile_starts", "default_block_size", "gather_volume_statistics", "input_content_signature",
           "plan_blocks", "predict_block", "predict_large", "read_model_configuration", "run_block"]

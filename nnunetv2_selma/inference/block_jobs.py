"""One block of whole-volume inference, end to end: read and normalise its region, predict its core,
store its mask. Runs in the calling process or on a dask worker (:class:`BlockJob` is picklable and
:func:`run_block` is found by its module path).

Finished blocks are small compressed ``.b2nd`` files, written under a temporary name and renamed, so a
killed run leaves whole blocks or none; a restarted run skips those present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import atomic_path
from nnunetv2_selma.inference.blocks import Block, VolumeFrame
from nnunetv2_selma.inference.predictor import BlockPredictor
from nnunetv2_selma.normalization import normalize_image
from nnunetv2_selma.volumes import VolumeSource, open_volume


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


def worker_cached(key, factory):
    """``factory()``, made once per process under ``key`` (a model, open readers: one load per dask worker)."""
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = factory()
    return _WORKER_CACHE[key]


def block_file(blocks_dir: str | Path, index: int) -> Path:
    return Path(blocks_dir) / f"block_{index:06d}.b2nd"


def save_block(blocks_dir: str | Path, index: int, seg: np.ndarray) -> None:
    """Store a finished block's mask compressed (masks are mostly 0: ~1-5% of 1 byte/voxel on disk),
    written under a temporary name and renamed, so a killed run never leaves a half block."""
    import blosc2

    chunks = tuple(max(1, min(s, c)) for s, c in zip(seg.shape, (8, 1 << 30, 1 << 30)))
    with atomic_path(block_file(blocks_dir, index), unique=True) as tmp:  # two workers may write one block
        blosc2.asarray(np.ascontiguousarray(seg), urlpath=str(tmp), mode="w", chunks=chunks)


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
        normalize_image(source.read(original).transpose(job.frame.transpose_forward), job.mean[c], job.std[c],
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
    predictor = job_predictor(job)
    sources = worker_cached(("sources", job.inputs), lambda: [open_volume(p) for p in job.inputs])
    seg = predict_block(job, block, predictor, sources)
    save_block(job.blocks_dir, block.index, seg if seg is not None else np.zeros((0, 0, 0), np.uint8))
    return block.index


def job_predictor(job: BlockJob) -> BlockPredictor:
    """The job's predictor, loaded once per process."""
    device = job.device
    if device.startswith("cuda") and ":" not in device:
        device = _worker_cuda_device()
    return worker_cached(("predictor", job.model_folder, job.folds, job.checkpoint_name, device, job.tile_step_size,
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


__all__ = ["BlockJob", "block_file", "job_predictor", "load_block", "predict_block", "read_block_input",
           "run_block", "save_block", "worker_cached"]

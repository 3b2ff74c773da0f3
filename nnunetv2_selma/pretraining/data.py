"""Pretraining batches: tissue-aware patches from the store, normalised, lightly augmented.

Batch ``i`` of rank ``r`` is a pure function of ``(seed, r, i)``: its numpy generator is
``default_rng([seed, r, i])`` and its augmentation's torch seed is drawn from that generator.
The sampler's whole state is therefore ``(seed, iteration)``, which makes ``--continue`` resume
the exact patch sequence and lets any number of worker processes share the work: worker ``w`` of
``W`` produces batches ``start + w, start + w + W, ...`` and torch's DataLoader hands them out in
that order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from nnunetv2_selma.normalization import normalize_image
from nnunetv2_selma.pretraining.methods import PretrainingMethod
from nnunetv2_selma.store.reader import open_store


def light_augmentation(ndim: int = 3) -> ComposeTransforms:
    """Light augmentation for reconstruction pretraining (batchgeneratorsv2 transforms).

    Mirroring along every axis and a small multiplicative intensity change (0.9-1.1, p=0.3).
    Kept light on purpose: the target is the augmented patch itself, so strong spatial or
    intensity changes only add work without adding invariance that reconstruction could use.
    Applied *after* normalisation, as nnU-Net's fine-tuning augmentation is.
    """
    return ComposeTransforms(
        [
            MirrorTransform(allowed_axes=tuple(range(ndim))),
            RandomTransform(MultiplicativeBrightnessTransform((0.9, 1.1), synchronize_channels=True),
                            apply_probability=0.3),
        ]
    )


def _seeded(transform: ComposeTransforms, image: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply a batchgeneratorsv2 transform reproducibly.

    Its transforms draw from the *global* torch and numpy generators; seed both from the batch's
    generator for the call and restore them afterwards, so the patch sequence depends only on
    (seed, rank, iteration) and the caller's random state is untouched.
    """
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            return transform(image=image)["image"]
    finally:
        np.random.set_state(numpy_state)


def sample_batch(
    store: Any,
    patch_size: Sequence[int],
    batch_size: int,
    rng: np.random.Generator,
    structures: Sequence[str] | None = None,
    augment: bool = True,
) -> np.ndarray:
    """Sample, normalise and augment one batch of pretraining patches.

    Parameters
    ----------
    store : PretrainingStore
        Provides ``sample_patch(size, rng, structures)`` (tissue-aware sampling).
    patch_size : (z, y, x)
    batch_size : int
    rng : numpy.random.Generator for this batch (patch positions and augmentation seed)
    structures : optional structure names to sample from (all when None)
    augment : apply :func:`light_augmentation`

    Returns
    -------
    ndarray float32, shape (batch_size, 1, z, y, x); each patch z-scored with its own statistics
    (identical to how nnU-Net normalises a fine-tuning case, so the pretrained network sees the same intensities).
    """
    patch_size = tuple(int(p) for p in patch_size)
    out = np.empty((batch_size, 1, *patch_size), dtype=np.float32)
    transform = light_augmentation(len(patch_size)) if augment else None
    for b in range(batch_size):
        raw, _name, _start = store.sample_patch(patch_size, rng, structures)
        if tuple(raw.shape) != patch_size:
            raise RuntimeError(f"store returned a patch of shape {raw.shape}, expected {patch_size}")
        patch = torch.from_numpy(normalize_image(raw)[None])
        if transform is not None:
            patch = _seeded(transform, patch, int(rng.integers(2**31)))
        out[b] = patch.numpy()
    return out


class PretrainingBatches(IterableDataset):
    """Endless, resumable stream of pretraining batches for one rank.

    Parameters
    ----------
    store : PretrainingStore or path
        Pickled into worker processes (cheap: the store pickles as its path).
    patch_size : (z, y, x)
    batch_size : int
        Patches per batch *on this rank*.
    method : PretrainingMethod
        Its :meth:`~PretrainingMethod.make_batch` turns patches into the batch dict.
    seed : int
    start_iteration : int
        First batch index produced (the resume point).
    rank : int
        DDP rank; ranks draw disjoint random streams.
    structures, augment : see :func:`sample_batch`

    Yields
    ------
    dict with the method's arrays and ``"iteration"`` (int64 array of shape ()).
    """

    def __init__(
        self,
        store: Any,
        patch_size: Sequence[int],
        batch_size: int,
        method: PretrainingMethod,
        seed: int = 0,
        start_iteration: int = 0,
        rank: int = 0,
        structures: Sequence[str] | None = None,
        augment: bool = True,
    ) -> None:
        super().__init__()
        self.store = store
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.method = method
        self.seed = int(seed)
        self.start_iteration = int(start_iteration)
        self.rank = int(rank)
        self.structures = list(structures) if structures else None
        self.augment = augment

    def batch(self, iteration: int) -> dict[str, np.ndarray]:
        """The batch of a given iteration (deterministic)."""
        rng = np.random.default_rng([self.seed, self.rank, int(iteration)])
        store = open_store(self.store)
        images = sample_batch(store, self.patch_size, self.batch_size, rng, self.structures, self.augment)
        batch = self.method.make_batch(images, rng)
        batch["iteration"] = np.asarray(iteration, dtype=np.int64)
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # open the store once per worker process
        self.store = open_store(self.store)
        iteration = self.start_iteration + worker
        while True:
            yield self.batch(iteration)
            iteration += n_workers


def make_loader(dataset: PretrainingBatches, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """Background-worker DataLoader over a :class:`PretrainingBatches` stream (batches in order).

    ``num_workers=0`` loads in the calling process (tests, debugging).
    """
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs = {"prefetch_factor": 4, "persistent_workers": False}
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)


def default_num_workers() -> int:
    """Worker processes for pretraining data: ``nnUNet_n_proc_DA`` if set (nnU-Net's knob), else
    ``min(8, cpu_count - 1)``."""
    if "nnUNet_n_proc_DA" in os.environ:
        return max(0, int(os.environ["nnUNet_n_proc_DA"]))
    return max(1, min(8, (os.cpu_count() or 2) - 1))

"""Self-supervised objectives behind one small interface.

A method has two halves, because they run in different places:

* :meth:`PretrainingMethod.make_batch` runs in the data-loading worker processes, on numpy
  arrays, with a ``numpy.random.Generator`` that is derived from (seed, rank, iteration), so
  everything random about a batch (masks, noise, second views) is reproducible after a resume
  and costs the GPU nothing;
* :meth:`PretrainingMethod.loss` runs in the training process on device tensors and returns a
  scalar loss.

Adding an objective (contrastive, denoising, ...) is one subclass plus one entry in
:data:`METHODS`; :class:`DenoisingReconstruction` shows how small that is.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch
from torch import nn

from nnunetv2_selma.pretraining.masking import EncoderMaskHooks, random_block_mask


def _single_output(output: torch.Tensor | list | tuple) -> torch.Tensor:
    # a network built with deep supervision returns one output per decoder stage, highest first
    return output[0] if isinstance(output, (list, tuple)) else output


class PretrainingMethod(abc.ABC):
    """Interface of a self-supervised objective.

    Subclasses set :attr:`name` and implement :meth:`make_batch` and :meth:`loss`; their
    constructor keyword arguments are their parameters (returned by :meth:`params`, written into
    checkpoints and into the cache key, and passed back to rebuild the method).
    """

    #: short name used on the command line (``--method``) and in the cache key
    name: str = ""
    #: output channels of the network's head during pretraining
    num_output_channels: int = 1

    @abc.abstractmethod
    def params(self) -> dict[str, Any]:
        """JSON-serialisable parameters; ``type(self)(**self.params())`` rebuilds the method."""

    def attach(self, network: nn.Module) -> None:  # noqa: B027 - optional hook, no-op by default
        """Prepare the *unwrapped* network once before training (e.g. register hooks)."""

    @abc.abstractmethod
    def make_batch(self, images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Build one training batch from normalised, augmented patches (runs in workers).

        Parameters
        ----------
        images : ndarray float32, shape (B, 1, z, y, x)
        rng : numpy.random.Generator dedicated to this batch

        Returns
        -------
        dict of numpy arrays; they are moved to the device as tensors and handed to :meth:`loss`.
        """

    @abc.abstractmethod
    def loss(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar float32 loss of ``network`` (possibly DDP-wrapped or compiled) on ``batch``."""

    def describe(self) -> dict[str, Any]:
        """Name and parameters, for logs, checkpoint metadata and the cache key."""
        return {"name": self.name, **self.params()}


def auto_block_size(patch_size) -> int:
    """Masking block edge for a patch: ``min(16, smallest patch edge // 4)``, at least 1.

    16 is nnssl's block for its 160^3 (and our 128^3) patches; a small patch gets smaller blocks so
    that it holds at least 4 blocks per axis (64 in all, 16 of them visible at a ratio of 0.75).
    With 16^3 blocks a 32^3 patch (the cpu preset) holds 8 blocks, 2 visible, and the
    reconstruction task degenerates into guessing three quarters of the patch from two corners.
    """
    return max(1, min(16, min(int(p) for p in patch_size) // 4))


class MaskedImageModeling(PretrainingMethod):
    """Spark3D-style masked image modelling for CNN U-Nets (the default method).

    Blocks of ``block_size``^3 voxels are masked with probability ``mask_ratio``; masked voxels
    are zero at the input and stay zero through every encoder layer, with normalisation over
    visible voxels only (see :class:`~nnunetv2_selma.pretraining.masking.EncoderMaskHooks`); the
    U-Net decoder plus a 1x1x1 head (the network's ``seg_layers`` with one output channel)
    reconstructs the normalised input; the loss is the mean squared error over masked voxels only.

    Parameters
    ----------
    block_size : int or None
        Edge length of a masking block in voxels; None (default) picks :func:`auto_block_size`
        of the patch (16 for the M and L presets as in nnssl, 8 for the cpu preset's 32^3).
    mask_ratio : float in [0, 1)
        Fraction of blocks masked (0.75 as in nnssl).
    sparse_norm : bool
        Sparse-convolution emulation down to every encoder layer, with instance normalisation
        over visible voxels (default True, Spark's sparse normalisation); False masks stage outputs
        only, as versions before 0.2 did.
    """

    name = "mae"

    def __init__(self, block_size: int | None = None, mask_ratio: float = 0.75, sparse_norm: bool = True) -> None:
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if block_size is not None and int(block_size) < 1:
            raise ValueError(f"block_size must be >= 1 (or None for automatic), got {block_size}")
        self.block_size = None if block_size is None else int(block_size)
        self.mask_ratio = float(mask_ratio)
        self.sparse_norm = bool(sparse_norm)
        self._hooks: EncoderMaskHooks | None = None

    def params(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "mask_ratio": self.mask_ratio, "sparse_norm": self.sparse_norm}

    def attach(self, network: nn.Module) -> None:
        self._hooks = EncoderMaskHooks(network, sparse=self.sparse_norm)

    def make_batch(self, images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        block = self.block_size if self.block_size is not None else auto_block_size(images.shape[2:])
        mask = random_block_mask(images.shape[2:], block, self.mask_ratio, rng, batch_size=images.shape[0])
        return {"image": images, "mask": mask}

    def loss(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._hooks is None:
            raise RuntimeError("MaskedImageModeling.attach(network) must be called before loss()")
        image = batch["image"]
        masked = batch["mask"].to(image.dtype)
        visible = 1.0 - masked
        self._hooks.visible = visible
        try:
            reconstruction = _single_output(network(image * visible))
        finally:
            self._hooks.visible = None
        squared_error = (reconstruction.float() - image.float()) ** 2
        return (squared_error * masked).sum() / masked.sum().clamp_min(1.0) / reconstruction.shape[1]


class DenoisingReconstruction(PretrainingMethod):
    """Denoising auto-encoder: reconstruct the clean patch from one with Gaussian noise added.

    Parameters
    ----------
    noise_std : float
        Standard deviation of the added noise, in units of the normalised image (std 1).
    """

    name = "denoise"

    def __init__(self, noise_std: float = 0.5) -> None:
        if noise_std <= 0:
            raise ValueError(f"noise_std must be > 0, got {noise_std}")
        self.noise_std = float(noise_std)

    def params(self) -> dict[str, Any]:
        return {"noise_std": self.noise_std}

    def make_batch(self, images: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        noise = rng.standard_normal(images.shape, dtype=np.float32) * np.float32(self.noise_std)
        return {"image": images, "noisy": images + noise}

    def loss(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        reconstruction = _single_output(network(batch["noisy"]))
        return torch.mean((reconstruction.float() - batch["image"].float()) ** 2)


#: method name -> class; ``--method NAME`` and the trainers look methods up here
METHODS: dict[str, type[PretrainingMethod]] = {
    MaskedImageModeling.name: MaskedImageModeling,
    DenoisingReconstruction.name: DenoisingReconstruction,
}


def get_method(name: str, **params: Any) -> PretrainingMethod:
    """Instantiate a pretraining method by name (``"mae"``, ``"denoise"``).

    Raises
    ------
    ValueError naming the known methods if ``name`` is unknown.
    """
    if name not in METHODS:
        raise ValueError(f"unknown pretraining method {name!r}; expected one of {sorted(METHODS)}")
    return METHODS[name](**params)

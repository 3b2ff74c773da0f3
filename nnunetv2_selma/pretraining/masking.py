"""Spark3D-style block masking for convolutional U-Nets (masked image modelling).

A CNN has no tokens to drop, so Spark (Tian et al., 2023) emulates sparse convolutions: the
input is zeroed in masked blocks *and* every encoder stage's output is zeroed again at the masked
positions (downsampled to that stage's resolution). Without the second step, each convolution
leaks visible context into the masked region and the encoder learns to in-paint from a few
smeared voxels instead of from the visible neighbourhood.

Two pieces live here:

* :func:`random_block_mask` draws the mask (numpy, in the data-loading workers, reproducible
  from a ``numpy.random.Generator``);
* :class:`EncoderMaskHooks` keeps masked regions empty through the encoder with forward hooks on
  ``network.encoder.stem`` (if present) and each ``network.encoder.stages[i]`` of a
  dynamic-network-architectures U-Net (``ResidualEncoderUNet``, ``PlainConvUNet``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional


def random_block_mask(
    patch_size: Sequence[int],
    block_size: int | Sequence[int],
    mask_ratio: float,
    rng: np.random.Generator,
    batch_size: int = 1,
) -> np.ndarray:
    """Draw a random block mask, exactly ``round(mask_ratio * n_blocks)`` blocks per sample.

    Parameters
    ----------
    patch_size : sequence of int (z, y, x)
        Spatial size of the patches the mask applies to.
    block_size : int or sequence of int
        Edge length of one masking block in voxels (16 in Spark3D / nnssl). A patch that is not a
        multiple of the block size gets a partial last block (the grid is ``ceil(patch / block)``).
    mask_ratio : float in [0, 1)
        Fraction of blocks that are masked. At least one block always stays visible, so the
        encoder never sees an all-empty input.
    rng : numpy.random.Generator
        Source of randomness (makes the mask reproducible per batch).
    batch_size : int
        Number of independent masks.

    Returns
    -------
    ndarray of bool, shape (batch_size, 1, z, y, x)
        True where the voxel is *masked* (hidden from the network, reconstructed by it).
    """
    patch_size = tuple(int(p) for p in patch_size)
    blocks = (int(block_size),) * len(patch_size) if np.isscalar(block_size) else tuple(int(b) for b in block_size)
    if len(blocks) != len(patch_size):
        raise ValueError(f"block_size {block_size} does not match the dimensionality of patch_size {patch_size}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if any(b < 1 for b in blocks):
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    grid = tuple(math.ceil(p / b) for p, b in zip(patch_size, blocks))
    n_blocks = int(np.prod(grid))
    n_masked = min(int(round(mask_ratio * n_blocks)), n_blocks - 1)
    masks = np.zeros((batch_size, n_blocks), dtype=bool)
    for b in range(batch_size):
        masks[b, rng.permutation(n_blocks)[:n_masked]] = True
    masks = masks.reshape((batch_size, *grid))
    for axis, b in enumerate(blocks):
        masks = np.repeat(masks, b, axis=axis + 1)
    crop = (slice(None),) + tuple(slice(0, p) for p in patch_size)
    return np.ascontiguousarray(masks[crop][:, None])


def visible_at(visible: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Downsample a visibility map (1 = visible) to a feature map's resolution.

    A feature voxel counts as visible if any input voxel under it is visible (max pooling), so
    stages coarser than the masking blocks are never blanked entirely. At block-aligned
    resolutions this equals nearest-neighbour downsampling of the block grid.

    Parameters
    ----------
    visible : tensor (B, 1, z, y, x), float
    spatial_shape : target (z', y', x')

    Returns
    -------
    tensor (B, 1, z', y', x'), same dtype and device as ``visible``
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if tuple(visible.shape[2:]) == spatial_shape:
        return visible
    pool = functional.adaptive_max_pool3d if visible.ndim == 5 else functional.adaptive_max_pool2d
    return pool(visible, spatial_shape)


def masked_instance_norm(x: torch.Tensor, visible: torch.Tensor, norm: nn.modules.instancenorm._InstanceNorm
                         ) -> torch.Tensor:
    """Instance normalisation over the *visible* voxels only (Spark's sparse normalisation).

    Parameters
    ----------
    x : tensor (B, C, *spatial), the norm's input (masked voxels hold zeros)
    visible : tensor (B, 1, *spatial), 1 where visible, at ``x``'s resolution
    norm : the ``nn.InstanceNorm3d`` / ``2d`` module whose ``eps`` and affine parameters are used

    Returns
    -------
    tensor like ``x``: ``(x - mean_v) / sqrt(var_v + eps) * weight + bias`` with mean and variance
    over the visible voxels of each sample and channel, zero at masked voxels.
    """
    dims = tuple(range(2, x.ndim))
    v = visible.to(x.dtype)
    count = v.sum(dim=dims, keepdim=True).clamp_min(1.0)
    mean = (x * v).sum(dim=dims, keepdim=True) / count
    var = (((x - mean) * v) ** 2).sum(dim=dims, keepdim=True) / count
    y = (x - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        shape = (1, -1) + (1,) * len(dims)
        y = y * norm.weight.view(shape) + norm.bias.view(shape)
    return y * v


class EncoderMaskHooks:
    """Keep masked regions at zero through every encoder stage (sparse-convolution emulation).

    Registers forward hooks on ``network.encoder.stem`` (if the architecture has one) and on
    every module of ``network.encoder.stages``. While :attr:`visible` is set, each hooked
    module's output is multiplied by the visibility map downsampled to its resolution; while it
    is ``None`` the hooks do nothing, so the same network can run unmasked (e.g. for evaluation).

    With ``sparse=True`` (the default) the emulation goes down to every layer, as Spark's sparse
    convolutions and sparse normalisation do: the output of every convolution of the encoder is
    masked again, and every instance normalisation of the encoder takes its mean and variance
    over the visible voxels only and is zero at masked ones. Without it, a stage's normalisation
    sees 75 % zeros during pretraining and none during fine-tuning, so the statistics the encoder
    learns to expect are not the ones it meets downstream.

    Parameters
    ----------
    network : nn.Module
        A dynamic-network-architectures U-Net, unwrapped (not DDP, not compiled); the hooks
        keep working after the caller wraps it.
    sparse : bool
        Mask after every encoder convolution and normalise over visible voxels (default); False
        masks stage outputs only (the behaviour before version 0.2, kept to measure the difference).
    """

    def __init__(self, network: nn.Module, sparse: bool = True) -> None:
        encoder = getattr(network, "encoder", None)
        if encoder is None or not hasattr(encoder, "stages"):
            raise TypeError(
                f"{type(network).__name__} has no .encoder.stages; masked image modelling needs a "
                "dynamic-network-architectures U-Net (ResidualEncoderUNet or PlainConvUNet)"
            )
        self.visible: torch.Tensor | None = None
        self.sparse = bool(sparse)
        modules = [encoder.stem] if getattr(encoder, "stem", None) is not None else []
        modules += list(encoder.stages)
        self._handles = [m.register_forward_hook(self._hook) for m in modules]
        if self.sparse:
            for m in encoder.modules():
                if isinstance(m, nn.modules.instancenorm._InstanceNorm):
                    self._handles.append(m.register_forward_hook(self._norm_hook))
                elif isinstance(m, nn.modules.conv._ConvNd):
                    self._handles.append(m.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor | None:
        if self.visible is None:
            return None
        return output * visible_at(self.visible, output.shape[2:]).to(output.dtype)

    def _norm_hook(self, module: nn.Module, args, output: torch.Tensor) -> torch.Tensor | None:
        if self.visible is None:
            return None
        x = args[0]
        return masked_instance_norm(x, visible_at(self.visible, x.shape[2:]), module).to(output.dtype)

    def remove(self) -> None:
        """Remove the hooks from the network."""
        for h in self._handles:
            h.remove()
        self._handles = []

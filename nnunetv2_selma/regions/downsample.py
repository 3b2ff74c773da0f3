"""The registration channel at the atlas's resolution and orientation, read slab by slab (bounded memory).

Coordinates: a voxel ``i`` of a volume spans ``[i, i + 1)`` along its axis (its centre is ``i + 0.5``), the
convention of brainglobe-space's flips (``shape - x``). A centroid ``c`` (voxel index) of the full-resolution
image is ``(c + 0.5) * downsampled_shape / shape`` in the downsampled volume (about ``voxel_size / resolution``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from nnunetv2_selma.volumes import VolumeSource

#: BrainGlobe's orientation letters, by anatomical axis
AXIS_LETTERS = ({"a", "p"}, {"s", "i"}, {"l", "r"})
ATLAS_ORIENTATION = "asr"


def check_orientation(text: str) -> str:
    """A BrainGlobe orientation string (lower case) or ValueError naming what is wrong with it.

    Three letters, one per anatomical axis, each naming where that image axis *starts*: ``a``/``p``
    (anterior, posterior), ``s``/``i`` (superior, inferior), ``l``/``r`` (left, right); e.g. ``asr``.
    """
    value = str(text).strip().lower()
    pairs = [next((k for k, pair in enumerate(AXIS_LETTERS) if letter in pair), None) for letter in value]
    if len(value) != 3 or None in pairs or len(set(pairs)) != 3:
        raise ValueError(f"orientation {text!r}: expected three letters in BrainGlobe's convention, one per image "
                         f"axis (z y x) naming where that axis starts, one from each of a/p (anterior/posterior), "
                         f"s/i (superior/inferior), l/r (left/right), e.g. 'asr' or 'psl'")
    return value


def check_voxel_size(voxel_size: Sequence[float] | None) -> tuple[float, float, float]:
    """Three finite voxel sizes > 0 in micrometres (image axis order) or ValueError naming the value seen."""
    if voxel_size is None:
        raise ValueError("voxel size missing: give --voxel-size Z Y X in micrometres, in the image's axis order "
                         "(SELMA3D and most TIFF stacks do not store it; see the microscope's metadata)")
    values = list(voxel_size)
    try:
        sizes = [float(v) for v in values]
    except (TypeError, ValueError):
        sizes = []
    if len(values) != 3 or len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise ValueError(f"voxel size {values}: expected three finite numbers > 0 (Z Y X, micrometres, in the "
                         f"image's axis order)")
    return tuple(sizes)


def atlas_axis_of(orientation: str) -> tuple[int, int, int]:
    """For each image axis, the atlas (``asr``) axis showing the same anatomical direction."""
    return tuple(next(k for k, pair in enumerate(AXIS_LETTERS) if letter in pair) for letter in orientation)


def downsampled_shape(shape: Sequence[int], voxel_size: Sequence[float], resolution: Sequence[float]
                      ) -> tuple[int, int, int]:
    """Shape of the volume resampled from ``voxel_size`` to ``resolution`` (both in its axis order)."""
    return tuple(max(1, round(s * v / r)) for s, v, r in zip(shape, voxel_size, resolution))


def _plane_weights(n_in: int, n_out: int) -> list[list[tuple[int, float]]]:
    """For each input plane, the output planes it contributes to (area weights of the box filter)."""
    scale = n_in / n_out
    weights: list[list[tuple[int, float]]] = [[] for _ in range(n_in)]
    for j in range(n_out):
        lo, hi = j * scale, (j + 1) * scale
        if hi - lo < 1:  # upsampling: the nearest input plane
            weights[min(n_in - 1, int((lo + hi) / 2))].append((j, 1.0))
            continue
        for i in range(int(math.floor(lo)), min(n_in, int(math.ceil(hi)))):
            overlap = min(hi, i + 1) - max(lo, i)
            if overlap > 0:
                weights[i].append((j, overlap))
    return weights


def shrink_plane(plane: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """A 2D plane resampled to ``out_shape`` (float32): block means by the whole factor, then linear interpolation.

    Output pixel ``j`` is centred on input coordinate ``(j + 0.5) * n / m - 0.5`` (as scikit-image's ``resize``).
    The block mean is the anti-aliasing filter and costs one reduced copy, so a 10k x 10k plane needs its own
    size plus a little, not the several float64 copies of a Gaussian pre-filter.
    """
    from scipy import ndimage

    factors = [max(1, n // m) for n, m in zip(plane.shape, out_shape)]
    h, w = (plane.shape[0] // factors[0]) * factors[0], (plane.shape[1] // factors[1]) * factors[1]
    reduced = plane[:h, :w].reshape(h // factors[0], factors[0], w // factors[1], factors[1]).mean(
        axis=(1, 3), dtype=np.float32)
    coords = [((np.arange(m) + 0.5) * n / m) / f - 0.5 for n, m, f in zip(plane.shape, out_shape, factors)]
    grid = np.meshgrid(*coords, indexing="ij")
    return ndimage.map_coordinates(reduced, grid, order=1, mode="nearest").astype(np.float32)


def default_slab_planes(source: VolumeSource, budget_bytes: int = 256 * 2**20) -> int:
    """Planes per read so that a slab stays within ``budget_bytes`` (at least 1, at most 32)."""
    plane = int(source.shape[1]) * int(source.shape[2]) * np.dtype(getattr(source, "dtype", np.uint16)).itemsize
    return int(max(1, min(32, budget_bytes // max(1, plane))))


def downsample_volume(source: VolumeSource, voxel_size: Sequence[float], resolution: Sequence[float],
                      slab_planes: int | None = None, progress: bool = True) -> np.ndarray:
    """Resample ``source`` (any size) to ``resolution``, reading ``slab_planes`` planes at a time.

    Parameters
    ----------
    source : a volume of :func:`nnunetv2_selma.volumes.open_volume`.
    voxel_size, resolution : micrometres per voxel of the source and of the result, both in the source's axis order.
    slab_planes : planes held in memory at once; default :func:`default_slab_planes` (a slab of <= 256 MiB).

    Returns
    -------
    float32 array of :func:`downsampled_shape`: each plane shrunk by :func:`shrink_plane`, planes averaged along
    axis 0 with box weights. Memory: one slab, one plane's reduced copy and the result.
    """
    from tqdm import tqdm

    shape = tuple(int(s) for s in source.shape)
    out_shape = downsampled_shape(shape, voxel_size, resolution)
    slab_planes = default_slab_planes(source) if slab_planes is None else int(slab_planes)
    out = np.zeros(out_shape, np.float32)
    total = np.zeros(out_shape[0], np.float64)
    weights = _plane_weights(shape[0], out_shape[0])
    with tqdm(total=shape[0], unit="plane", desc="downsample", disable=not progress) as bar:
        for z0 in range(0, shape[0], slab_planes):
            z1 = min(shape[0], z0 + slab_planes)
            slab = source.read_planes(z0, z1)
            for k in range(z1 - z0):
                if not weights[z0 + k]:
                    continue
                plane = shrink_plane(slab[k], out_shape[1:])
                for j, w in weights[z0 + k]:
                    out[j] += w * plane
                    total[j] += w
            del slab
            bar.update(z1 - z0)
    out /= np.maximum(total, 1e-12)[:, None, None].astype(np.float32)
    return out


def to_atlas_orientation(stack: np.ndarray, orientation: str) -> np.ndarray:
    """``stack`` (axes as ``orientation``) transposed and flipped into the atlas's ``asr`` (brainglobe-space)."""
    from brainglobe_space import AnatomicalSpace

    return np.ascontiguousarray(AnatomicalSpace(orientation, shape=stack.shape).map_stack_to(ATLAS_ORIENTATION, stack))


def from_atlas_orientation(stack: np.ndarray, orientation: str) -> np.ndarray:
    """The inverse of :func:`to_atlas_orientation`: an ``asr`` stack back into the image's ``orientation``."""
    from brainglobe_space import AnatomicalSpace

    return np.ascontiguousarray(AnatomicalSpace(ATLAS_ORIENTATION, shape=stack.shape).map_stack_to(orientation, stack))


def centroids_to_atlas_orientation(centroids: np.ndarray, shape: Sequence[int], downsampled: Sequence[int],
                                   orientation: str) -> np.ndarray:
    """Voxel centroids ``(n, 3)`` of the full image -> continuous coordinates of the downsampled ``asr`` volume.

    ``shape`` and ``downsampled`` are the full and the downsampled shapes, image axis order. The scale is their
    ratio, not voxel size over atlas resolution: the downsampled shape is rounded, so its voxels are not exactly
    the atlas's, and a point must land where :func:`downsample_volume` put its voxel (the registration then
    absorbs the small scale difference). A result ``x`` lies in voxel ``floor(x)`` of the ``asr`` volume.
    """
    from brainglobe_space import AnatomicalSpace

    scale = np.asarray(downsampled, float) / np.asarray(shape, float)
    points = (np.asarray(centroids, float).reshape(-1, 3) + 0.5) * scale
    return AnatomicalSpace(orientation, shape=tuple(downsampled)).map_points_to(ATLAS_ORIENTATION, points)


__all__ = ["ATLAS_ORIENTATION", "atlas_axis_of", "centroids_to_atlas_orientation",
           "check_orientation", "check_voxel_size", "default_slab_planes", "downsample_volume", "downsampled_shape",
           "from_atlas_orientation", "shrink_plane", "to_atlas_orientation"]

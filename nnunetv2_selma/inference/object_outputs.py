"""What ``nnUNetv2_selma_objects`` writes once the objects are merged: the instance labels, the density map
(TIFF or OME-Zarr), ``objects.csv``, the volume histogram of ``summary.json`` and the MIP picture.

Every file appears whole or not at all: the labels go through a :class:`~nnunetv2_selma.volumes.MaskWriter`
(temporary path, moved into place on commit), the others are written beside their place and renamed.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import atomic_path, write_atomic
from nnunetv2_selma.volumes import create_mask_writer
from nnunetv2_selma.volumes.images import IDENTITY_GEOMETRY
from nnunetv2_selma.volumes.writers import write_blocks

DENSITY_TIFF = "density.tif"
DENSITY_OME_ZARR = "density.ome.zarr"
DENSITY_FILES = {"tif": DENSITY_TIFF, "ome-zarr": DENSITY_OME_ZARR}
DENSITY_PICTURE = "density_mip.png"


def write_labels(path: Path, shape: Sequence[int], regions: Sequence[tuple[tuple[int, int], ...]],
                 load: Callable[[int], np.ndarray], geometry: dict | None, slice_names: Sequence[str] | None) -> None:
    """Write uint32 instance labels to ``path`` (any kind :func:`create_mask_writer` takes) from blocks:
    ``regions[i]`` is block ``i``'s ``(start, stop)`` per axis, ``load(i)`` its labels (e.g. memory-mapped).

    Written by :func:`~nnunetv2_selma.volumes.writers.write_blocks` (block by block, or plane by plane with only
    the blocks a plane crosses open). Nothing is left at ``path`` on failure.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    placed = [(tuple(slice(a, b) for a, b in region), i) for i, region in enumerate(regions)]
    with create_mask_writer(path, path.with_name(f".{path.name}.tmp"), shape, geometry, slice_names,
                            dtype=np.uint32) as writer:
        write_blocks(writer, placed, load)


def volume_histogram(count: np.ndarray) -> dict:
    """Object volumes in power-of-two bins: ``edges`` [1, 2, 4, ...], ``counts[i]`` in [edges[i], edges[i+1])."""
    top = int(count.max()) if count.size else 1
    edges = [1 << k for k in range(max(1, top.bit_length()) + 1)]
    counts, _ = np.histogram(count, bins=edges)
    return {"edges": edges, "counts": [int(c) for c in counts]}


def density_map(centroids: np.ndarray, shape: Sequence[int], voxels: int) -> np.ndarray:
    """Objects per coarse voxel of ``voxels`` per side (uint32, shape ``ceil(shape / voxels)``), each object
    counted once, in the coarse voxel holding its centroid."""
    grid = tuple(math.ceil(s / voxels) for s in shape)
    out = np.zeros(grid, np.uint32)
    if len(centroids):
        cells = np.minimum(np.floor(centroids / voxels).astype(np.int64), np.array(grid) - 1)
        np.add.at(out, tuple(cells.T), 1)
    return out


def density_geometry(geometry: dict | None, voxels: int) -> dict:
    """The geometry of the density map over a volume of ``geometry``: spacing ``voxels`` times larger, origin
    at the centre of the first coarse voxel, so that the map overlays the mask in a viewer (napari)."""
    geometry = dict(IDENTITY_GEOMETRY) if geometry is None else dict(geometry)
    spacing = [float(s) for s in geometry["spacing"]]
    geometry["origin"] = tuple(float(o) + s * (voxels - 1) / 2 for o, s in zip(geometry["origin"], spacing))
    geometry["spacing"] = tuple(s * voxels for s in spacing)
    return geometry


def write_density(output_dir: Path, density: np.ndarray, density_format: str, geometry: dict | None,
                  voxels: int) -> str:
    """Write the density map into ``output_dir`` as ``density.tif`` or ``density.ome.zarr`` (uint32 counts,
    scaled and shifted to overlay the volume); returns the file name."""
    name = DENSITY_FILES[density_format]
    if density_format == "tif":
        import tifffile

        with atomic_path(output_dir / name) as tmp:
            tifffile.imwrite(tmp, density, compression="zlib", metadata={"axes": "ZYX"})
        return name
    final = output_dir / name
    if final.exists():  # a run killed after writing it and before summary.json: ours, written again
        shutil.rmtree(final)
    with create_mask_writer(final, output_dir / f".{name}.tmp", density.shape, density_geometry(geometry, voxels),
                            dtype=np.uint32, labels=False) as writer:
        writer.write_region(tuple(slice(0, s) for s in density.shape), density)  # ceil(shape / voxels): small
    return name


def assemble_mip(shape: Sequence[int], regions: Sequence[tuple[tuple[int, int], ...]],
                 load: Callable[[int], np.ndarray]) -> np.ndarray:
    """The z-MIP of the whole volume (``shape[1:]``) from each block's own z-MIP ``load(i)`` over ``regions[i]``."""
    mip = None
    for i, region in enumerate(regions):
        part = load(i)
        if mip is None:
            mip = np.zeros(tuple(shape[1:]), part.dtype)
        view = mip[slice(*region[1]), slice(*region[2])]
        np.maximum(view, part, out=view)
    return mip


def save_density_picture(path: Path, mip: np.ndarray, density: np.ndarray, voxels: int, title: str) -> Path:
    """The z-MIP in grey (1st-99.8th percentile, gamma 0.5 as ``synthetic.pictures``) with the objects per
    column of ``voxels`` x ``voxels`` (density summed over z) over it in colour; empty columns stay clear."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, math.ceil(max(mip.shape) / 2048))  # a picture, not the data: at most ~2k pixels a side
    image = mip[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(image, (1.0, 99.8))
    grey = np.sqrt(np.clip((image - lo) / max(float(hi - lo), 1e-6), 0, 1))
    column = density.sum(axis=0)
    h, w = mip.shape
    scale = 6.0 / max(h, w)
    fig, ax = plt.subplots(figsize=(max(3.0, w * scale + 1.5), max(3.0, h * scale + 0.6)), dpi=150)
    ax.imshow(grey, cmap="gray", extent=(0, w, h, 0), interpolation="nearest")
    shown = ax.imshow(np.ma.masked_equal(column, 0), cmap="magma", alpha=0.55, interpolation="nearest",
                      extent=(0, column.shape[1] * voxels, column.shape[0] * voxels, 0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label=f"objects per {voxels}x{voxels} column (all z)")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def write_csv(path: Path, result: dict, n_images: int) -> None:
    """``objects.csv``: one row per object (id, centroid, voxels, bounding box, mean/max intensity per image)."""
    header = ["id", "centroid_z", "centroid_y", "centroid_x", "voxels", "bbox_z0", "bbox_y0", "bbox_x0",
              "bbox_z1", "bbox_y1", "bbox_x1"]
    for c in range(n_images):
        header += [f"mean_intensity_{c}", f"max_intensity_{c}"]

    def write(f) -> None:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header)
        n = len(result["count"])
        for start in range(0, n, 65536):  # rows built from numpy columns a chunk at a time
            stop = min(n, start + 65536)
            cols = [np.arange(start + 1, stop + 1).tolist(), *result["centroid"][start:stop].T.tolist(),
                    result["count"][start:stop].tolist(), *result["bbox_lo"][start:stop].T.tolist(),
                    *result["bbox_hi"][start:stop].T.tolist()]
            for c in range(n_images):
                cols += [result["intensity_mean"][start:stop, c].tolist(),
                         result["intensity_max"][start:stop, c].tolist()]
            out.writerows(zip(*cols))

    write_atomic(path, write)


__all__ = ["DENSITY_FILES", "DENSITY_OME_ZARR", "DENSITY_PICTURE", "DENSITY_TIFF", "assemble_mip", "density_geometry",
           "density_map", "save_density_picture", "volume_histogram", "write_csv", "write_density", "write_labels"]

"""Objects (connected components) of a mask of any size, with memory bounded by a block.

How the labels stay consistent across block seams
-------------------------------------------------
The mask is cut into cubic blocks (default 256 voxels per side). Each block is labelled on its
own with ``scipy.ndimage.label`` (the connectivity's structuring element) and reduced to a small
table per local object: voxel count, first voxel (raster order), coordinate sums, bounding box,
intensity sums and maxima per given image, plus the block's six faces of local labels and the
z maximum-intensity projection of its region. That table is stored atomically in
``OUT_DIR/.partial/blocks/`` (a killed run restarted with the same arguments skips the blocks
already there).

The merge then looks at every pair of blocks that touch by a face, an edge or a corner (13
forward neighbours per block) and joins two local objects when a voxel of one is a neighbour of a
voxel of the other under the connectivity (6: faces; 18: faces and edges; 26: corners too). The
joins are resolved in one union-find pass (``scipy.sparse.csgraph.connected_components``) over
all local objects, so the memory of the merge is the number of objects, not voxels. Global ids
are assigned in raster order of each object's first voxel, which is the order
``scipy.ndimage.label`` uses on the whole volume: the labels are identical to it (objects
smaller than ``min_voxels`` are dropped and the ids stay consecutive).

A second pass, only when instance labels are asked for, labels each block again (deterministic),
maps local to global ids and writes them (uint32) through the same writers as ``predict_large``.

Outputs in ``OUT_DIR``: ``objects.csv``, ``summary.json``, ``density.tif`` or ``density.ome.zarr``
(objects per coarse voxel, counted at the centroid) and ``density_mip.png`` (MIP with the density over
it), written by :mod:`~nnunetv2_selma.inference.object_outputs`.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import atomic_path, discard_path
from nnunetv2_selma.inference.block_jobs import block_file, load_block, save_block, worker_cached
from nnunetv2_selma.inference.blocks import row_regions
from nnunetv2_selma.inference.dask_executor import run_blocks
from nnunetv2_selma.inference.object_outputs import (
    DENSITY_FILES,
    DENSITY_PICTURE,
    assemble_mip,
    density_map,
    save_density_picture,
    volume_histogram,
    write_csv,
    write_density,
    write_labels,
)
from nnunetv2_selma.inference.resume import (
    ResumableRun,
    describe_existing,
    describe_mismatch,
    input_content_signature,
)
from nnunetv2_selma.volumes import VolumeSource, open_volume
from nnunetv2_selma.volumes.writers import check_output_path

logger = logging.getLogger(__name__)

#: connectivity (neighbours of a voxel) -> rank of scipy's ``generate_binary_structure(3, rank)``
CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}
#: block edge: at 256^3 a block needs ~0.2 GB (sparse mask) to ~0.5 GB (40% foreground)
DEFAULT_OBJECT_BLOCK = 256
DEFAULT_DENSITY_VOXELS = 25
PARTIAL_DIR = ".partial"
OBJECTS_CSV = "objects.csv"
SUMMARY_JSON = "summary.json"
#: the 13 block offsets that, with their opposites, are all neighbours of a block
_FORWARD = tuple(d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0))


@dataclass(frozen=True)
class ObjectBlock:
    """One block of the grid: ``grid`` its position (z, y, x), ``region`` per axis ``(start, stop)``."""

    index: int
    grid: tuple[int, int, int]
    region: tuple[tuple[int, int], ...]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in self.region)


def _block_sizes(block_size: int | Sequence[int]) -> tuple[int, int, int]:
    sizes = [block_size] if np.isscalar(block_size) else list(block_size)
    if len(sizes) not in (1, 3) or any(int(b) != b or b < 1 for b in sizes):
        raise ValueError(f"block_size {block_size}: expected one integer or three (z, y, x), each >= 1")
    return tuple(int(b) for b in sizes * (3 // len(sizes)))


def plan_object_blocks(shape: Sequence[int], block_size: int | Sequence[int]) -> tuple[ObjectBlock, ...]:
    """Cut ``shape`` (z, y, x) into blocks of ``block_size`` (last ones smaller), in raster order."""
    sizes = _block_sizes(block_size)
    per_axis = [[(a, min(a + b, s)) for a in range(0, s, b)] for s, b in zip(shape, sizes)]
    grids = itertools.product(*[range(len(p)) for p in per_axis])
    return tuple(ObjectBlock(i, g, tuple(per_axis[a][g[a]] for a in range(3))) for i, g in enumerate(grids))


@dataclass(frozen=True)
class ObjectJob:
    """Everything a worker needs to measure or relabel a block (picklable)."""

    mask: str
    images: tuple[str, ...]
    shape: tuple[int, int, int]
    connectivity: int
    work_dir: str
    content: str  # the inputs' content signature: cached readers of a changed file are not reused

    @property
    def blocks_dir(self) -> Path:
        return Path(self.work_dir) / "blocks"

    @property
    def labels_dir(self) -> Path:
        return Path(self.work_dir) / "labels"


def _structure(connectivity: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity])


def _sources(job: ObjectJob) -> list[VolumeSource]:
    return worker_cached(("object_sources", job.mask, job.images, job.content),
                   lambda: [open_volume(p) for p in (job.mask, *job.images)])


def _label_block(job: ObjectJob, block: ObjectBlock) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    mask = _sources(job)[0].read(block.slices)
    labels, n = ndimage.label(mask != 0, structure=_structure(job.connectivity))
    return labels, int(n)


def block_table_file(job: ObjectJob, index: int) -> Path:
    return job.blocks_dir / f"block_{index:06d}.npz"


def measure_block(job: ObjectJob, block: ObjectBlock) -> int:
    """Label one block and store its table of local objects atomically; returns the block index.

    Stored arrays (``n`` local objects): ``count`` (n,), ``first`` (n,) global raster index of the
    first voxel, ``coord_sum`` (n, 3) float64 (exact: integer sums < 2^53), ``bbox_lo``/``bbox_hi``
    (n, 3) global, stop exclusive, ``intensity_sum``/``intensity_max`` (n, images), ``face_{axis}_{0|1}``
    local labels on the block's first/last plane per axis, ``mip`` the z-MIP of the first image (of the
    mask when no image is given).
    """
    from scipy import ndimage

    labels, n = _label_block(job, block)
    sources = _sources(job)
    origin = np.array([a for a, _ in block.region], dtype=np.int64)
    flat = labels.reshape(-1)
    idx = np.flatnonzero(flat)
    lab = flat[idx]
    # ndimage.label numbers objects in raster order of their first voxel: object k first appears where
    # the running maximum of the labels met so far steps up to k
    first_local = idx[np.r_[True, lab[1:] > np.maximum.accumulate(lab)[:-1]]] if n else idx[:0]
    if first_local.size != n:  # never seen; stay exact if scipy ever numbers otherwise
        first_local = np.full(n + 1, flat.size, np.int64)
        np.minimum.at(first_local, lab, idx)
        first_local = first_local[1:]
    coords = np.unravel_index(idx, labels.shape)
    first = np.ravel_multi_index(tuple(c[...] + o for c, o in zip(np.unravel_index(first_local, labels.shape),
                                                                    origin)), job.shape)
    count = np.bincount(lab, minlength=n + 1)[1:].astype(np.int64)
    coord_sum = np.stack([np.bincount(lab, weights=c + o, minlength=n + 1)[1:] for c, o in zip(coords, origin)],
                         axis=1) if n else np.zeros((0, 3))
    boxes = ndimage.find_objects(labels, n)
    bbox_lo = np.array([[s.start for s in box] for box in boxes], dtype=np.int64).reshape(n, 3) + origin
    bbox_hi = np.array([[s.stop for s in box] for box in boxes], dtype=np.int64).reshape(n, 3) + origin
    sums, maxima = [], []
    mip = None
    for c, source in enumerate(sources[1:]):
        image = source.read(block.slices)
        if c == 0:
            mip = image.max(axis=0)
        values = image.reshape(-1)[idx].astype(np.float64)
        sums.append(np.bincount(lab, weights=values, minlength=n + 1)[1:])
        peak = np.full(n + 1, -np.inf)
        np.maximum.at(peak, lab, values)
        maxima.append(peak[1:])
    if mip is None:
        mip = (labels != 0).max(axis=0).astype(np.uint8)
    faces = {}
    for axis in range(3):
        for side, pos in ((0, 0), (1, -1)):
            faces[f"face_{axis}_{side}"] = np.take(labels, pos, axis=axis).astype(np.uint32)
    images = len(sources) - 1
    table = {"n": np.array(n), "count": count, "first": first.astype(np.int64), "coord_sum": coord_sum,
             "bbox_lo": bbox_lo, "bbox_hi": bbox_hi,
             "intensity_sum": np.stack(sums, axis=1) if sums else np.zeros((n, 0)),
             "intensity_max": np.stack(maxima, axis=1) if maxima else np.zeros((n, 0)),
             "mip": mip, **faces}
    assert table["intensity_sum"].shape == (n, images)
    with atomic_path(block_table_file(job, block.index), unique=True) as tmp:
        np.savez(tmp, **table)
    return block.index


def _seam_pieces(face_a: np.ndarray, face_b: np.ndarray, d: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of block A and of its neighbour B (offset ``d``) that lie on their common face,
    edge or corner, as arrays over the axes where ``d`` is 0 (same extent in both blocks)."""
    moving = [a for a in range(3) if d[a] != 0]
    a_piece, b_piece = face_a, face_b
    # each face lost its own axis (the first moving one); index the other moving axes in what remains
    for axis in reversed(moving[1:]):
        k = axis - 1  # position of this axis in the face array (moving[0] < axis was removed)
        a_piece = np.take(a_piece, -1 if d[axis] > 0 else 0, axis=k)
        b_piece = np.take(b_piece, 0 if d[axis] > 0 else -1, axis=k)
    return a_piece, b_piece


def _seam_pairs(a_piece: np.ndarray, b_piece: np.ndarray, moving: int, rank: int) -> np.ndarray:
    """(k, 2) local label pairs (A, B) of neighbouring foreground voxels across a seam.

    A voxel of A at position ``p`` (over the free axes) touches B at ``p + s`` for every shift ``s`` in
    {-1, 0, 1}^free whose non-zero entries, with the ``moving`` axes crossed, number at most ``rank``.
    """
    free = a_piece.ndim
    pairs = []
    for s in itertools.product((-1, 0, 1), repeat=free):
        if moving + sum(1 for v in s if v) > rank:
            continue
        a_sl = tuple(slice(max(0, -v), n - max(0, v)) for v, n in zip(s, a_piece.shape))
        b_sl = tuple(slice(max(0, v), n - max(0, -v)) for v, n in zip(s, b_piece.shape))
        a, b = a_piece[a_sl], b_piece[b_sl]
        both = (a != 0) & (b != 0)
        if both.any():
            pairs.append(np.stack([a[both], b[both]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def merge_block_tables(job: ObjectJob, blocks: Sequence[ObjectBlock], min_voxels: int = 1) -> dict:
    """Join the local objects of all blocks across seams and number the result as ``ndimage.label`` would.

    Returns
    -------
    dict of arrays over the K kept objects (ids 1..K in this order): ``count``, ``centroid`` (K, 3),
    ``bbox_lo``/``bbox_hi`` (K, 3), ``intensity_mean``/``intensity_max`` (K, images), and
    ``node_ids`` (uint32, one per local object of every block in block order: its global id, 0 when
    dropped), ``offsets`` (first node of each block).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    tables = [np.load(block_table_file(job, b.index)) for b in blocks]
    sizes = np.array([int(t["n"]) for t in tables], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    by_grid = {b.grid: b for b in blocks}
    rank = CONNECTIVITY_RANK[job.connectivity]
    edges = []
    for b in blocks:
        if not sizes[b.index]:
            continue
        for d in _FORWARD:
            other = by_grid.get(tuple(g + v for g, v in zip(b.grid, d)))
            if other is None or not sizes[other.index]:
                continue
            moving = [a for a in range(3) if d[a]]
            if len(moving) > rank:
                continue  # e.g. a corner under 6-connectivity: no voxel pair touches
            first = moving[0]
            face_a = tables[b.index][f"face_{first}_{1 if d[first] > 0 else 0}"]
            face_b = tables[other.index][f"face_{first}_{0 if d[first] > 0 else 1}"]
            a_piece, b_piece = _seam_pieces(face_a, face_b, d)
            pairs = _seam_pairs(a_piece, b_piece, len(moving), rank)
            if pairs.size:
                edges.append(np.stack([pairs[:, 0] - 1 + offsets[b.index], pairs[:, 1] - 1 + offsets[other.index]],
                                      axis=1))
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(total, total))
    n_comp, comp = connected_components(graph, directed=False) if total else (0, np.zeros(0, np.int64))

    def cat(name: str, width: int | None = None) -> np.ndarray:
        arrays = [t[name] for t in tables]
        return np.concatenate(arrays) if arrays else np.zeros((0,) if width is None else (0, width))

    n_images = len(job.images)
    count = np.zeros(n_comp, np.int64)
    np.add.at(count, comp, cat("count"))
    first = np.full(n_comp, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, comp, cat("first"))
    coord_sum = np.zeros((n_comp, 3))
    np.add.at(coord_sum, comp, cat("coord_sum", 3))
    lo = np.full((n_comp, 3), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(lo, comp, cat("bbox_lo", 3))
    hi = np.zeros((n_comp, 3), np.int64)
    np.maximum.at(hi, comp, cat("bbox_hi", 3))
    isum = np.zeros((n_comp, n_images))
    np.add.at(isum, comp, cat("intensity_sum", n_images))
    imax = np.full((n_comp, n_images), -np.inf)
    np.maximum.at(imax, comp, cat("intensity_max", n_images))

    kept = np.flatnonzero(count >= min_voxels)
    kept = kept[np.argsort(first[kept], kind="stable")]
    ids = np.zeros(n_comp, np.uint32)
    ids[kept] = np.arange(1, kept.size + 1, dtype=np.uint32)
    c = count[kept]
    return {"count": c, "centroid": coord_sum[kept] / np.maximum(c, 1)[:, None], "bbox_lo": lo[kept],
            "bbox_hi": hi[kept], "intensity_mean": isum[kept] / np.maximum(c, 1)[:, None],
            "intensity_max": imax[kept], "node_ids": ids[comp], "offsets": offsets[:-1]}


def relabel_block(job: ObjectJob, block: ObjectBlock) -> int:
    """Label a block again, map local ids to global ones (``node_ids.npy``) and store it (uint32)."""
    labels, n = _label_block(job, block)
    node_ids = np.load(Path(job.work_dir) / "node_ids.npy", mmap_mode="r")  # only this block's part is read
    offsets = np.load(Path(job.work_dir) / "offsets.npy", mmap_mode="r")
    lut = np.zeros(n + 1, np.uint32)
    lut[1:] = node_ids[offsets[block.index]: offsets[block.index] + n]
    save_block(job.labels_dir, block.index, lut[labels])
    return block.index


def _refuse_non_finite_mask(source: VolumeSource, max_voxels: int = 2**24) -> None:
    """Raise ValueError naming the plane of the first NaN/inf voxel of a float mask (streamed; integer masks
    cannot hold one). ``mask != 0`` would make each NaN a one-voxel object."""
    if source.dtype.kind != "f":
        return
    for region in row_regions(source.shape, max_voxels):
        values = source.read(region)
        bad = ~np.isfinite(values)
        if bad.any():
            plane = int(np.flatnonzero(bad.any(axis=(1, 2)))[0])
            z = region[0].start + plane
            raise ValueError(f"{source.where(z)}: the mask holds {int(bad[plane].sum())} NaN or infinite voxel(s) "
                             f"in this plane; expected finite values, non-zero = foreground (a NaN is neither "
                             f"foreground nor background). Set them to 0 or 1 in the mask and rerun.")


def measure_objects(mask: str | Path, output_dir: str | Path, images: Sequence[str | Path] = (),
                    block_size: int | Sequence[int] | None = None, connectivity: int = 26,
                    min_voxels: int = 1, labels: str | Path | None = None,
                    density_voxels: int = DEFAULT_DENSITY_VOXELS, workers: int | None = None,
                    scheduler: str | None = None, progress: bool = True, density_format: str | None = None,
                    overwrite: bool = False) -> Path:
    """Connected components of a mask of any size, block by block, resumably, with per-object statistics.

    Parameters
    ----------
    mask : every volume kind ``predict_large`` reads (TIFF-slice folder, 3D ``.tif``, ``.b2nd``, OME-Zarr,
        ``.nii.gz``...). Non-zero voxels are foreground (all labels of a multi-class mask together).
    output_dir : folder for ``objects.csv``, ``summary.json``, ``density.tif`` (or ``.ome.zarr``), ``density_mip.png``;
        created if missing. Partial results live in ``output_dir/.partial`` until the run ends.
    images : intensity volumes of the mask's shape (e.g. the channels it was predicted from): mean and max
        intensity per object per image; the first one is the picture's MIP.
    block_size : block edge (int or (z, y, x)); default ``DEFAULT_OBJECT_BLOCK`` (256). Memory of a block
        is about 8 bytes per voxel plus 50 per foreground voxel (traced on 128^3: 12 bytes/voxel at 9%
        foreground, 29 at 41%), plus one table row per object for the merge.
    connectivity : 6 (faces), 18 (faces, edges) or 26 (faces, edges, corners), as ``ndimage.label``'s
        ``generate_binary_structure(3, 1 | 2 | 3)``.
    min_voxels : objects with fewer voxels are dropped (not counted, not labelled); ids stay consecutive.
    labels : optional path of a uint32 instance-label volume (kinds as ``predict_large``'s output; a path
        without suffix is a folder of TIFF slices; ``.ome.zarr``: a multiscale OME-Zarr that napari opens as a
        Labels layer). Ids equal ``scipy.ndimage.label``'s on the whole mask.
    density_voxels : coarse voxel edge of the density map.
    density_format : ``"tif"`` (``density.tif``) or ``"ome-zarr"`` (``density.ome.zarr``: scale and origin
        set so that it overlays the mask in napari); default ``"ome-zarr"`` when ``labels`` is OME-Zarr, else
        ``"tif"``.
    workers, scheduler : run the blocks on a local ``dask.distributed`` cluster of N processes, or on an
        existing scheduler (serial in this process when neither is given).
    progress : show a progress bar.
    overwrite : replace files of the names this run writes (``objects.csv``, the density map, its picture)
        that ``output_dir`` already holds, the results or the partial run of another objects run there (a
        partial run of other arguments is discarded and this one starts afresh), and what ``labels`` already
        holds (replaced when the new labels are written); without it they are refused before any work.

    Returns
    -------
    ``output_dir``. ``summary.json`` holds ``count``, ``total_voxels``, ``volume_histogram``, the arguments
    and a signature of the input and of every argument that changes what is written; a rerun with the same
    arguments on the same input does nothing, and a killed run resumes only with the same arguments.

    Raises
    ------
    FileNotFoundError for a missing input; ValueError naming the file for an image whose shape differs from
    the mask's, a mask holding NaN or infinite voxels, a bad argument, an unsupported labels path or an
    ``output_dir`` that is a file; FileExistsError when ``output_dir`` holds the results of another run or
    files of the output names or ``labels`` exists, or a partial run of other arguments is there (unless
    ``overwrite``; the message names each argument that differs; nothing is overwritten).
    """
    setup = _prepare(mask, output_dir, images, block_size, connectivity, min_voxels, labels, density_voxels,
                     workers, scheduler, density_format)
    run = ResumableRun(setup.output_dir / PARTIAL_DIR, setup.signature, "output folder")
    if _already_measured(setup, run, overwrite):
        return setup.output_dir
    job, labels_done = _resume_or_start(setup, run, overwrite)
    run_info = run.begin_run(blocks=len(setup.blocks), measured=0, relabelled=0, seconds={})
    passes = _BlockPasses(run, run_info, job, workers, scheduler, progress)
    passes.run(measure_block, [b for b in setup.blocks if not block_table_file(job, b.index).is_file()],
               "measured", "objects")
    t0 = time.perf_counter()
    result = merge_block_tables(job, setup.blocks, min_voxels)
    run_info["seconds"]["merge"] = time.perf_counter() - t0
    if setup.labels is not None:
        _write_label_volume(setup, run, passes, result, labels_done, overwrite)
    _write_results(setup, run, job, result)
    return setup.output_dir


@dataclass(frozen=True)
class _ObjectSetup:
    """The checked arguments of an objects run, its open inputs, blocks, signature and settings."""

    mask: Path
    images: tuple[Path, ...]
    output_dir: Path
    labels: Path | None
    sources: list[VolumeSource]
    shape: tuple[int, int, int]
    blocks: tuple[ObjectBlock, ...]
    connectivity: int
    min_voxels: int
    density_voxels: int
    density_format: str
    signature: dict
    settings: dict


def _prepare(mask, output_dir, images, block_size, connectivity, min_voxels, labels, density_voxels, workers,
             scheduler, density_format) -> _ObjectSetup:
    """Check the arguments, open the inputs, cut the blocks and make the run's signature; no work yet."""
    mask = Path(mask).resolve()
    block_size = DEFAULT_OBJECT_BLOCK if block_size is None else block_size
    output_dir = Path(output_dir).resolve()
    images = tuple(Path(p).resolve() for p in images)
    if connectivity not in CONNECTIVITY_RANK:
        raise ValueError(f"connectivity {connectivity}: expected 6, 18 or 26")
    for name, value in (("min_voxels", min_voxels), ("density_voxels", density_voxels)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} {value}: expected an integer >= 1")
    if workers is not None and scheduler is not None:
        raise ValueError("give either workers (a local dask cluster) or scheduler (an existing one), not both")
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir}: found a file; expected an output folder (created if missing). "
                         f"Give -o a folder path (objects.csv, summary.json and the density map go inside it).")
    labels = None if labels is None else Path(labels).resolve()
    labels_kind = None if labels is None else check_output_path(labels, "labels")
    if density_format is None:
        density_format = "ome-zarr" if labels_kind == "zarr" else "tif"
    if density_format not in DENSITY_FILES:
        raise ValueError(f"density_format {density_format!r}: expected one of {', '.join(DENSITY_FILES)}")
    sources = [open_volume(mask), *[open_volume(p) for p in images]]
    shape = tuple(int(s) for s in sources[0].shape)
    for p, s in zip(images, sources[1:]):
        if tuple(s.shape) != shape:
            raise ValueError(f"{p}: image of shape {tuple(s.shape)}; expected the mask's shape {shape} ({mask})")
    settings = {"min_voxels": int(min_voxels), "density_voxels": int(density_voxels),
                "labels": None if labels is None else str(labels), "density_format": density_format}
    # every argument that changes what is written, so that a partial run is resumed by the same command only
    # (min_voxels decides the relabelled blocks and the committed labels a rerun would otherwise keep)
    signature = {"inputs": [str(mask), *map(str, images)], "shape": list(shape),
                 "block_size": list(_block_sizes(block_size)), "connectivity": int(connectivity), **settings,
                 "input_content": [input_content_signature(s) for s in sources]}
    return _ObjectSetup(mask, images, output_dir, labels, sources, shape, plan_object_blocks(shape, block_size),
                        int(connectivity), int(min_voxels), int(density_voxels), density_format, signature, settings)


def _already_measured(setup: _ObjectSetup, run: ResumableRun, overwrite: bool) -> bool:
    """True when ``output_dir`` holds this very run's results; the results of another run are refused, or
    with ``overwrite`` stop being ours to resume from."""
    summary_path = setup.output_dir / SUMMARY_JSON
    record = run.finished_record(summary_path, f"the results in {setup.output_dir}",
                                 f"Remove {setup.output_dir} (or choose another) to measure the new content.")
    if record is None:
        return False
    # results of an older version keep the settings beside their signature only
    if run.matches({"signature": {**record.get("settings", {}), **record.get("signature", {})}}):
        logger.info("%s: objects already measured with these arguments; nothing to do", setup.output_dir)
        return True
    if not overwrite:
        raise FileExistsError(f"{setup.output_dir}: holds the results of another objects run; nothing was "
                              f"overwritten. Choose another output folder, remove it, or pass --overwrite.")
    summary_path.unlink()
    return False


def _resume_or_start(setup: _ObjectSetup, run: ResumableRun, overwrite: bool) -> tuple[ObjectJob, bool]:
    """Refuse files of the output names that no run of ours wrote, then resume the partial run or start one
    (every plane checked first). Returns the job and whether the labels were already committed."""
    output_dir, labels = setup.output_dir, setup.labels
    previous = run.previous_state()
    if previous is not None and overwrite and not run.matches(previous):
        logger.warning("%s: discarding a partial run with other %s (--overwrite); starting afresh", run.work_dir,
                       describe_mismatch(previous.get("signature", {}), setup.signature, "then"))
        run.discard()
        previous = None
    if previous is None and not overwrite:
        # a partial run of ours may have written them before it was killed; anything else is someone's file
        taken = [output_dir / n for n in (OBJECTS_CSV, DENSITY_FILES[setup.density_format], DENSITY_PICTURE)
                 if (output_dir / n).exists()]
        if taken:
            raise FileExistsError(f"{output_dir}: already holds {', '.join(p.name for p in taken)}, not written by "
                                  f"an objects run; nothing was overwritten. Choose another output folder, move "
                                  f"them, or pass --overwrite to replace them.")
    # a run stopped after its labels were committed (the writer moves them into place whole) resumes
    # past them; any other labels at that path are someone's file
    labels_done = labels is not None and previous is not None and previous.get("labels_written") == str(labels)
    if labels is not None and not labels_done and not overwrite and labels.exists() \
            and (not labels.is_dir() or any(labels.iterdir())):
        raise FileExistsError(f"{labels}: already holds {describe_existing(labels)}, not written by this objects "
                              f"run; nothing was overwritten. Choose another labels path, remove it, or pass "
                              f"--overwrite to replace it.")
    job = ObjectJob(str(setup.mask), tuple(map(str, setup.images)), setup.shape, setup.connectivity,
                    str(run.work_dir), json.dumps(setup.signature["input_content"]))

    def start() -> dict:
        for s in setup.sources:
            s.check_all_planes()
        _refuse_non_finite_mask(setup.sources[0])
        job.blocks_dir.mkdir(parents=True)
        job.labels_dir.mkdir()
        return {}

    run.resume_or_start(f"To start fresh on the new content, remove {run.work_dir} and rerun.", start,
                        other_run="Rerun with the same arguments to resume it, pass --overwrite to discard it and "
                                  "start afresh, or choose another output folder.")
    return job, labels_done


class _BlockPasses:
    """Runs a pass of block tasks (measure, relabel) with a progress bar, counting the blocks done and the
    seconds of each pass in the run's entry of the progress record."""

    def __init__(self, run: ResumableRun, run_info: dict, job: ObjectJob, workers, scheduler, progress: bool):
        self.run_record, self.run_info, self.job = run, run_info, job
        self.workers, self.scheduler, self.progress = workers, scheduler, progress

    def run(self, task, pending: list[ObjectBlock], counter: str, desc: str) -> None:
        from tqdm import tqdm

        t0 = time.perf_counter()
        bar = tqdm(total=len(pending), unit="block", desc=desc, disable=not self.progress)

        def finished(_index: int) -> None:
            self.run_info[counter] += 1
            bar.update(1)

        try:
            run_blocks(task, self.job, pending, self.workers, self.scheduler, finished)
        finally:
            bar.close()
            self.run_info["seconds"][counter] = time.perf_counter() - t0
            self.run_record.save()


def _write_label_volume(setup: _ObjectSetup, run: ResumableRun, passes: _BlockPasses, result: dict,
                        labels_done: bool, overwrite: bool) -> None:
    """Relabel the blocks with the global ids and write the instance-label volume (once: a rerun after it
    was committed skips the writing); with ``overwrite`` what the labels path held goes first (a folder
    cannot be renamed over)."""
    job, blocks = passes.job, setup.blocks
    np.save(run.work_dir / "node_ids.npy", result["node_ids"])
    np.save(run.work_dir / "offsets.npy", result["offsets"])
    passes.run(relabel_block, [b for b in blocks if not block_file(job.labels_dir, b.index).is_file()],
               "relabelled", "labels")
    if not labels_done:
        if overwrite:
            discard_path(setup.labels)
        write_labels(setup.labels, setup.shape, [b.region for b in blocks],
                     lambda i: load_block(job.labels_dir, blocks[i].index), setup.sources[0].geometry,
                     setup.sources[0].slice_names())
        run.state["labels_written"] = str(setup.labels)
        run.save()


def _write_results(setup: _ObjectSetup, run: ResumableRun, job: ObjectJob, result: dict) -> None:
    """The table, the density map, its picture and, last, the summary that marks the results finished."""
    output_dir, shape, blocks, count = setup.output_dir, setup.shape, setup.blocks, result["count"]
    density = density_map(result["centroid"], shape, setup.density_voxels)
    density_file = write_density(output_dir, density, setup.density_format, setup.sources[0].geometry,
                                 setup.density_voxels)
    write_csv(output_dir / OBJECTS_CSV, result, len(setup.images))
    mip = assemble_mip(shape, [b.region for b in blocks],
                       lambda i: np.load(block_table_file(job, blocks[i].index))["mip"])
    save_density_picture(output_dir / DENSITY_PICTURE, mip, density, setup.density_voxels,
                         f"{setup.mask.name}: {len(count)} objects (connectivity {setup.connectivity}, "
                         f">= {setup.min_voxels} voxels)")
    run.complete(output_dir / SUMMARY_JSON, {
        "count": int(len(count)), "total_voxels": int(count.sum()),
        "mean_voxels": float(count.mean()) if count.size else 0.0,
        "median_voxels": float(np.median(count)) if count.size else 0.0,
        "volume_histogram": volume_histogram(count), "density_shape": list(density.shape),
        "blocks": len(blocks), "settings": setup.settings,
        "files": {"objects": OBJECTS_CSV, "density": density_file, "picture": DENSITY_PICTURE,
                  "labels": setup.settings["labels"]}})


# density_map and save_density_picture live in object_outputs; kept importable from here
__all__ = ["CONNECTIVITY_RANK", "ObjectBlock", "ObjectJob", "density_map", "measure_block", "measure_objects",
           "merge_block_tables", "plan_object_blocks", "relabel_block", "save_density_picture"]

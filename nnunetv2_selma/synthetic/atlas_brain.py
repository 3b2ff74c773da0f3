"""A toy BrainGlobe atlas on disk and a test brain warped from it, with cells in known regions.

:func:`write_toy_atlas` writes a small atlas in brainglobe-atlasapi's own v3 layout (``manifest.json``,
``terminology.csv``, the template, annotation and hemispheres as OME-Zarr), so the real
``BrainGlobeAtlas(name, brainglobe_dir=..., check_latest=False)`` loads it offline. Its brain is an ellipsoid:
a cortex shell split into anterior and posterior parts around inner nuclei (striatum, thalamus,
hypothalamus, midbrain), left and right. The template has a grey level per region plus smooth texture.

:func:`write_test_brain` warps that template by a known affine and a smooth deformation onto another voxel
size and orientation, places cells in the cores of known regions, and writes the objects folder with
``nnUNetv2_selma_objects``'s own code (:func:`~nnunetv2_selma.inference.objects.measure_objects`), with the
truth beside it. Needs the ``[atlas]`` extra (brainglobe-space, and ngff-zarr that brainglobe-atlasapi brings).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TOY_ATLAS_NAME = "selma_toy"
TOY_RESOLUTION = 50
TOY_SHAPE = (40, 32, 48)  # asr: anterior-posterior, superior-inferior, right-left
TOY_VERSION = "1.0"

#: id, acronym, name, parent id (None for root): the hierarchy; leaves are the regions drawn
TOY_STRUCTURES = (
    (997, "root", "root", None),
    (8, "grey", "Basic cell groups and regions", 997),
    (100, "CTX", "Cortex", 8),
    (101, "CTXa", "Anterior cortex", 100),
    (102, "CTXp", "Posterior cortex", 100),
    (200, "CNU", "Cerebral nuclei", 8),
    (201, "STR", "Striatum", 200),
    (300, "IB", "Interbrain", 8),
    (301, "TH", "Thalamus", 300),
    (302, "HY", "Hypothalamus", 300),
    (303, "MB", "Midbrain", 8),
)
TOY_LEAVES = (101, 102, 201, 301, 302, 303)
INNER_LEAVES = (201, 301, 302, 303)
#: cells per leaf and hemisphere (left, right) in the test brain
TEST_CELLS = {101: (40, 32), 102: (30, 36), 201: (12, 9), 301: (12, 14), 302: (5, 4), 303: (24, 16)}
#: grey levels of the template per leaf (background 0)
_LEVELS = {101: 900, 102: 1200, 201: 2200, 301: 1700, 302: 2600, 303: 1450}


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum(((g + 0.5 - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def toy_annotation(shape: Sequence[int] = TOY_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Annotation (uint32 leaf ids) and hemispheres (uint8: 1 left, 2 right) of the toy brain in ``asr``."""
    shape = tuple(shape)
    z, y, x = (s / 2 for s in shape)
    brain = _ellipsoid(shape, (z, y, x), (0.44 * shape[0], 0.42 * shape[1], 0.44 * shape[2]))
    inner = _ellipsoid(shape, (z, y * 1.05, x), (0.32 * shape[0], 0.28 * shape[1], 0.33 * shape[2]))
    ap = np.arange(shape[0])[:, None, None] + 0.5
    annotation = np.zeros(shape, np.uint32)
    annotation[brain] = 102
    annotation[brain & (ap < z)] = 101
    annotation[inner] = 303
    for leaf, centre, radii in ((201, (0.36, 0.45, 0.30), (0.14, 0.15, 0.13)),
                                (201, (0.36, 0.45, 0.70), (0.14, 0.15, 0.13)),
                                (301, (0.56, 0.42, 0.50), (0.14, 0.14, 0.22)),
                                (302, (0.56, 0.68, 0.50), (0.12, 0.10, 0.18))):
        blob = _ellipsoid(shape, [c * s for c, s in zip(centre, shape)], [r * s for r, s in zip(radii, shape)])
        annotation[blob & inner] = leaf
    hemispheres = np.where(np.arange(shape[2]) + 0.5 < shape[2] / 2, 2, 1).astype(np.uint8)  # axis 2 starts right
    hemispheres = np.broadcast_to(hemispheres, shape).copy()
    return annotation, hemispheres


def toy_template(annotation: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint16 template: a grey level per region, smooth texture and a little noise (registration needs texture)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    image = np.zeros(annotation.shape, np.float32)
    for leaf, level in _LEVELS.items():
        image[annotation == leaf] = level
    image = ndimage.gaussian_filter(image, 0.7)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, annotation.shape).astype(np.float32), 2.0)
    image *= 1 + 1.5 * texture
    image += rng.normal(0, 20, annotation.shape)
    return np.clip(image, 0, 65535).astype(np.uint16)


def _write_ome_zarr(path: Path, data: np.ndarray, resolution_um: float) -> None:
    import ngff_zarr as nz

    image = nz.to_ngff_image(data, dims=["z", "y", "x"], scale={d: resolution_um / 1000 for d in "zyx"},
                             translation={d: 0.0 for d in "zyx"})
    nz.to_ngff_zarr(str(path), nz.to_multiscales(image, scale_factors=[], chunks=64), version="0.5")


def write_toy_atlas(brainglobe_dir: str | Path, name: str = TOY_ATLAS_NAME, resolution: int = TOY_RESOLUTION,
                    shape: Sequence[int] = TOY_SHAPE, seed: int = 0) -> str:
    """Write the toy atlas under ``brainglobe_dir`` in brainglobe-atlasapi's v3 layout; return its full name.

    ``BrainGlobeAtlas(f"{name}_{resolution}um", brainglobe_dir=brainglobe_dir, check_latest=False)`` loads it
    with no network. ``resolution`` must be an integer (BrainGlobe names the atlas folder after it).
    """
    if int(resolution) != resolution:
        raise ValueError(f"resolution {resolution}: expected an integer number of micrometres")
    resolution = int(resolution)
    full_name = f"{name}_{resolution}um"
    version = TOY_VERSION.replace(".", "_")
    root = Path(brainglobe_dir) / "brainglobe-atlasapi"
    annotation, hemispheres = toy_annotation(shape)
    template = toy_template(annotation, seed)
    stubs = {"terminology": f"terminologies/{name}-terminology/{version}",
             "template": f"templates/{name}-template/{version}",
             "annotation_set": f"annotation-sets/{name}-annotation/{version}",
             "coordinate_space": f"coordinate-spaces/{name}-space/{version}"}
    for stub in stubs.values():
        (root / stub).mkdir(parents=True, exist_ok=True)
    with open(root / stubs["terminology"] / "terminology.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["identifier", "parent_identifier", "annotation_value", "name", "abbreviation",
                      "color_hex_triplet", "root_identifier_path"])
        parents = {s[0]: s[3] for s in TOY_STRUCTURES}
        for sid, acronym, region_name, parent in TOY_STRUCTURES:
            path, node = [], sid
            while node is not None:
                path.insert(0, node)
                node = parents[node]
            colour = "#{:02x}{:02x}{:02x}".format(*(int(v) for v in np.random.default_rng(sid).integers(40, 255, 3)))
            out.writerow([sid, "" if parent is None else parent, sid, region_name, acronym, colour,
                          "[" + ", ".join(map(str, path)) + "]"])
    _write_ome_zarr(root / stubs["template"] / "template.ome.zarr", template, resolution)
    _write_ome_zarr(root / stubs["annotation_set"] / "annotations_compressed.ome.zarr", annotation, resolution)
    _write_ome_zarr(root / stubs["annotation_set"] / "hemispheres.ome.zarr", hemispheres, resolution)
    component = {k: {"name": stub.split("/")[1], "version": TOY_VERSION, "location": f"/{stub}"}
                 for k, stub in stubs.items()}
    manifest = {"name": name, "citation": "unpublished", "atlas_link": "", "species": "Mus musculus (toy)",
                "symmetric": False, "resolution": [resolution] * 3, "orientation": "asr", "version": TOY_VERSION,
                "shape": [int(s) for s in shape], "additional_references": [], "atlas_packager": "nnunetv2-selma tests",
                "terminology": component["terminology"], "coordinate_space": component["coordinate_space"],
                "template": component["template"],
                "annotation_set": {**component["annotation_set"], "template": component["template"]}}
    atlas_dir = root / "atlases" / full_name / version
    atlas_dir.mkdir(parents=True, exist_ok=True)
    (atlas_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return full_name


# ---------------------------------------------------------------------------------------------- the test brain
#: the test brain: image axes (z, y, x) start inferior, anterior, left; voxel sizes in that order (um)
TEST_ORIENTATION = "ial"
TEST_VOXEL_SIZE = (40.0, 45.0, 35.0)


def _warp(points_um: np.ndarray, centre_um: np.ndarray, atlas_centre_um: np.ndarray, angle_deg: float = 7.0,
          scale: Sequence[float] = (1.06, 0.95, 1.03), amplitude_um: float = 45.0) -> np.ndarray:
    """The known map sample -> atlas (asr micrometres): rotation about the AP axis, anisotropic scale, a shift,
    and a smooth sinusoidal deformation (``amplitude_um`` at most)."""
    a = np.deg2rad(angle_deg)
    rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    matrix = rotation @ np.diag(scale)
    p = points_um - centre_um
    q = p @ matrix.T + atlas_centre_um + np.array([60.0, -40.0, 30.0])
    wave = 2 * np.pi / 1600.0
    q[:, 0] += amplitude_um * np.sin(wave * p[:, 1])
    q[:, 1] += amplitude_um * np.sin(wave * p[:, 2] + 0.5)
    q[:, 2] += amplitude_um * np.cos(wave * p[:, 0])
    return q


def _axis_permutation(orientation: str) -> list[int]:
    """For each axis of ``orientation``, the ``asr`` axis it shows."""
    pairs = ({"a", "p"}, {"s", "i"}, {"l", "r"})
    return [next(k for k, p in enumerate(pairs) if letter in p) for letter in orientation]


class _SampleGeometry:
    """The test brain's grid in the atlas orientation (asr) and the known map from its voxels to atlas voxels."""

    def __init__(self, atlas_shape: Sequence[int], atlas_resolution: Sequence[float], voxel_size: np.ndarray,
                 orientation: str) -> None:
        self.res = np.asarray(atlas_resolution, float)
        self.asr_voxel = np.empty(3)
        self.asr_voxel[_axis_permutation(orientation)] = voxel_size  # the sample's voxel size along the asr axes
        self.atlas_extent = np.asarray(atlas_shape) * self.res
        self.asr_shape = tuple(int(round(1.15 * e / v)) for e, v in zip(self.atlas_extent, self.asr_voxel))
        self.centre = np.asarray(self.asr_shape) * self.asr_voxel / 2

    def atlas_voxel_of(self, asr_index: np.ndarray) -> np.ndarray:
        """Continuous atlas voxel coordinates (centre of voxel i at i) of sample voxels (asr indices)."""
        return _warp((asr_index + 0.5) * self.asr_voxel, self.centre, self.atlas_extent / 2) / self.res - 0.5


def _render_image(template: np.ndarray, geometry: _SampleGeometry, rng: np.random.Generator) -> np.ndarray:
    """The warped template with noise, plane by plane along asr axis 0 (bounded memory for the large benchmark
    brain)."""
    from scipy import ndimage

    shape = geometry.asr_shape
    image_asr = np.zeros(shape, np.uint16)
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for z in range(shape[0]):
        index = np.stack([np.full(yy.size, z), yy.ravel(), xx.ravel()], axis=1).astype(float)
        coords = geometry.atlas_voxel_of(index).T
        values = ndimage.map_coordinates(template, coords, order=1, cval=0.0)
        values = 0.8 * values + 150 + rng.normal(0, 25, values.shape)
        image_asr[z] = np.clip(values, 0, 65535).reshape(yy.shape).astype(np.uint16)
    return image_asr


def _region_cores(annotation: np.ndarray, hemispheres: np.ndarray, leaves) -> np.ndarray:
    """Atlas voxels at least 2 voxels inside a leaf, labelled ``leaf * 10 + hemisphere``; 0 elsewhere."""
    from scipy import ndimage

    core = np.zeros_like(annotation)
    for leaf in leaves:
        for hemisphere in (1, 2):
            region = (annotation == leaf) & (hemispheres == hemisphere)
            core[ndimage.binary_erosion(region, iterations=2)] = leaf * 10 + hemisphere
    return core


def _place_cells(image_asr: np.ndarray, core: np.ndarray, cells: dict[int, tuple[int, int]],
                 geometry: _SampleGeometry, rng: np.random.Generator) -> tuple[list[tuple], np.ndarray]:
    """Sample voxels whose atlas voxel lies in a region's core, as many per leaf and hemisphere as ``cells`` asks.

    Candidates are drawn at random, not every voxel tried: the large benchmark brain has 10^8 and more.
    Returns a row per cell (sample voxel, atlas voxel, leaf, hemisphere) and the cells' voxels.
    """
    candidates = np.stack([rng.integers(0, n, 400_000) for n in geometry.asr_shape], axis=1)
    candidates = candidates[image_asr[tuple(candidates.T)] > 0]
    atlas_points = geometry.atlas_voxel_of(candidates.astype(float))
    inside = np.all((atlas_points >= 0) & (atlas_points <= np.asarray(core.shape) - 1), axis=1)
    keys = np.zeros(len(candidates), np.int64)
    keys[inside] = core[tuple(np.rint(atlas_points[inside]).astype(int).T)]
    rows: list[tuple] = []
    placed_voxels = np.empty((0, 3), np.int64)
    for leaf, (n_left, n_right) in cells.items():
        for hemisphere, wanted in ((1, n_left), (2, n_right)):
            placed = 0
            for k in np.flatnonzero(keys == leaf * 10 + hemisphere):
                if placed == wanted:
                    break
                v = candidates[k]
                if len(placed_voxels) and np.abs(placed_voxels - v).max(axis=1).min() < 2:
                    continue  # no two cells touch (26-connectivity): each one its own object
                placed_voxels = np.vstack([placed_voxels, v])
                rows.append((v, atlas_points[k], leaf, hemisphere))
                placed += 1
            if placed < wanted:
                raise RuntimeError(f"region {leaf} hemisphere {hemisphere}: room for {placed} cells, asked {wanted}")
    return rows, placed_voxels


def _write_cells_csv(path: Path, sample_points: np.ndarray, rows: list[tuple]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["sample_z", "sample_y", "sample_x", "atlas_z", "atlas_y", "atlas_x", "region_id", "hemisphere"])
        for point, (_, atlas_point, leaf, hemisphere) in zip(sample_points, rows):
            out.writerow([*np.rint(point).astype(int), *np.round(atlas_point, 3), leaf,
                          "left" if hemisphere == 1 else "right"])


def write_test_brain(folder: str | Path, brainglobe_dir: str | Path, atlas_name: str = f"{TOY_ATLAS_NAME}_50um",
                     voxel_size: Sequence[float] = TEST_VOXEL_SIZE, orientation: str = TEST_ORIENTATION,
                     cells: dict[int, tuple[int, int]] | None = None, scale_up: int = 1, as_slices: bool = False,
                     seed: int = 1, with_objects: bool = True) -> dict:
    """The toy atlas's template warped onto a brain of ``voxel_size`` (um, image axes) and ``orientation``.

    Writes in ``folder``: ``brain.tif`` (uint16; or ``brain/`` TIFF slices when ``as_slices``), ``mask.tif``
    (one voxel per cell), ``objects/`` (``measure_objects`` on the mask), ``cells.csv`` (per cell: the sample
    voxel, its atlas voxel under the known map, region and hemisphere) and ``truth.json`` (counts per leaf and
    hemisphere, the arguments). ``scale_up`` divides the voxel size (a brain ``scale_up**3`` times larger).
    Returns ``truth.json``'s content.
    """
    from brainglobe_atlasapi import BrainGlobeAtlas
    from brainglobe_space import AnatomicalSpace

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cells = TEST_CELLS if cells is None else cells
    atlas = BrainGlobeAtlas(atlas_name, brainglobe_dir=brainglobe_dir, check_latest=False)
    annotation, hemispheres = np.asarray(atlas.annotation), np.asarray(atlas.hemispheres)
    voxel_size = np.asarray(voxel_size, float) / scale_up
    geometry = _SampleGeometry(annotation.shape, atlas.resolution, voxel_size, orientation)
    rng = np.random.default_rng(seed)  # one generator, the image's noise drawn before the cells
    image_asr = _render_image(np.asarray(atlas.template).astype(np.float32), geometry, rng)
    rows, placed_voxels = _place_cells(image_asr, _region_cores(annotation, hemispheres, cells), cells, geometry, rng)
    taken = np.zeros(geometry.asr_shape, np.uint8)
    taken[tuple(placed_voxels.T)] = 1

    space = AnatomicalSpace("asr", shape=geometry.asr_shape)
    image = space.map_stack_to(orientation, image_asr)
    mask = space.map_stack_to(orientation, taken)
    sample_points = space.map_points_to(orientation, np.array([r[0] for r in rows], float) + 0.5) - 0.5
    _write_volume(folder / ("brain" if as_slices else "brain.tif"), np.ascontiguousarray(image), as_slices)
    _write_volume(folder / "mask.tif", np.ascontiguousarray(mask), False)
    _write_cells_csv(folder / "cells.csv", sample_points, rows)
    counts = {f"{leaf}_{side}": n for leaf, pair in cells.items() for side, n in zip(("left", "right"), pair)}
    truth = {"atlas": atlas_name, "voxel_size": [float(v) for v in voxel_size], "orientation": orientation,
             "shape": [int(s) for s in image.shape], "counts": counts, "cells": len(rows)}
    (folder / "truth.json").write_text(json.dumps(truth, indent=2))
    if with_objects:
        from nnunetv2_selma.inference.objects import measure_objects

        measure_objects(folder / "mask.tif", folder / "objects", progress=False)
    return truth


def _write_volume(path: Path, volume: np.ndarray, as_slices: bool) -> None:
    import tifffile

    if not as_slices:
        tifffile.imwrite(path, volume)
        return
    path.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(volume):
        tifffile.imwrite(path / f"slice_{z:05d}.tif", plane)


__all__ = ["INNER_LEAVES", "TEST_CELLS", "TEST_ORIENTATION", "TEST_VOXEL_SIZE", "TOY_ATLAS_NAME", "TOY_LEAVES",
           "TOY_STRUCTURES", "toy_annotation", "toy_template", "write_test_brain", "write_toy_atlas"]

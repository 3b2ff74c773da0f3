"""``count_regions``: objects per brain region and hemisphere, resumably (the command ``nnUNetv2_selma_regions``).

Steps, each recorded in ``OUT/.regions_progress.json`` when done so a rerun of the same command skips it:

1. ``downsample``: the channel to the atlas resolution, slab by slab, then into the atlas orientation;
2. ``register``: itk-elastix affine + B-spline of the atlas template onto it (transform files kept);
3. ``points``: every object centroid through the transform into atlas space (``points_atlas_space.csv``);
4. ``outputs``: ``regions.csv``, the atlas annotation resampled onto the brain, pictures, ``summary.json``.

A rerun on changed inputs (objects, image files, voxel size, orientation, atlas, parameters) is refused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import atomic_path, write_atomic, write_json_atomic
from nnunetv2_selma.regions import require_atlas_extra
from nnunetv2_selma.regions.downsample import (
    ATLAS_ORIENTATION,
    atlas_axis_of,
    centroids_to_atlas_orientation,
    check_orientation,
    check_voxel_size,
    downsample_volume,
    from_atlas_orientation,
    to_atlas_orientation,
)

logger = logging.getLogger(__name__)

PROGRESS_FILE = ".regions_progress.json"
STEPS = ("downsample", "register", "points", "outputs")
REGIONS_CSV = "regions.csv"
POINTS_CSV = "points_atlas_space.csv"
SUMMARY_JSON = "summary.json"
LOG_FILE = "regions.log"
REGISTRATION_DIR = "registration"
DOWNSAMPLED_ASR = "downsampled_asr.npy"
DOWNSAMPLED_TIF = "downsampled.tif"
REGISTERED_ATLAS_TIF = "registered_atlas.tif"
REGISTERED_HEMISPHERES_TIF = "registered_hemispheres.tif"
CORONAL_PNG = "registration_coronal.png"
DENSEST_PNG = "densest_regions.png"
REGION_COLUMNS = ("region_id", "acronym", "name", "hemisphere", "count", "volume_mm3", "density_per_mm3",
                  "parent_id")
HEMISPHERES = {1: "left", 2: "right"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _objects_input(objects_dir: Path) -> tuple[Path, tuple[int, ...] | None]:
    """``objects.csv`` of an objects folder and the shape of the volume it was measured on (from its summary)."""
    if not objects_dir.is_dir():
        raise FileNotFoundError(f"{objects_dir}: objects folder not found; expected the output folder of "
                                f"nnUNetv2_selma_objects (or predict_large --objects), holding objects.csv")
    table = objects_dir / "objects.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: not found; -i must be the output folder of nnUNetv2_selma_objects "
                                f"(or predict_large --objects). Run that first, then this command.")
    summary = objects_dir / "summary.json"
    shape = None
    if summary.is_file():
        shape = json.loads(summary.read_text()).get("signature", {}).get("shape")
    return table, None if shape is None else tuple(int(s) for s in shape)


def _read_centroids(table: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    columns = ["id", "centroid_z", "centroid_y", "centroid_x"]
    frame = pd.read_csv(table, usecols=lambda c: c in columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{table}: no column(s) {', '.join(missing)}; expected nnUNetv2_selma_objects' objects.csv "
                         f"(id, centroid_z, centroid_y, centroid_x, ...)")
    return frame["id"].to_numpy(np.int64), frame[columns[1:]].to_numpy(np.float64)


def _file_signature(source) -> list:
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in source.files() if p.is_file()]


def _leaf_table(atlas) -> dict[int, dict]:
    return {int(s["id"]): {"acronym": s["acronym"], "name": s["name"],
                           "parent_id": (int(s["structure_id_path"][-2]) if len(s["structure_id_path"]) > 1 else "")}
            for s in atlas.structures_list}


def _region_rows(atlas, region_ids: np.ndarray, hemispheres: np.ndarray) -> list[dict]:
    """One row per id the annotation draws and per hemisphere: objects, volume, density, parent."""
    annotation, hemi = np.asarray(atlas.annotation), np.asarray(atlas.hemispheres)
    ids, index = np.unique(annotation, return_inverse=True)
    index = index.reshape(-1)
    voxels = np.bincount(index * 3 + hemi.reshape(-1).astype(np.int64), minlength=3 * len(ids)).reshape(-1, 3)
    voxel_mm3 = float(np.prod(atlas.resolution)) / 1e9
    where = {int(i): k for k, i in enumerate(ids)}
    counts = np.zeros((len(ids), 3), np.int64)
    for region, side in zip(region_ids, hemispheres):
        if region in where and side in HEMISPHERES:
            counts[where[region], side] += 1
    structures = _leaf_table(atlas)
    rows = []
    for k, region in enumerate(ids.tolist()):
        if region == 0:
            continue
        info = structures.get(region, {"acronym": str(region), "name": "(not in the terminology)", "parent_id": ""})
        for side, label in HEMISPHERES.items():
            volume = voxels[k, side] * voxel_mm3
            rows.append({"region_id": region, "acronym": info["acronym"], "name": info["name"], "hemisphere": label,
                         "count": int(counts[k, side]), "volume_mm3": round(volume, 6),
                         "density_per_mm3": round(counts[k, side] / volume, 4) if volume > 0 else 0.0,
                         "parent_id": info["parent_id"]})
    return rows


def _write_csv(path: Path, header: Sequence[str], rows) -> None:
    def fill(f) -> None:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(header)
        out.writerows(rows)

    write_atomic(path, fill)


def count_regions(objects_dir: str | Path, image: str | Path, voxel_size: Sequence[float] | None, orientation: str,
                  output_dir: str | Path, atlas: str = "allen_mouse_25um", brainglobe_dir: str | Path | None = None,
                  affine_iterations: int = 400, bspline_iterations: int = 400, bspline_grid_voxels: float = 8,
                  slab_planes: int | None = None, progress: bool = True) -> Path:
    """Count the objects of ``objects_dir`` per atlas region and hemisphere; write the results in ``output_dir``.

    Parameters
    ----------
    objects_dir : output folder of ``nnUNetv2_selma_objects`` (``objects.csv``: voxel centroids).
    image : the whole-brain registration channel (any volume ``open_volume`` reads), of the objects' shape.
    voxel_size : micrometres per voxel, image axis order (z, y, x).
    orientation : BrainGlobe orientation of the image axes (e.g. ``psl``).
    output_dir : results (created if missing); a rerun of the same call resumes after the last finished step.
    atlas, brainglobe_dir : a BrainGlobe atlas name and the folder it is kept in (default: brainglobe's own).
    affine_iterations, bspline_iterations, bspline_grid_voxels : elastix's settings (see ``default_parameters``).
    slab_planes : image planes read at once while downsampling (bounds the memory); default: a slab of <= 256 MiB.

    Returns
    -------
    ``output_dir`` with ``regions.csv`` (columns :data:`REGION_COLUMNS`, one row per region the atlas annotation
    draws and per hemisphere), ``points_atlas_space.csv``, ``summary.json``, ``downsampled.tif`` with
    ``registered_atlas.tif`` and ``registered_hemispheres.tif`` (the atlas on the brain, image orientation, atlas
    resolution), ``registration_coronal.png``, ``densest_regions.png``, ``registration/`` (elastix transform and
    log) and ``regions.log``.

    Raises
    ------
    ValueError for a missing or non-positive voxel size, an invalid orientation, an image whose shape differs
    from the objects' volume, or an output folder holding a run on other inputs; AtlasNotFoundError for an atlas
    neither on disk nor downloadable; AtlasExtraMissingError without the ``[atlas]`` extra.
    """
    run = _RegionsRun(objects_dir, image, voxel_size, orientation, output_dir, atlas, brainglobe_dir,
                      (affine_iterations, bspline_iterations, bspline_grid_voxels))
    run.open_record()
    handler = logging.FileHandler(run.output_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        run.run_steps(slab_planes, progress)
    finally:
        logger.removeHandler(handler)
        handler.close()
    return run.output_dir


class _RegionsRun:
    """One call of :func:`count_regions`: its checked inputs, its resume record and a method per step.

    A step skipped on a rerun leaves its files behind; the steps after it read those files, never its variables.
    """

    def __init__(self, objects_dir: str | Path, image: str | Path, voxel_size: Sequence[float] | None,
                 orientation: str, output_dir: str | Path, atlas: str, brainglobe_dir: str | Path | None,
                 elastix: tuple[int, int, float]) -> None:
        """The checks, cheapest first, so a wrong call fails before the atlas is opened."""
        self.voxel_size = check_voxel_size(voxel_size)
        self.orientation = check_orientation(orientation)
        require_atlas_extra()
        from nnunetv2_selma.regions.atlas import open_atlas
        from nnunetv2_selma.regions.registration import default_parameters
        from nnunetv2_selma.volumes import open_volume

        self.objects_dir, self.image, self.output_dir = (Path(p).resolve() for p in (objects_dir, image, output_dir))
        self.table, self.objects_shape = _objects_input(self.objects_dir)
        if not self.image.exists():
            raise FileNotFoundError(f"{self.image}: registration channel not found; expected the whole-brain image "
                                    f"(TIFF slices folder, 3D TIFF, NIfTI, OME-Zarr or .b2nd) the objects were "
                                    f"found in")
        self.source = open_volume(self.image)
        self.shape = tuple(int(s) for s in self.source.shape)
        if self.objects_shape is not None and self.objects_shape != self.shape:
            raise ValueError(f"{self.objects_dir}: objects measured on a volume of shape {self.objects_shape} (its "
                             f"summary.json); the image {self.image} has shape {self.shape}. Give the channel the "
                             f"objects were found in, or the objects folder of this image.")
        self.atlas_name = atlas
        self.atlas = open_atlas(atlas, brainglobe_dir)
        self.resolution = tuple(float(r) for r in self.atlas.resolution)
        self.image_resolution = tuple(self.resolution[a] for a in atlas_axis_of(self.orientation))
        affine_iterations, bspline_iterations, bspline_grid_voxels = elastix
        self.maps = default_parameters(self.resolution[0], bspline_grid_voxels, affine_iterations, bspline_iterations)
        self.registration_dir = self.output_dir / REGISTRATION_DIR
        self.progress_path = self.output_dir / PROGRESS_FILE
        self.state: dict = {}
        self.bar = None

    def _signature(self) -> dict:
        from nnunetv2_selma.regions.atlas import atlas_version

        shape = list(self.shape)
        return {"objects_sha256": _sha256(self.table), "objects_shape": None if self.objects_shape is None else shape,
                "image": str(self.image), "image_shape": shape, "image_files": _file_signature(self.source),
                "voxel_size_um": list(self.voxel_size), "orientation": self.orientation, "atlas": self.atlas_name,
                "atlas_version": atlas_version(self.atlas), "registration": self.maps}

    def open_record(self) -> None:
        """The resume record: a new one, or the one a run of the same call left; other inputs are refused."""
        signature = self._signature()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.progress_path.is_file():
            state = json.loads(self.progress_path.read_text())
            changed = sorted(k for k in set(signature) | set(state.get("signature", {}))
                             if state.get("signature", {}).get(k) != signature.get(k))
            if changed:
                raise ValueError(f"{self.output_dir}: holds a regions run on other inputs (differs: "
                                 f"{', '.join(changed)}); nothing was overwritten. Remove that folder or choose "
                                 f"another -o to count anew.")
        else:
            taken = [n for n in (REGIONS_CSV, POINTS_CSV, SUMMARY_JSON) if (self.output_dir / n).exists()]
            if taken:
                raise FileExistsError(f"{self.output_dir}: already holds {', '.join(taken)}, not from a regions run; "
                                      f"nothing was overwritten. Choose another output folder.")
            state = {"signature": signature, "done": [], "seconds": {}}
            write_json_atomic(self.progress_path, state, indent=2)
        self.state = state

    def run_steps(self, slab_planes: int | None, progress: bool) -> None:
        """The steps not yet done, in order; the registration's transform files stand in for a skipped one."""
        from tqdm import tqdm

        self.registration_dir.mkdir(exist_ok=True)
        transforms = [self.registration_dir / n for n in ("transform_affine.txt", "transform_bspline.txt")]
        done = self.state["done"]
        self.bar = tqdm(total=len(STEPS), unit="step", desc="regions", disable=not progress)
        self.bar.update(sum(s in done for s in STEPS))
        if "downsample" not in done:
            self.downsample(slab_planes, progress)
        brain_asr = np.load(self.registration_dir / DOWNSAMPLED_ASR)
        template = np.asarray(self.atlas.template, np.float32)
        if "register" not in done:
            transforms = self.register(brain_asr, template)
        if "points" not in done:
            self.map_points(transforms, template)
        if "outputs" not in done:
            self.write_outputs(brain_asr, transforms)
        self.bar.close()

    def _finish(self, step: str, t0: float) -> None:
        self.state["done"].append(step)
        self.state["seconds"][step] = round(time.perf_counter() - t0, 2)
        write_json_atomic(self.progress_path, self.state, indent=2)
        logger.info("%s: %s done in %.1f s", self.output_dir, step, self.state["seconds"][step])
        self.bar.update(1)

    def downsample(self, slab_planes: int | None, progress: bool) -> None:
        """The channel at the atlas resolution: kept in the atlas orientation for elastix, as a TIFF for the eye."""
        t0 = time.perf_counter()
        logger.info("downsampling %s %s (%s um) to %s um", self.image, self.shape, self.voxel_size,
                    self.image_resolution)
        small = downsample_volume(self.source, self.voxel_size, self.image_resolution, slab_planes, progress)
        np.save(self.registration_dir / DOWNSAMPLED_ASR, to_atlas_orientation(small, self.orientation))
        self.state["downsampled_shape"] = list(small.shape)
        _write_tif(self.output_dir / DOWNSAMPLED_TIF, small)
        self._finish("downsample", t0)

    def register(self, brain_asr: np.ndarray, template: np.ndarray) -> list[Path]:
        from nnunetv2_selma.regions.registration import register

        t0 = time.perf_counter()
        logger.info("registering the atlas template %s onto the brain %s (itk-elastix)", template.shape,
                    brain_asr.shape)
        transforms = register(brain_asr, template, self.resolution, self.maps, self.registration_dir,
                              log_file=self.registration_dir / "elastix.log")
        self._finish("register", t0)
        return transforms

    def map_points(self, transforms: Sequence[Path], template: np.ndarray) -> None:
        """Every centroid into atlas space, with the region and hemisphere it lands in (``outside``: none)."""
        from nnunetv2_selma.regions.registration import transform_points

        t0 = time.perf_counter()
        resolution = np.asarray(self.resolution)
        ids, centroids = _read_centroids(self.table)
        continuous = centroids_to_atlas_orientation(centroids, self.shape, self.state["downsampled_shape"],
                                                    self.orientation)
        atlas_um = transform_points((continuous - 0.5) * resolution, transforms, template, self.resolution)
        atlas_voxel = atlas_um / resolution
        index = np.rint(atlas_voxel).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(self.atlas.shape)), axis=1)
        region = np.zeros(len(ids), np.int64)
        side = np.zeros(len(ids), np.int64)
        region[inside] = np.asarray(self.atlas.annotation)[tuple(index[inside].T)]
        side[inside] = np.asarray(self.atlas.hemispheres)[tuple(index[inside].T)]
        side[region == 0] = 0
        acronyms = {k: v["acronym"] for k, v in _leaf_table(self.atlas).items()}
        _write_csv(self.output_dir / POINTS_CSV,
                   ["id", "atlas_z", "atlas_y", "atlas_x", "atlas_z_um", "atlas_y_um", "atlas_x_um", "region_id",
                    "acronym", "hemisphere"],
                   ([i, *np.round(v, 3), *np.round(u, 2), r, acronyms.get(r, "") if r else "outside",
                     HEMISPHERES.get(s, "")]
                    for i, v, u, r, s in zip(ids.tolist(), atlas_voxel, atlas_um, region.tolist(), side.tolist())))
        self._finish("points", t0)

    def write_outputs(self, brain_asr: np.ndarray, transforms: Sequence[Path]) -> None:
        """Counts, the atlas on the brain, pictures, and last ``summary.json`` (its presence means all is there)."""
        t0 = time.perf_counter()
        points, rows = self._count()
        annotation_on_brain = self._atlas_on_brain(transforms)
        self._pictures(brain_asr, annotation_on_brain, rows)
        self.state["seconds"]["outputs"] = round(time.perf_counter() - t0, 2)  # summary.json is this step's last file
        write_json_atomic(self.output_dir / SUMMARY_JSON, self._summary(points), indent=2)
        self._finish("outputs", t0)

    def _count(self):
        """``regions.csv`` from ``points_atlas_space.csv``; the points table and the rows for the pictures."""
        import pandas as pd

        points = pd.read_csv(self.output_dir / POINTS_CSV, usecols=["region_id", "hemisphere"],
                             keep_default_na=False)
        sides = points["hemisphere"].map({"left": 1, "right": 2}).fillna(0).to_numpy(np.int64)
        rows = _region_rows(self.atlas, points["region_id"].to_numpy(np.int64), sides)
        _write_csv(self.output_dir / REGIONS_CSV, REGION_COLUMNS, ([r[c] for c in REGION_COLUMNS] for r in rows))
        return points, rows

    def _atlas_on_brain(self, transforms: Sequence[Path]) -> np.ndarray:
        """The annotation and hemispheres warped onto the brain, saved in the image orientation."""
        from nnunetv2_selma.regions.registration import warp_to_sample

        annotation_on_brain = warp_to_sample(np.asarray(self.atlas.annotation), transforms, self.resolution,
                                             labels=True)
        hemispheres_on_brain = warp_to_sample(np.asarray(self.atlas.hemispheres), transforms, self.resolution,
                                              labels=True)
        _write_tif(self.output_dir / REGISTERED_ATLAS_TIF,
                   from_atlas_orientation(annotation_on_brain.astype(np.uint32), self.orientation))
        _write_tif(self.output_dir / REGISTERED_HEMISPHERES_TIF,
                   from_atlas_orientation(hemispheres_on_brain.astype(np.uint8), self.orientation))
        return annotation_on_brain

    def _pictures(self, brain_asr: np.ndarray, annotation_on_brain: np.ndarray, rows: list[dict]) -> None:
        from nnunetv2_selma.regions.pictures import save_coronal_sections, save_densest_regions

        save_coronal_sections(self.output_dir / CORONAL_PNG, brain_asr, annotation_on_brain,
                              title=f"{self.image.name} registered to {self.atlas_name}")
        save_densest_regions(self.output_dir / DENSEST_PNG, rows)

    def _summary(self, points) -> dict:
        from nnunetv2_selma.regions.atlas import atlas_version

        outside = int((points["region_id"] == 0).sum())
        return {
            "atlas": self.atlas_name, "atlas_version": atlas_version(self.atlas),
            "atlas_resolution_um": list(self.resolution), "atlas_orientation": ATLAS_ORIENTATION,
            "brainglobe_dir": str(self.atlas.root_dir.parent), "image": str(self.image),
            "image_shape": list(self.shape), "voxel_size_um": list(self.voxel_size), "orientation": self.orientation,
            "downsampled_shape": self.state["downsampled_shape"], "objects": str(self.table),
            "objects_count": int(len(points)), "objects_outside_brain": outside,
            "objects_in_regions": int(len(points)) - outside,
            "registration": {"engine": "itk-elastix", "parameter_maps": self.maps},
            "files": {"regions": REGIONS_CSV, "points": POINTS_CSV, "downsampled": DOWNSAMPLED_TIF,
                      "registered_atlas": REGISTERED_ATLAS_TIF, "registered_hemispheres": REGISTERED_HEMISPHERES_TIF,
                      "coronal_picture": CORONAL_PNG, "densest_picture": DENSEST_PNG, "log": LOG_FILE},
            "seconds": self.state["seconds"]}


def _write_tif(path: Path, volume: np.ndarray) -> None:
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, volume, photometric="minisblack")


__all__ = ["POINTS_CSV", "PROGRESS_FILE", "REGIONS_CSV", "REGION_COLUMNS", "STEPS", "SUMMARY_JSON", "count_regions"]

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


def _write_json_atomic(path: Path, data: dict) -> None:
    write_json_atomic(path, data, indent=2)


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
    voxel_size = check_voxel_size(voxel_size)
    orientation = check_orientation(orientation)
    require_atlas_extra()
    from tqdm import tqdm

    from nnunetv2_selma.regions.atlas import atlas_version, open_atlas
    from nnunetv2_selma.regions.registration import default_parameters
    from nnunetv2_selma.volumes import open_volume

    objects_dir, image, output_dir = Path(objects_dir).resolve(), Path(image).resolve(), Path(output_dir).resolve()
    table, objects_shape = _objects_input(objects_dir)
    if not image.exists():
        raise FileNotFoundError(f"{image}: registration channel not found; expected the whole-brain image (TIFF "
                                f"slices folder, 3D TIFF, NIfTI, OME-Zarr or .b2nd) the objects were found in")
    source = open_volume(image)
    shape = tuple(int(s) for s in source.shape)
    if objects_shape is not None and objects_shape != shape:
        raise ValueError(f"{objects_dir}: objects measured on a volume of shape {objects_shape} (its summary.json); "
                         f"the image {image} has shape {shape}. Give the channel the objects were found in, or the "
                         f"objects folder of this image.")
    bg_atlas = open_atlas(atlas, brainglobe_dir)
    resolution = tuple(float(r) for r in bg_atlas.resolution)
    image_resolution = tuple(resolution[a] for a in atlas_axis_of(orientation))
    maps = default_parameters(resolution[0], bspline_grid_voxels, affine_iterations, bspline_iterations)
    signature = {"objects_sha256": _sha256(table), "objects_shape": None if objects_shape is None else list(shape),
                 "image": str(image), "image_shape": list(shape), "image_files": _file_signature(source),
                 "voxel_size_um": list(voxel_size), "orientation": orientation, "atlas": atlas,
                 "atlas_version": atlas_version(bg_atlas), "registration": maps}
    output_dir.mkdir(parents=True, exist_ok=True)
    progress_path = output_dir / PROGRESS_FILE
    if progress_path.is_file():
        state = json.loads(progress_path.read_text())
        changed = sorted(k for k in set(signature) | set(state.get("signature", {}))
                         if state.get("signature", {}).get(k) != signature.get(k))
        if changed:
            raise ValueError(f"{output_dir}: holds a regions run on other inputs (differs: {', '.join(changed)}); "
                             f"nothing was overwritten. Remove that folder or choose another -o to count anew.")
    else:
        taken = [n for n in (REGIONS_CSV, POINTS_CSV, SUMMARY_JSON) if (output_dir / n).exists()]
        if taken:
            raise FileExistsError(f"{output_dir}: already holds {', '.join(taken)}, not from a regions run; nothing "
                                  f"was overwritten. Choose another output folder.")
        state = {"signature": signature, "done": [], "seconds": {}}
        _write_json_atomic(progress_path, state)

    handler = logging.FileHandler(output_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    registration_dir = output_dir / REGISTRATION_DIR
    registration_dir.mkdir(exist_ok=True)
    transforms = [registration_dir / n for n in ("transform_affine.txt", "transform_bspline.txt")]
    try:
        bar = tqdm(total=len(STEPS), unit="step", desc="regions", disable=not progress)
        bar.update(sum(s in state["done"] for s in STEPS))

        def finish(step: str, t0: float) -> None:
            state["done"].append(step)
            state["seconds"][step] = round(time.perf_counter() - t0, 2)
            _write_json_atomic(progress_path, state)
            logger.info("%s: %s done in %.1f s", output_dir, step, state["seconds"][step])
            bar.update(1)

        if "downsample" not in state["done"]:
            t0 = time.perf_counter()
            logger.info("downsampling %s %s (%s um) to %s um", image, shape, voxel_size, image_resolution)
            small = downsample_volume(source, voxel_size, image_resolution, slab_planes, progress)
            np.save(registration_dir / DOWNSAMPLED_ASR, to_atlas_orientation(small, orientation))
            state["downsampled_shape"] = list(small.shape)
            _write_tif(output_dir / DOWNSAMPLED_TIF, small)
            finish("downsample", t0)
        brain_asr = np.load(registration_dir / DOWNSAMPLED_ASR)
        template = np.asarray(bg_atlas.template, np.float32)

        if "register" not in state["done"]:
            from nnunetv2_selma.regions.registration import register

            t0 = time.perf_counter()
            logger.info("registering the atlas template %s onto the brain %s (itk-elastix)", template.shape,
                        brain_asr.shape)
            transforms = register(brain_asr, template, resolution, maps, registration_dir,
                                  log_file=registration_dir / "elastix.log")
            finish("register", t0)

        if "points" not in state["done"]:
            from nnunetv2_selma.regions.registration import transform_points

            t0 = time.perf_counter()
            ids, centroids = _read_centroids(table)
            continuous = centroids_to_atlas_orientation(centroids, shape, state["downsampled_shape"], orientation)
            atlas_um = transform_points((continuous - 0.5) * np.asarray(resolution), transforms, template, resolution)
            atlas_voxel = atlas_um / np.asarray(resolution)
            index = np.rint(atlas_voxel).astype(np.int64)
            inside = np.all((index >= 0) & (index < np.asarray(bg_atlas.shape)), axis=1)
            region = np.zeros(len(ids), np.int64)
            side = np.zeros(len(ids), np.int64)
            region[inside] = np.asarray(bg_atlas.annotation)[tuple(index[inside].T)]
            side[inside] = np.asarray(bg_atlas.hemispheres)[tuple(index[inside].T)]
            side[region == 0] = 0
            acronyms = {k: v["acronym"] for k, v in _leaf_table(bg_atlas).items()}
            _write_csv(output_dir / POINTS_CSV,
                       ["id", "atlas_z", "atlas_y", "atlas_x", "atlas_z_um", "atlas_y_um", "atlas_x_um", "region_id",
                        "acronym", "hemisphere"],
                       ([i, *np.round(v, 3), *np.round(u, 2), r, acronyms.get(r, "") if r else "outside",
                         HEMISPHERES.get(s, "")]
                        for i, v, u, r, s in zip(ids.tolist(), atlas_voxel, atlas_um, region.tolist(), side.tolist())))
            finish("points", t0)

        if "outputs" not in state["done"]:
            from nnunetv2_selma.regions.pictures import save_coronal_sections, save_densest_regions
            from nnunetv2_selma.regions.registration import warp_to_sample

            t0 = time.perf_counter()
            import pandas as pd

            points = pd.read_csv(output_dir / POINTS_CSV, usecols=["region_id", "hemisphere"], keep_default_na=False)
            sides = points["hemisphere"].map({"left": 1, "right": 2}).fillna(0).to_numpy(np.int64)
            rows = _region_rows(bg_atlas, points["region_id"].to_numpy(np.int64), sides)
            _write_csv(output_dir / REGIONS_CSV, REGION_COLUMNS, ([r[c] for c in REGION_COLUMNS] for r in rows))
            annotation_on_brain = warp_to_sample(np.asarray(bg_atlas.annotation), transforms, resolution, labels=True)
            hemispheres_on_brain = warp_to_sample(np.asarray(bg_atlas.hemispheres), transforms, resolution,
                                                  labels=True)
            _write_tif(output_dir / REGISTERED_ATLAS_TIF,
                       from_atlas_orientation(annotation_on_brain.astype(np.uint32), orientation))
            _write_tif(output_dir / REGISTERED_HEMISPHERES_TIF,
                       from_atlas_orientation(hemispheres_on_brain.astype(np.uint8), orientation))
            save_coronal_sections(output_dir / CORONAL_PNG, brain_asr, annotation_on_brain,
                                  title=f"{image.name} registered to {atlas}")
            save_densest_regions(output_dir / DENSEST_PNG, rows)
            outside = int((points["region_id"] == 0).sum())
            state["seconds"]["outputs"] = round(time.perf_counter() - t0, 2)  # summary.json is this step's last file
            _write_json_atomic(output_dir / SUMMARY_JSON, {
                "atlas": atlas, "atlas_version": atlas_version(bg_atlas), "atlas_resolution_um": list(resolution),
                "atlas_orientation": ATLAS_ORIENTATION, "brainglobe_dir": str(bg_atlas.root_dir.parent),
                "image": str(image), "image_shape": list(shape), "voxel_size_um": list(voxel_size),
                "orientation": orientation, "downsampled_shape": state["downsampled_shape"],
                "objects": str(table), "objects_count": int(len(points)), "objects_outside_brain": outside,
                "objects_in_regions": int(len(points)) - outside, "registration": {"engine": "itk-elastix",
                                                                                  "parameter_maps": maps},
                "files": {"regions": REGIONS_CSV, "points": POINTS_CSV, "downsampled": DOWNSAMPLED_TIF,
                          "registered_atlas": REGISTERED_ATLAS_TIF,
                          "registered_hemispheres": REGISTERED_HEMISPHERES_TIF,
                          "coronal_picture": CORONAL_PNG, "densest_picture": DENSEST_PNG, "log": LOG_FILE},
                "seconds": state["seconds"]})
            finish("outputs", t0)
        bar.close()
    finally:
        logger.removeHandler(handler)
        handler.close()
    return output_dir


def _write_tif(path: Path, volume: np.ndarray) -> None:
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, volume, photometric="minisblack")


__all__ = ["POINTS_CSV", "PROGRESS_FILE", "REGIONS_CSV", "REGION_COLUMNS", "STEPS", "SUMMARY_JSON", "count_regions"]

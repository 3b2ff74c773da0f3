"""Registration of the downsampled brain to the atlas with itk-elastix (affine, then B-spline).

The sample (downsampled, in the atlas's orientation and resolution) is elastix's *fixed* image and the atlas
template the *moving* one, so the transform elastix finds maps a sample point to its atlas point: exactly
what the object centroids need (transformix's point mode), and the atlas annotation, resampled through it,
lands on the sample for checking. Physical coordinates are micrometres, origin at voxel 0's centre; numpy
axes (z, y, x) are ITK's (x, y, z) reversed.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TRANSFORM_FILES = ("transform_affine.txt", "transform_bspline.txt")
#: points handed to transformix per call (its point file is text)
POINT_CHUNK = 200_000


def default_parameters(resolution_um: float, bspline_grid_voxels: float = 8, affine_iterations: int = 400,
                       bspline_iterations: int = 400, resolutions: int = 3) -> list[dict[str, list[str]]]:
    """elastix parameter maps (affine, B-spline) as plain dicts: what ``summary.json`` records.

    Mutual information (the brain's autofluorescence and the atlas template differ in contrast), centre-of-
    gravity initialisation, a ``resolutions``-level pyramid; the B-spline control points ``bspline_grid_voxels``
    atlas voxels apart (about 200 um at 25 um: smooth deformations, no home-made regularisation).
    """
    common = {"NumberOfResolutions": [str(resolutions)], "Metric": ["AdvancedMattesMutualInformation"],
              "NumberOfHistogramBins": ["32"], "ImageSampler": ["RandomCoordinate"],
              "NumberOfSpatialSamples": ["4000"], "NewSamplesEveryIteration": ["true"],
              "DefaultPixelValue": ["0"], "WriteResultImage": ["false"], "ResultImageFormat": ["mha"]}
    affine = {**common, "Transform": ["AffineTransform"], "MaximumNumberOfIterations": [str(affine_iterations)],
              "AutomaticTransformInitialization": ["true"],
              "AutomaticTransformInitializationMethod": ["CenterOfGravity"], "AutomaticScalesEstimation": ["true"]}
    bspline = {**common, "Transform": ["BSplineTransform"], "MaximumNumberOfIterations": [str(bspline_iterations)],
               "FinalGridSpacingInPhysicalUnits": [str(bspline_grid_voxels * resolution_um)],
               "GridSpacingSchedule": [str(2 ** k) for k in reversed(range(resolutions))]}
    return [affine, bspline]


def _itk_image(array: np.ndarray, resolution: Sequence[float]):
    import itk

    image = itk.image_view_from_array(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing([float(r) for r in reversed(resolution)])
    image.SetOrigin([0.0, 0.0, 0.0])
    return image


def _parameter_object(maps: Sequence[dict[str, list[str]]]):
    import itk

    parameter_object = itk.ParameterObject.New()
    for k, values in enumerate(maps):
        kind = "affine" if k == 0 else "bspline"
        base = parameter_object.GetDefaultParameterMap(kind)
        for key, value in values.items():
            base[key] = list(value)
        parameter_object.AddParameterMap(base)
    return parameter_object


def register(fixed: np.ndarray, moving: np.ndarray, resolution: Sequence[float], maps: Sequence[dict],
             transform_dir: str | Path, log_file: str | Path | None = None) -> list[Path]:
    """Register ``moving`` (atlas template) onto ``fixed`` (the sample); write the transform files.

    Returns the transform parameter files in ``transform_dir`` (affine, B-spline: a chain, applied in order).
    """
    import itk

    transform_dir = Path(transform_dir)
    transform_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="elastix_", dir=transform_dir) as work:
        try:
            _, result = itk.elastix_registration_method(
                _itk_image(fixed, resolution), _itk_image(moving, resolution),
                parameter_object=_parameter_object(maps), log_to_console=False, log_to_file=log_file is not None,
                output_directory=work)
        finally:  # elastix's own log says why it failed
            if log_file is not None and (Path(work) / "elastix.log").is_file():
                Path(log_file).write_text((Path(work) / "elastix.log").read_text())
    paths = [transform_dir / name for name in TRANSFORM_FILES[:result.GetNumberOfParameterMaps()]]
    for k, path in enumerate(paths):
        parameter_map = result.GetParameterMap(k)
        # each file names the one before it (elastix's own chain), so transformix's command line reads them too
        parameter_map["InitialTransformParameterFileName"] = [str(paths[k - 1]) if k else "NoInitialTransform"]
        itk.ParameterObject.WriteParameterFile(parameter_map, str(path))
    return paths


def load_transform(paths: Sequence[str | Path], nearest: bool = False):
    """The transform chain of :func:`register` as an ITK ``ParameterObject`` (nearest-neighbour resampling if asked)."""
    import itk

    parameter_object = itk.ParameterObject.New()
    for path in paths:
        single = itk.ParameterObject.New()
        single.ReadParameterFile(str(path))
        parameter_map = single.GetParameterMap(0)
        parameter_map["InitialTransformParameterFileName"] = ["NoInitialTransform"]  # the object holds the chain
        if nearest:
            parameter_map["ResampleInterpolator"] = ["FinalNearestNeighborInterpolator"]
            parameter_map["FinalBSplineInterpolationOrder"] = ["0"]
        parameter_object.AddParameterMap(parameter_map)
    return parameter_object


_OUTPUT_POINT = re.compile(r"OutputPoint\s*=\s*\[\s*([^\]]+?)\s*\]")


def transform_points(points_um: np.ndarray, paths: Sequence[str | Path], moving: np.ndarray,
                     resolution: Sequence[float]) -> np.ndarray:
    """Sample points ``(n, 3)`` (z, y, x micrometres) -> atlas points (z, y, x micrometres), with transformix."""
    import itk

    points_um = np.asarray(points_um, float).reshape(-1, 3)
    out = np.empty_like(points_um)
    if not len(points_um):
        return out
    parameter_object = load_transform(paths)
    image = _itk_image(moving, resolution)
    for start in range(0, len(points_um), POINT_CHUNK):
        chunk = points_um[start:start + POINT_CHUNK]
        with tempfile.TemporaryDirectory(prefix="transformix_") as work:
            point_file = Path(work) / "points.txt"
            lines = ["point", str(len(chunk))] + [f"{x:.6f} {y:.6f} {z:.6f}" for z, y, x in chunk]
            point_file.write_text("\n".join(lines) + "\n")
            transformix = itk.TransformixFilter.New(image)
            transformix.SetTransformParameterObject(parameter_object)
            transformix.SetFixedPointSetFileName(str(point_file))
            transformix.SetOutputDirectory(work)
            transformix.SetLogToConsole(False)
            transformix.Update()
            found = _OUTPUT_POINT.findall((Path(work) / "outputpoints.txt").read_text())
        if len(found) != len(chunk):
            raise RuntimeError(f"transformix returned {len(found)} points for {len(chunk)}")
        out[start:start + len(chunk)] = np.array([[float(v) for v in f.split()] for f in found])[:, ::-1]
    return out


def warp_to_sample(volume: np.ndarray, paths: Sequence[str | Path], resolution: Sequence[float],
                   labels: bool = False) -> np.ndarray:
    """An atlas-space volume resampled onto the sample (the fixed image's grid) through the transform.

    ``labels``: nearest-neighbour, and the ids are first made consecutive (transformix resamples in float32,
    which holds integers exactly only up to 2**24; atlas ids go beyond), then mapped back.
    """
    import itk

    if labels:
        ids, consecutive = np.unique(volume, return_inverse=True)
        volume = consecutive.reshape(volume.shape).astype(np.float32)
    result = itk.transformix_filter(_itk_image(volume, resolution), load_transform(paths, nearest=labels),
                                    log_to_console=False)
    array = itk.array_from_image(result)
    if labels:
        return ids[np.clip(np.rint(array).astype(np.int64), 0, len(ids) - 1)]
    return array.astype(np.float32)


__all__ = ["TRANSFORM_FILES", "default_parameters", "load_transform", "register", "transform_points",
           "warp_to_sample"]

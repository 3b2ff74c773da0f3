"""Reading and writing whole 3D images of the kinds SELMA3D uses (patches, labels, test cases).

``.nii.gz``/``.nii``/``.mha``/``.nrrd`` through SimpleITK and ``.tif``/``.tiff`` through tifffile. Arrays
are returned in numpy order ``(z, y, x)``, as nnU-Net's readers return them. Volumes too large for memory
are read lazily by :mod:`~nnunetv2_selma.volumes.readers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
#: geometry of formats that carry none (TIFF, .b2nd): unit spacing, zero origin, identity direction
IDENTITY_GEOMETRY = {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                     "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}


def image_suffix(path: str | Path) -> str:
    """The image suffix of ``path`` (``.nii.gz`` counts as one), lower case; '' if unknown."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ""


def strip_image_suffix(path: str | Path) -> str:
    """File name of ``path`` without its image suffix (``case_0000.nii.gz`` -> ``case_0000``)."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else name


def read_image(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a 3D image into memory.

    Returns
    -------
    array : ndarray, shape (z, y, x), the file's own dtype
    geometry : dict with ``spacing``, ``origin`` (x, y, z order, as SimpleITK) and ``direction``
        (flattened 3x3). TIFF files get unit spacing, zero origin and identity direction.

    Raises
    ------
    ValueError naming the file when it cannot be read or is not 3D.
    """
    array, geometry = read_image_channels(path, max_channels=1)
    return array[0], geometry


def read_image_channels(path: str | Path, max_channels: int = 4) -> tuple[np.ndarray, dict]:
    """Read an image of one or several channels as ``(c, z, y, x)`` plus its geometry.

    3D files are one channel; a 4D TIFF ``(c, z, y, x)`` (or an ImageJ hyperstack ``(z, c, y, x)``)
    or a MetaImage/NIfTI vector image with at most ``max_channels`` components is several. The
    geometry is :func:`read_image`'s. Raises ValueError naming the file otherwise.
    """
    path = Path(path)
    suffix = image_suffix(path)
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile

            array, geometry = tifffile.imread(path), dict(IDENTITY_GEOMETRY)
            if array.ndim == 4 and array.shape[0] > max_channels and array.shape[1] <= max_channels:
                array = np.moveaxis(array, 1, 0)  # ImageJ hyperstacks are (z, c, y, x)
        elif suffix:
            import SimpleITK as sitk

            img = sitk.ReadImage(str(path))
            array = sitk.GetArrayFromImage(img)  # vector images: (z, y, x, c)
            if img.GetNumberOfComponentsPerPixel() > 1:
                array = np.moveaxis(array, -1, 0)
            geometry = {"spacing": img.GetSpacing(), "origin": img.GetOrigin(), "direction": img.GetDirection()}
        else:
            raise ValueError(f"unknown image type; expected one of {', '.join(IMAGE_SUFFIXES)}")
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    except Exception as e:  # readers raise many types for truncated or corrupt files
        raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or not 1 <= array.shape[0] <= max_channels:
        expected = "a 3D image (z, y, x)" + (
            f" or (channels, z, y, x) with at most {max_channels} channels" if max_channels > 1 else "")
        raise ValueError(f"{path}: found an image of shape {array.shape}; expected {expected}")
    return array, geometry


def write_image(path: str | Path, array: np.ndarray, geometry: dict | None = None) -> None:
    """Write a 3D ``(z, y, x)`` array as ``.nii.gz``/``.mha``/``.nrrd`` or ``.tif``.

    ``geometry`` (as returned by :func:`read_image`) is applied for SimpleITK formats.
    """
    path = Path(path)
    suffix = image_suffix(path)
    if suffix in TIFF_SUFFIXES:
        import tifffile

        tifffile.imwrite(path, np.asarray(array))
        return
    if not suffix:
        raise ValueError(f"{path}: unknown image type; expected one of {', '.join(IMAGE_SUFFIXES)}")
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.asarray(array))
    if geometry:
        img.SetSpacing(tuple(float(s) for s in geometry["spacing"]))
        img.SetOrigin(tuple(float(o) for o in geometry["origin"]))
        img.SetDirection(tuple(float(d) for d in geometry["direction"]))
    sitk.WriteImage(img, str(path), useCompression=True)


__all__ = ["IDENTITY_GEOMETRY", "IMAGE_SUFFIXES", "TIFF_SUFFIXES", "image_suffix", "read_image",
           "read_image_channels", "strip_image_suffix", "write_image"]

"""Reading and writing the image kinds SELMA3D uses, without loading what need not be loaded.

* 3D images: ``.nii.gz``/``.nii``/``.mha``/``.nrrd`` (SimpleITK) and ``.tif``/``.tiff`` (tifffile).
  Arrays are returned in numpy order ``(z, y, x)``, as nnU-Net's readers return them.
* TIFF-slice series: a folder of 2D slices, one per z plane, ordered by the (last) number in the
  file name, never by string order (``slice_10`` comes after ``slice_9``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
#: geometry of formats that carry none (TIFF, .b2nd): unit spacing, zero origin, identity direction
IDENTITY_GEOMETRY = {"spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0),
                     "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}
_NUMBER = re.compile(r"(\d+)")
# microscope software often names planes like "Z0012_C00.tif": an explicit z index wins
_Z_NUMBER = re.compile(r"(?:^|[^A-Za-z])[Zz](\d+)")


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


#: the record ``nnUNetv2_selma_synthesize`` writes at a download's root; its ``test_set`` names the folder
#: (relative to the root) of the challenge-style test inputs, which conversion must never train on
DOWNLOAD_RECORD = "synthetic_summary.json"


def recorded_test_set(folder: str | Path) -> Path | None:
    """The test-input folder that ``folder``'s download record names, or None (no record, no test set).

    Records written before ``test_set`` existed list the test images (``<root>/<test set>/images/<name>``)
    under ``test_inputs``; the folder is taken from the first of them.
    """
    folder = Path(folder)
    path = folder / DOWNLOAD_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable download record ({e}); expected the JSON that "
                         f"nnUNetv2_selma_synthesize writes, which names the test set (restore or remove it)") from e
    relative = record.get("test_set") if isinstance(record, dict) else None
    if relative is None and isinstance(record, dict) and record.get("test_inputs"):
        try:
            relative = str(Path(record["test_inputs"][0]).relative_to(record["root"]).parent.parent)
        except (KeyError, TypeError, ValueError):
            relative = None
    return folder / relative if relative else None


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic set-and-restore
    os.umask(mask)
    return mask


def apply_default_mode(path: str | Path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open()`` (or ``mkdir``) would: ``0o666`` (``0o777``) minus the umask.

    ``tempfile.mkstemp``/``mkdtemp`` create private (0600/0700) files so that a temporary is not
    readable while written; a file renamed into place would keep that, and colleagues sharing a
    store, cache or results folder could not read it. Call this on the temporary before the rename.
    """
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def write_atomic(path: str | Path, write: Callable[[IO[str]], None]) -> None:
    """Write a text file all at once or not at all: ``write(file)`` fills a temporary file beside
    ``path``, which then replaces ``path`` in one rename (readers never see half a file; a failed
    write leaves the old file and no temporary). The file gets the umask's mode, like ``open()``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        apply_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, content, indent: int = 1) -> None:
    """:func:`write_atomic` of ``content`` as JSON (manifests, progress records, results)."""
    write_atomic(path, lambda f: json.dump(content, f, indent=indent))


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


def slice_number(path: str | Path) -> int:
    """The z index encoded in a slice file name: the number after a ``Z`` (``Z0012_C00.tif``), else
    the last run of digits (``slice_12.tif``, ``img_00012.tif``)."""
    z = _Z_NUMBER.findall(Path(path).stem)
    if z:
        return int(z[-1])
    numbers = _NUMBER.findall(Path(path).stem)
    if not numbers:
        raise ValueError(f"{path}: slice file name holds no number; expected names like slice_0042.tif")
    return int(numbers[-1])


def list_slice_files(folder: str | Path, require_contiguous: bool = True) -> list[Path]:
    """The ``.tif``/``.tiff`` slices of ``folder`` sorted by the number in their name.

    Raises
    ------
    ValueError naming the folder when it holds no slice, two slices share a number, or (with
    ``require_contiguous``) the numbering has a gap.
    """
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES]
    if not files:
        raise ValueError(f"{folder}: found no .tif/.tiff slices; expected one 2D TIFF per z plane")
    numbered = sorted((slice_number(p), p) for p in files)
    numbers = [n for n, _ in numbered]
    for (a, pa), (b, pb) in zip(numbered, numbered[1:]):
        if a == b:
            raise ValueError(f"{folder}: slices {pa.name} and {pb.name} both carry number {a}")
        if require_contiguous and b != a + 1:
            raise ValueError(
                f"{folder}: gap in slice numbering after {pa.name} (number {a}); next is {pb.name} "
                f"(number {b}), expected {a + 1}. {len(numbers)} slices, numbers {numbers[0]}..{numbers[-1]}"
            )
    return [p for _, p in numbered]


class SliceSeries:
    """A folder of 2D TIFF slices seen as one lazy 3D volume ``(z, y, x)``.

    Only the first slice is read on opening (shape, dtype); :meth:`read` loads the slabs asked
    for and checks every slice it reads against the first.
    """

    def __init__(self, folder: str | Path, require_contiguous: bool = True) -> None:
        import tifffile

        self.folder = Path(folder)
        self.files = list_slice_files(self.folder, require_contiguous)
        first = self._read_one(self.files[0], tifffile)
        if first.ndim != 2:
            raise ValueError(f"{self.files[0]}: found a slice of shape {first.shape}; expected a 2D image")
        self.dtype = first.dtype
        self.shape = (len(self.files), *first.shape)

    @staticmethod
    def _read_one(path: Path, tifffile) -> np.ndarray:
        try:
            return tifffile.imread(path)
        except Exception as e:
            raise ValueError(f"{path}: unreadable slice ({type(e).__name__}: {e})") from e

    def read(self, z0: int, z1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Slices ``z0:z1`` as one array ``(z1 - z0, y, x)`` of the series' dtype.

        ``out``, when given, is an array of at least that many planes that is filled and returned
        (its first ``z1 - z0`` planes), so a streaming reader can reuse one slab buffer.
        """
        import tifffile

        if out is None:
            out = np.empty((z1 - z0, *self.shape[1:]), dtype=self.dtype)
        else:
            out = out[: z1 - z0]
        for i, path in enumerate(self.files[z0:z1]):
            plane = self._read_one(path, tifffile)
            if plane.shape != self.shape[1:] or plane.dtype != self.dtype:
                raise ValueError(
                    f"{path}: found a slice of shape {plane.shape} and dtype {plane.dtype}; expected "
                    f"{self.shape[1:]} and {self.dtype} like {self.files[0].name}"
                )
            out[i] = plane
        return out

    def __len__(self) -> int:
        return self.shape[0]

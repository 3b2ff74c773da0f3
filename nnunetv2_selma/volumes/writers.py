"""Writers of volumes (masks, instance labels) that do not fit in memory: one interface, :class:`MaskWriter`.

:func:`create_mask_writer` takes uint8 masks (or uint32 instance labels) and writes them to a temporary
path that :meth:`MaskWriter.commit` moves into place, so an interrupted write never leaves a half output:

* TIFF-slice folder (a path without an image suffix): one slice file per z plane;
* 3D ``.tif``: page by page; ``.b2nd``: region by region;
* ``.nii.gz``/``.nii``/``.mha``/``.nrrd``: held in memory (1 byte per voxel, 4 for uint32), written at the end.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_selma.io import image_suffix, write_image
from nnunetv2_selma.volumes.readers import volume_kind

SUPPORTED_OUTPUTS = "a folder for TIFF slices (no suffix), .tif/.tiff, .b2nd, .nii.gz, .nii, .mha or .nrrd"


class MaskWriter:
    """Writes a uint8 mask ``(z, y, x)`` (or ``dtype``) to a temporary path, then :meth:`commit` moves it into place.

    ``sequential`` writers take whole z planes in increasing order (:meth:`write_plane`); the others
    take any region (:meth:`write_region`). Regions never written stay 0.
    """

    sequential: bool

    def __init__(self, final: Path, tmp: Path, shape: Sequence[int], geometry: dict | None,
                 dtype: np.dtype = np.uint8) -> None:
        self.final, self.tmp, self.shape, self.geometry = Path(final), Path(tmp), tuple(shape), geometry
        self.dtype = np.dtype(dtype)

    def write_plane(self, z: int, plane: np.ndarray) -> None:
        raise NotImplementedError

    def write_region(self, region: tuple[slice, slice, slice], data: np.ndarray) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Flush what is buffered to ``self.tmp``."""

    def commit(self) -> Path:
        """Finish the temporary output and move it to the final path; returns the final path."""
        self._close()
        if self.final.is_dir():
            self.final.rmdir()  # only an empty folder can be here: the caller checked
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        """Remove the temporary output."""
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp.exists():
            self.tmp.unlink()


class _SliceFolderWriter(MaskWriter):
    sequential = True

    def __init__(self, final, tmp, shape, geometry, slice_names: Sequence[str] | None, dtype=np.uint8) -> None:
        super().__init__(final, tmp, shape, geometry, dtype)
        self.tmp.mkdir(parents=True, exist_ok=True)
        width = max(5, len(str(self.shape[0])))
        self.names = list(slice_names) if slice_names else [f"slice_{z:0{width}d}.tif" for z in range(self.shape[0])]

    def write_plane(self, z: int, plane: np.ndarray) -> None:
        import tifffile

        tifffile.imwrite(self.tmp / self.names[z], np.ascontiguousarray(plane, dtype=self.dtype),
                         compression="zlib")


class _Tiff3DWriter(MaskWriter):
    sequential = True

    def __init__(self, final, tmp, shape, geometry, dtype=np.uint8) -> None:
        import tifffile

        super().__init__(final, tmp, shape, geometry, dtype)
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._writer = tifffile.TiffWriter(self.tmp, bigtiff=nbytes > 2**31)
        self._next = 0

    def write_plane(self, z: int, plane: np.ndarray) -> None:
        if z != self._next:
            raise RuntimeError(f"{self.final}: planes must be written in order; got {z}, expected {self._next}")
        # one page per plane, uncompressed and contiguous: a reader can memory-map the result
        self._writer.write(np.ascontiguousarray(plane, dtype=self.dtype), contiguous=True)
        self._next += 1

    def _close(self) -> None:
        self._writer.close()

    def abort(self) -> None:
        self._writer.close()
        super().abort()


class _Blosc2Writer(MaskWriter):
    sequential = False

    def __init__(self, final, tmp, shape, geometry, dtype=np.uint8) -> None:
        import blosc2

        super().__init__(final, tmp, shape, geometry, dtype)
        chunks = tuple(min(s, c) for s, c in zip(self.shape, (64, 256, 256)))
        blocks = tuple(min(s, c) for s, c in zip(self.shape, (16, 64, 64)))
        self._array = blosc2.zeros(self.shape, dtype=self.dtype, chunks=chunks, blocks=blocks,
                                   urlpath=str(self.tmp), mode="w")

    def write_region(self, region, data) -> None:
        self._array[region] = np.ascontiguousarray(data, dtype=self.dtype)

    def _close(self) -> None:
        del self._array


class _InMemoryWriter(MaskWriter):
    sequential = False

    def __init__(self, final, tmp, shape, geometry, dtype=np.uint8) -> None:
        super().__init__(final, tmp, shape, geometry, dtype)
        self._array = np.zeros(self.shape, dtype=self.dtype)

    def write_region(self, region, data) -> None:
        self._array[region] = data

    def _close(self) -> None:
        write_image(self.tmp, self._array, self.geometry)


def create_mask_writer(path: str | Path, tmp: str | Path, shape: Sequence[int], geometry: dict | None = None,
                       slice_names: Sequence[str] | None = None, dtype: np.dtype = np.uint8) -> MaskWriter:
    """A writer for a uint8 mask (or ``dtype``, e.g. uint32 instance labels) of ``shape`` ``(z, y, x)``
    whose final place is ``path``.

    Parameters
    ----------
    path : final output; its kind follows :func:`volume_kind` (no suffix: TIFF-slice folder).
    tmp : where the output is built; must be on the same file system as ``path`` (renamed at the end).
        A suffix matching ``path`` is added for single-file kinds.
    shape : (z, y, x) of the mask.
    geometry : spacing/origin/direction written to SimpleITK formats.
    slice_names : file names of the slices for a TIFF-slice folder (default ``slice_00000.tif``...).
    dtype : voxel type written (default uint8; ``objects`` writes uint32 instance labels).

    Raises
    ------
    ValueError naming the path for an unsupported output kind (OME-Zarr output is not supported).
    """
    path, tmp = Path(path), Path(tmp)
    kind = volume_kind(path)
    if kind == "slices":
        return _SliceFolderWriter(path, tmp, shape, geometry, slice_names, dtype)
    suffix = ".b2nd" if kind == "b2nd" else image_suffix(path)
    tmp = tmp.with_name(tmp.name + suffix)
    if kind == "tif":
        return _Tiff3DWriter(path, tmp, shape, geometry, dtype)
    if kind == "b2nd":
        return _Blosc2Writer(path, tmp, shape, geometry, dtype)
    if kind == "sitk":
        return _InMemoryWriter(path, tmp, shape, geometry, dtype)
    raise ValueError(f"{path}: cannot write this kind of output; expected {SUPPORTED_OUTPUTS}")

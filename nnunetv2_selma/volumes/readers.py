"""Block-wise readers and writers for volumes that do not fit in memory.

Readers (:func:`open_volume`) give a lazy ``(z, y, x)`` view whose :meth:`VolumeSource.read` loads
only the region asked for. Kinds and how much each really loads:

* folder of 2D TIFF slices (the SELMA3D form): one slice at a time; uncompressed slices are
  memory-mapped so only the rows asked for are read, compressed ones are decoded whole and cropped;
* 3D ``.tif``/``.tiff``: memory-mapped when uncompressed, else page by page;
* ``.b2nd`` (blosc2 NDArray): chunk-wise;
* OME-Zarr (a ``*.zarr`` folder): chunk-wise, through the ``zarr`` package (optional; a clear error
  says so when it is missing);
* ``.nii.gz``/``.nii``/``.mha``/``.nrrd``: SimpleITK has no partial reads, so the file is read
  whole once (these formats are used for patches, not whole brains).

Writers (:func:`create_mask_writer`) take uint8 masks (or uint32 instance labels) and write them to a
temporary path that :meth:`MaskWriter.commit` moves into place, so an interrupted write never leaves
a half output:

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

from nnunetv2_selma.io import (
    IDENTITY_GEOMETRY,
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    SliceSeries,
    image_suffix,
    read_image,
    write_image,
)

SUPPORTED_INPUTS = "a folder of 2D TIFF slices, a 3D .tif/.tiff, .nii.gz, .nii, .mha, .nrrd, .b2nd or OME-Zarr (.zarr)"
SUPPORTED_OUTPUTS = "a folder for TIFF slices (no suffix), .tif/.tiff, .b2nd, .nii.gz, .nii, .mha or .nrrd"


def volume_kind(path: str | Path) -> str:
    """Kind of a volume path: ``slices``, ``tif``, ``b2nd``, ``zarr``, ``sitk`` or '' if unknown.

    A path without a known suffix is a TIFF-slice folder (also when it does not exist yet).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".zarr") or (path.is_dir() and ((path / ".zattrs").exists() or (path / "zarr.json").exists())):
        return "zarr"
    if name.endswith(".b2nd"):
        return "b2nd"
    suffix = image_suffix(path)
    if suffix in TIFF_SUFFIXES:
        return "tif"
    if suffix in IMAGE_SUFFIXES:
        return "sitk"
    if path.exists() and not path.is_dir():
        return ""
    return "slices"


class VolumeSource:
    """A lazy 3D volume ``(z, y, x)``: ``shape``, ``dtype``, ``geometry``, ``read(region)``.

    ``region`` is a tuple of three ``slice`` objects with explicit, in-range ``start``/``stop``.
    ``read`` returns a new array of the source's dtype and the region's shape.
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    geometry: dict
    kind: str

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        raise NotImplementedError

    def check_all_planes(self) -> None:
        """Check, cheaply and before any output is written, that every plane can be read as announced."""

    def files(self) -> list[Path]:
        """The files whose size and modification time stand for the volume's content (in a fixed order).

        One file for single-file kinds, every slice for a slice folder, the array metadata for OME-Zarr
        (a whole brain has millions of chunk files; sampled content covers them, see ``whole_volume``).
        """
        return [self.path]


class _SliceFolderSource(VolumeSource):
    kind = "slices"

    def __init__(self, folder: Path) -> None:
        self.series = SliceSeries(folder)
        self.path = Path(folder)
        self.shape = tuple(int(s) for s in self.series.shape)
        self.dtype = np.dtype(self.series.dtype)
        self.geometry = dict(IDENTITY_GEOMETRY)

    def files(self) -> list[Path]:
        return list(self.series.files)

    def check_all_planes(self) -> None:
        # headers only: catches truncated files and slices of another size before any block is written
        import tifffile

        for path in self.series.files:
            try:
                with tifffile.TiffFile(path) as tif:
                    page = tif.pages[0]
                    shape, dtype = tuple(page.shape), np.dtype(page.dtype)
            except Exception as e:
                raise ValueError(f"{path}: unreadable slice ({type(e).__name__}: {e})") from e
            self._check_plane(path, shape, dtype)

    def _check_plane(self, path: Path, shape: tuple, dtype: np.dtype) -> None:
        if shape != self.shape[1:] or dtype != self.dtype:
            raise ValueError(
                f"{path}: found a slice of shape {shape} and dtype {dtype}; expected {self.shape[1:]} and "
                f"{self.dtype} like {self.series.files[0].name}. All slices of a volume must have one size."
            )

    def _plane(self, path: Path, rows: slice, cols: slice) -> np.ndarray:
        import tifffile

        try:
            try:
                plane = tifffile.memmap(path, mode="r")  # uncompressed: only the rows touched are read
            except ValueError:
                plane = tifffile.imread(path)
        except Exception as e:
            raise ValueError(f"{path}: unreadable slice ({type(e).__name__}: {e})") from e
        self._check_plane(path, plane.shape, plane.dtype)
        return np.array(plane[rows, cols])

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        zs, ys, xs = region
        out = np.empty((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), dtype=self.dtype)
        for i, path in enumerate(self.series.files[zs.start:zs.stop]):
            out[i] = self._plane(path, ys, xs)
        return out


class _Tiff3DSource(VolumeSource):
    kind = "tif"

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                self.shape = tuple(int(s) for s in series.shape)
                self.dtype = np.dtype(series.dtype)
                self._n_pages = len(tif.pages)
        except Exception as e:
            raise ValueError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
        if len(self.shape) != 3:
            raise ValueError(f"{path}: found an image of shape {self.shape}; expected a 3D image (z, y, x)")
        self.geometry = dict(IDENTITY_GEOMETRY)
        try:
            self._memmap = tifffile.memmap(path, mode="r")
        except Exception:  # compressed or tiled: fall back to page-wise reads
            self._memmap = None

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        if self._memmap is not None:
            return np.array(self._memmap[region])
        import tifffile

        zs, ys, xs = region
        with tifffile.TiffFile(self.path) as tif:
            if self._n_pages == self.shape[0]:
                planes = [tif.pages[z].asarray()[ys, xs] for z in range(zs.start, zs.stop)]
                return np.stack(planes).astype(self.dtype, copy=False)
            return np.array(tif.series[0].asarray()[region])  # a single page holding the volume


class _Blosc2Source(VolumeSource):
    kind = "b2nd"

    def __init__(self, path: Path) -> None:
        import blosc2

        self.path = path
        try:
            self._array = blosc2.open(str(path), mode="r")
        except Exception as e:
            raise ValueError(f"{path}: cannot be read as a blosc2 NDArray ({type(e).__name__}: {e})") from e
        if self._array.ndim != 3:
            raise ValueError(f"{path}: found an array of shape {self._array.shape}; expected a 3D image (z, y, x)")
        self.shape = tuple(int(s) for s in self._array.shape)
        self.dtype = np.dtype(self._array.dtype)
        self.geometry = dict(IDENTITY_GEOMETRY)

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        return np.asarray(self._array[region])


class _ZarrSource(VolumeSource):
    kind = "zarr"

    def __init__(self, path: Path) -> None:
        try:
            import zarr
        except ImportError as e:
            raise ValueError(
                f"{path}: reading OME-Zarr needs the 'zarr' package, which is not installed. Install it "
                f"(pip install zarr) or convert the volume to TIFF slices or .b2nd."
            ) from e
        self.path = path
        group = zarr.open(str(path), mode="r")
        array = group
        if not hasattr(group, "shape"):  # an OME-Zarr group: level 0 of the first multiscale
            multiscales = group.attrs.get("multiscales") or group.attrs.get("ome", {}).get("multiscales")
            if not multiscales:
                raise ValueError(f"{path}: a zarr group without OME 'multiscales' metadata; expected OME-Zarr")
            array = group[multiscales[0]["datasets"][0]["path"]]
        shape = tuple(int(s) for s in array.shape)
        lead = len(shape) - 3
        if lead < 0 or any(s != 1 for s in shape[:lead]):
            raise ValueError(f"{path}: found an array of shape {shape}; expected (z, y, x) with only singleton "
                             f"t/c axes before them (give one channel per -i)")
        self._array, self._lead = array, (0,) * lead
        self.shape = shape[lead:]
        self.dtype = np.dtype(array.dtype)
        self.geometry = dict(IDENTITY_GEOMETRY)

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        return np.asarray(self._array[(*self._lead, *region)])

    def files(self) -> list[Path]:
        # the group's and its arrays' metadata only: listing the chunk files of a whole brain takes minutes
        names = (".zarray", ".zattrs", ".zgroup", "zarr.json")
        folders = [self.path, *sorted(p for p in self.path.iterdir() if p.is_dir())]
        return [f / n for f in folders for n in names if (f / n).is_file()]


class _InMemorySource(VolumeSource):
    kind = "sitk"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._array, self.geometry = read_image(path)
        self.shape = tuple(int(s) for s in self._array.shape)
        self.dtype = self._array.dtype

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        return np.array(self._array[region])


def open_volume(path: str | Path) -> VolumeSource:
    """Open a 3D volume lazily.

    Parameters
    ----------
    path : str or Path
        A folder of 2D TIFF slices, a 3D ``.tif``/``.tiff``, ``.nii.gz``/``.nii``/``.mha``/``.nrrd``,
        ``.b2nd`` or an OME-Zarr folder.

    Returns
    -------
    VolumeSource with ``shape`` ``(z, y, x)``, ``dtype`` (the file's own) and ``read(region)``.

    Raises
    ------
    FileNotFoundError when ``path`` does not exist; ValueError naming the file for an unknown kind,
    an unreadable file, a non-3D image or (slice folders) a bad slice listing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input volume not found; expected {SUPPORTED_INPUTS}")
    kind = volume_kind(path)
    if kind == "slices":
        return _SliceFolderSource(path)
    if kind == "tif":
        return _Tiff3DSource(path)
    if kind == "b2nd":
        return _Blosc2Source(path)
    if kind == "zarr":
        return _ZarrSource(path)
    if kind == "sitk":
        return _InMemorySource(path)
    raise ValueError(f"{path}: unknown volume kind; expected {SUPPORTED_INPUTS}")


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

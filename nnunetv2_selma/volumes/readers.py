"""Lazy readers of 3D volumes that do not fit in memory: one interface, :class:`VolumeSource`.

:func:`open_volume` gives a lazy ``(z, y, x)`` view with two reads: :meth:`VolumeSource.read` loads
any region (block-wise inference), :meth:`VolumeSource.read_planes` loads whole planes ``z0:z1``
into a reused buffer (streaming passes: ingest, statistics, tissue masks). Kinds and how much each
really loads:

* folder of 2D TIFF slices (the SELMA3D form): one slice at a time; for regions, uncompressed slices
  are memory-mapped so only the rows asked for are read, compressed ones are decoded whole and cropped;
* 3D ``.tif``/``.tiff``: memory-mapped when uncompressed, else page by page;
* ``.b2nd`` (blosc2 NDArray): chunk-wise;
* OME-Zarr (a ``*.zarr`` folder): chunk-wise, through the ``zarr`` package (optional: install
  ``nnunetv2-selma[zarr]``; a clear error says so when it is missing);
* ``.nii.gz``/``.nii``/``.mha``/``.nrrd``: SimpleITK has no partial reads, so the file is read
  whole once (these formats are used for patches, not whole brains).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from nnunetv2_selma.volumes.images import (
    IDENTITY_GEOMETRY,
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    image_suffix,
    read_image,
)

SUPPORTED_INPUTS = "a folder of 2D TIFF slices, a 3D .tif/.tiff, .nii.gz, .nii, .mha, .nrrd, .b2nd or OME-Zarr (.zarr)"

_NUMBER = re.compile(r"(\d+)")
# microscope software often names planes like "Z0012_C00.tif": an explicit z index wins
_Z_NUMBER = re.compile(r"(?:^|[^A-Za-z])[Zz](\d+)")


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


def _into(out: np.ndarray | None, data: np.ndarray) -> np.ndarray:
    """``data`` itself, or copied into the first planes of the reused buffer ``out``."""
    if out is None:
        return np.asarray(data)
    out = out[: data.shape[0]]
    out[...] = data
    return out



def _read_slice(path: Path) -> np.ndarray:
    import tifffile

    try:
        return tifffile.imread(path)
    except Exception as e:
        raise ValueError(f"{path}: unreadable slice ({type(e).__name__}: {e})") from e


class MultiChannelVolumeError(ValueError):
    """A volume holding several channels (or time points) where one 3D channel is read.

    ``channels``: the length of its channel axis when the metadata names one, else None.
    """

    def __init__(self, message: str, channels: int | None = None) -> None:
        super().__init__(message)
        self.channels = channels

class VolumeSource:
    """A lazy 3D volume ``(z, y, x)``: ``shape``, ``dtype``, ``geometry``, ``read(region)``, ``read_planes(z0, z1)``.

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

    def read_planes(self, z0: int, z1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Whole planes ``z0:z1`` as ``(z1 - z0, y, x)``; ``out``, when given, is a reused buffer of at least
        that many planes that is filled and returned (its first ``z1 - z0`` planes): a fresh slab per read
        of a streaming pass costs page faults."""
        return _into(out, self.read((slice(z0, z1), slice(0, self.shape[1]), slice(0, self.shape[2]))))

    def where(self, z: int) -> str:
        """Where plane ``z`` lives, for error messages (the slice file of a slice folder)."""
        return f"{self.path} (z={z})"

    def check_all_planes(self) -> None:
        """Check, cheaply and before any output is written, that every plane can be read as announced."""

    def files(self) -> list[Path]:
        """The files whose size and modification time stand for the volume's content (in a fixed order).

        One file for single-file kinds, every slice for a slice folder, the array metadata for OME-Zarr
        (a whole brain has millions of chunk files; sampled content covers them, see ``inference.resume``).
        """
        return [self.path]

    def slice_names(self) -> list[str] | None:
        """The file names of a slice folder's planes in z order (an output written as slices takes them);
        None for every other kind."""
        return None


class _SliceFolderSource(VolumeSource):
    """A folder of 2D TIFF slices: only the first slice is read on opening (shape, dtype); every slice read
    later is checked against it."""

    kind = "slices"

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder)
        self._files = list_slice_files(self.path)
        first = _read_slice(self._files[0])
        if first.ndim != 2:
            raise ValueError(f"{self._files[0]}: found a slice of shape {first.shape}; expected a 2D image")
        self.shape = (len(self._files), *(int(s) for s in first.shape))
        self.dtype = np.dtype(first.dtype)
        self.geometry = dict(IDENTITY_GEOMETRY)

    def files(self) -> list[Path]:
        return list(self._files)

    def slice_names(self) -> list[str]:
        return [p.name for p in self._files]

    def where(self, z: int) -> str:
        return str(self._files[z])

    def check_all_planes(self) -> None:
        # headers only: catches truncated files and slices of another size before any block is written
        import tifffile

        for path in self._files:
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
                f"{self.dtype} like {self._files[0].name}. All slices of a volume must have one size."
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
        for i, path in enumerate(self._files[zs.start:zs.stop]):
            out[i] = self._plane(path, ys, xs)
        return out

    def read_planes(self, z0: int, z1: int, out: np.ndarray | None = None) -> np.ndarray:
        # whole slices decoded straight into the buffer, each checked against the first (shape, dtype)
        out = np.empty((z1 - z0, *self.shape[1:]), dtype=self.dtype) if out is None else out[: z1 - z0]
        for i, path in enumerate(self._files[z0:z1]):
            plane = _read_slice(path)
            self._check_plane(path, plane.shape, plane.dtype)
            out[i] = plane
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
        self._whole = None
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

    def read_planes(self, z0: int, z1: int, out: np.ndarray | None = None) -> np.ndarray:
        if self._memmap is not None:
            return _into(out, self._memmap[z0:z1])
        if self._n_pages != self.shape[0]:
            # a single compressed page holds the volume: decode it once for the whole pass, not per slab
            if self._whole is None:
                self._whole, _ = read_image(self.path)
            return _into(out, self._whole[z0:z1])
        import tifffile

        try:
            with tifffile.TiffFile(self.path) as tif:
                data = tif.asarray(key=range(z0, z1)).reshape(z1 - z0, *self.shape[1:])
        except Exception as e:
            raise ValueError(f"{self.path}: pages {z0}..{z1 - 1} unreadable ({type(e).__name__}: {e})") from e
        return _into(out, data)


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


def _ngff_geometry(multiscale: dict) -> dict:
    """Spacing and origin (x, y, z, as SimpleITK orders them) of level 0 of an NGFF ``multiscales`` entry:
    its ``scale`` and ``translation`` over the last three axes (z, y, x), times the multiscale-wide ones."""
    spacing, origin = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    for transforms in (multiscale["datasets"][0].get("coordinateTransformations", []),
                       multiscale.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale" and len(t.get("scale", [])) >= 3:
                spacing = [a * float(b) for a, b in zip(spacing, t["scale"][-3:])]
                origin = [a * float(b) for a, b in zip(origin, t["scale"][-3:])]
            elif t.get("type") == "translation" and len(t.get("translation", [])) >= 3:
                origin = [a + float(b) for a, b in zip(origin, t["translation"][-3:])]
    return {**IDENTITY_GEOMETRY, "spacing": tuple(spacing[::-1]), "origin": tuple(origin[::-1])}


class _ZarrSource(VolumeSource):
    kind = "zarr"

    def __init__(self, path: Path) -> None:
        try:
            import zarr
        except ImportError as e:
            raise ValueError(
                f"{path}: reading OME-Zarr needs the 'zarr' package, which is not installed. Install it "
                f"(pip install 'nnunetv2-selma[zarr]') or convert the volume to TIFF slices or .b2nd."
            ) from e
        self.path = path
        group = zarr.open(str(path), mode="r")
        array = group
        geometry = dict(IDENTITY_GEOMETRY)
        axes: list = []
        if not hasattr(group, "shape"):  # an OME-Zarr group: level 0 of the first multiscale
            multiscales = group.attrs.get("multiscales") or group.attrs.get("ome", {}).get("multiscales")
            if not multiscales:
                raise ValueError(f"{path}: a zarr group without OME 'multiscales' metadata; expected OME-Zarr")
            array = group[multiscales[0]["datasets"][0]["path"]]
            geometry = _ngff_geometry(multiscales[0])
            axes = multiscales[0].get("axes") or []
        shape = tuple(int(s) for s in array.shape)
        lead = len(shape) - 3
        if lead < 0 or any(s != 1 for s in shape[:lead]):
            # each command says how to give channels (predict_large: several -i; ingest: a file per channel)
            raise _multichannel_error(path, shape, axes)
        self._array, self._lead = array, (0,) * lead
        self.shape = shape[lead:]
        self.dtype = np.dtype(array.dtype)
        self.geometry = geometry

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        return np.asarray(self._array[(*self._lead, *region)])

    def files(self) -> list[Path]:
        # the group's and its arrays' metadata only: listing the chunk files of a whole brain takes minutes
        names = (".zarray", ".zattrs", ".zgroup", "zarr.json")
        folders = [self.path, *sorted(p for p in self.path.iterdir() if p.is_dir())]
        return [f / n for f in folders for n in names if (f / n).is_file()]


def _multichannel_error(path: Path, shape: tuple[int, ...], axes: list) -> MultiChannelVolumeError:
    """The refusal of an OME-Zarr array that is not one 3D channel, saying how many channels it holds when its
    NGFF ``axes`` (dicts of NGFF 0.4+, or names of 0.3) name a channel axis."""
    names = [a.get("name", "?") if isinstance(a, dict) else str(a) for a in axes]
    kinds = [a.get("type") if isinstance(a, dict) else None for a in axes]
    channel = next((i for i, (n, k) in enumerate(zip(names, kinds)) if k == "channel" or n == "c"), None)
    described = f"an array of shape {shape}" + (f", axes {' '.join(names)}" if len(names) == len(shape) else "")
    volume = "one 3D volume (z, y, x) with only singleton t/c axes before them"
    remedy = "write each channel as its own single-channel OME-Zarr"
    if len(names) == len(shape) and channel is not None and shape[channel] > 1:
        return MultiChannelVolumeError(f"{path}: holds {shape[channel]} channels ({described}); expected one "
                                       f"channel, {volume}: {remedy}", shape[channel])
    return MultiChannelVolumeError(f"{path}: found {described}; expected {volume}: {remedy}")


class _InMemorySource(VolumeSource):
    kind = "sitk"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._array, self.geometry = read_image(path)
        if self._array.ndim != 3:
            raise ValueError(f"{path}: found an image of shape {self._array.shape}; expected a 3D image (z, y, x)")
        self.shape = tuple(int(s) for s in self._array.shape)
        self.dtype = self._array.dtype

    def read(self, region: tuple[slice, slice, slice]) -> np.ndarray:
        return np.array(self._array[region])

    def read_planes(self, z0: int, z1: int, out: np.ndarray | None = None) -> np.ndarray:
        return _into(out, self._array[z0:z1])


def open_volume(path: str | Path) -> VolumeSource:
    """Open a 3D volume lazily.

    Parameters
    ----------
    path : str or Path
        A folder of 2D TIFF slices, a 3D ``.tif``/``.tiff``, ``.nii.gz``/``.nii``/``.mha``/``.nrrd``,
        ``.b2nd`` or an OME-Zarr folder.

    Returns
    -------
    VolumeSource with ``shape`` ``(z, y, x)``, ``dtype`` (the file's own), ``geometry``, ``read(region)``
    and ``read_planes(z0, z1, out=None)``.

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

"""Writers of volumes (masks, instance labels) that do not fit in memory: one interface, :class:`MaskWriter`.

:func:`create_mask_writer` takes uint8 masks (or uint32 instance labels) and writes them to a temporary
path that :meth:`MaskWriter.commit` moves into place, so an interrupted write never leaves a half output:

* TIFF-slice folder (a path without an image suffix): one slice file per z plane;
* 3D ``.tif``: page by page; ``.b2nd``: region by region;
* OME-Zarr (``.ome.zarr``; any ``*.zarr``): region by region into chunks, then a multiscale pyramid and NGFF 0.4
  metadata on commit (see :class:`_OmeZarrWriter`; needs ``nnunetv2-selma[zarr]``);
* ``.nii.gz``/``.nii``/``.mha``/``.nrrd``: held in memory (1 byte per voxel, 4 for uint32), written at the end.
"""

from __future__ import annotations

import itertools
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import commit_path, discard_path
from nnunetv2_selma.volumes.images import image_suffix, write_image
from nnunetv2_selma.volumes.readers import volume_kind

SUPPORTED_OUTPUTS = ("a folder for TIFF slices (no suffix), .tif/.tiff, .b2nd, OME-Zarr (.ome.zarr), .nii.gz, .nii, "
                     ".mha or .nrrd")
#: chunk of every OME-Zarr level (z, y, x), clipped to the level's shape: 2 MiB of uint8 (8 MiB of uint32);
#: thin in z so that a viewer showing one plane decodes 32 planes, not 64 or 128
OME_ZARR_CHUNKS = (32, 256, 256)
#: at most this many levels (level 0 included), each half the previous one per axis (rounded up) ...
OME_ZARR_MAX_LEVELS = 4
#: ... while the previous level's longest edge exceeds this (a 2000^3 brain: 2000, 1000, 500, 250)
OME_ZARR_MIN_EDGE = 32
#: unit written on the z, y, x axes: light-sheet voxel sizes are given in micrometres
OME_ZARR_UNIT = "micrometer"


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
        commit_path(self.tmp, self.final)  # only an empty folder can be at the final path: the caller checked
        return self.final

    def abort(self) -> None:
        """Remove the temporary output."""
        discard_path(self.tmp)

    def __enter__(self) -> MaskWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        """Commit when the block ends normally; abort (nothing at the final path) when it raises or commit does."""
        if exc_type is not None:
            self.abort()
            return False
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise
        return False


def write_blocks(writer: MaskWriter, placed: Sequence[tuple[tuple[slice, slice, slice], object]],
                 load, keep=None, progress: bool = False, desc: str = "writing") -> None:
    """Write blocks into ``writer``: ``placed`` holds each block's region of the volume and a key,
    ``load(key)`` its voxels (a memory map is fine), ``keep(region)`` (optional) a 0/1 array that multiplies
    them (e.g. a tissue mask). Region writers take one block at a time; plane writers one z plane at a
    time, with only the blocks that plane crosses open (a block behind the plane is released)."""
    from tqdm import tqdm

    if not writer.sequential:
        for region, key in tqdm(placed, desc=desc, disable=not progress, leave=False):
            data = load(key)[...]
            if keep is not None:
                data = data * keep(region)
            writer.write_region(region, data)
        return
    shape = writer.shape
    open_blocks: dict = {}
    for z in tqdm(range(shape[0]), desc=desc, disable=not progress, leave=False):
        plane = np.zeros(shape[1:], dtype=writer.dtype)
        for region, key in placed:
            if region[0].start <= z < region[0].stop:
                if key not in open_blocks:
                    open_blocks[key] = load(key)
                plane[region[1], region[2]] = open_blocks[key][z - region[0].start]
            elif z >= region[0].stop:
                open_blocks.pop(key, None)
        if keep is not None:
            plane *= keep((slice(z, z + 1), slice(0, shape[1]), slice(0, shape[2])))[0]
        writer.write_plane(z, plane)


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


def pyramid_shapes(shape: Sequence[int], max_levels: int = OME_ZARR_MAX_LEVELS,
                   min_edge: int = OME_ZARR_MIN_EDGE) -> list[tuple[int, ...]]:
    """Shapes of the OME-Zarr levels: level 0 is ``shape``, each next one ``ceil(previous / 2)`` per axis,
    added while fewer than ``max_levels`` and the previous level's longest edge is above ``min_edge``."""
    shapes = [tuple(int(s) for s in shape)]
    while len(shapes) < max_levels and max(shapes[-1]) > min_edge:
        shapes.append(tuple(math.ceil(s / 2) for s in shapes[-1]))
    return shapes


def downsample_labels(data: np.ndarray) -> np.ndarray:
    """Halve every axis of a label array (rounded up) by the maximum of each 2 x 2 x 2 cell.

    Why the maximum and not every second voxel: a cell is non-zero when any of its 8 voxels is, so a cell, a
    plaque edge or a vessel one voxel thin stays visible at the coarse levels a viewer shows first, where
    sampling every second voxel would drop 7 in 8 of them. Like sampling, the maximum never makes a value
    that is not in the data (no averaging of ids), so instance ids stay valid ids; where objects touch
    inside a cell the higher id (or class) wins. An odd last voxel is a cell of its own (padded with 0).
    """
    pad = [(0, s % 2) for s in data.shape]
    if any(p for _, p in pad):
        data = np.pad(data, pad)
    z, y, x = data.shape
    return data.reshape(z // 2, 2, y // 2, 2, x // 2, 2).max(axis=(1, 3, 5))


class _OmeZarrWriter(MaskWriter):
    """OME-Zarr (NGFF 0.4: zarr v2, ``/``-separated chunk keys), written region by region into level ``0``.

    :meth:`commit` then builds the pyramid (:func:`pyramid_shapes`, :func:`downsample_labels`), each level
    from the one before, one output chunk at a time (it reads 8 chunks: 16 MiB of uint8, 64 MiB of uint32),
    so memory never holds more than that whatever the volume's size. It then writes the ``multiscales``
    metadata with ome-zarr's own helpers: axes z, y, x in micrometres, per level a ``scale`` (the geometry's
    spacing times ``2^level``) and a ``translation`` (the origin, plus half the cell minus half a voxel at the
    coarse levels, so the levels overlay); a rotated direction is not written (NGFF 0.4 has no rotation).
    With ``labels`` (masks, instance ids) the group also carries ``image-label``, so napari's OME-Zarr
    reader opens it as a Labels layer. Chunks that are all 0 are not stored (zarr's default).
    """

    sequential = False

    def __init__(self, final, tmp, shape, geometry, dtype=np.uint8, labels: bool = True) -> None:
        try:
            import numcodecs
            import zarr
            from ome_zarr.format import FormatV04  # noqa: F401  (checked here, used at commit)
        except ImportError as e:
            raise ValueError(f"{final}: writing OME-Zarr needs the 'zarr' and 'ome-zarr' packages, which are not "
                             f"installed. Install them (pip install 'nnunetv2-selma[zarr]') or choose another "
                             f"output kind ({SUPPORTED_OUTPUTS}).") from e
        super().__init__(final, tmp, shape, geometry, dtype)
        self.labels = bool(labels)
        if self.tmp.exists():  # left by a killed run: it is ours and was never committed
            shutil.rmtree(self.tmp)
        self._root = zarr.open_group(str(self.tmp), mode="w-", zarr_format=2)
        self._compressor = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
        self._levels = [self._create_level(0, self.shape)]

    def _create_level(self, level: int, shape: Sequence[int]):
        chunks = tuple(min(s, c) for s, c in zip(shape, OME_ZARR_CHUNKS))
        return self._root.create_array(str(level), shape=tuple(shape), chunks=chunks, dtype=self.dtype,
                                       fill_value=0, compressors=self._compressor,
                                       chunk_key_encoding={"name": "v2", "separator": "/"})

    def write_region(self, region, data) -> None:
        self._levels[0][tuple(region)] = np.ascontiguousarray(data, dtype=self.dtype)

    def _build_pyramid(self) -> None:
        shapes = pyramid_shapes(self.shape)
        for level, shape in enumerate(shapes[1:], start=1):
            source, target = self._levels[level - 1], self._create_level(level, shape)
            steps = target.chunks
            for start in itertools.product(*[range(0, s, c) for s, c in zip(shape, steps)]):
                out = tuple(slice(a, min(a + c, s)) for a, c, s in zip(start, steps, shape))
                src = tuple(slice(2 * o.start, min(2 * o.stop, s)) for o, s in zip(out, source.shape))
                target[out] = downsample_labels(np.asarray(source[src]))
            self._levels.append(target)

    def _write_metadata(self) -> None:
        from ome_zarr.format import FormatV04
        from ome_zarr.writer import add_metadata, write_multiscales_metadata

        geometry = self.geometry or {}
        spacing = [float(s) for s in geometry.get("spacing", (1.0, 1.0, 1.0))][::-1]  # x, y, z -> z, y, x
        origin = [float(o) for o in geometry.get("origin", (0.0, 0.0, 0.0))][::-1]
        datasets = []
        for level in range(len(self._levels)):
            f = 2 ** level
            datasets.append({"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": [s * f for s in spacing]},
                {"type": "translation", "translation": [o + s * (f - 1) / 2 for o, s in zip(origin, spacing)]}]})
        fmt = FormatV04()
        axes = [{"name": a, "type": "space", "unit": OME_ZARR_UNIT} for a in "zyx"]
        name = self.final.name[: -len(".ome.zarr")] if self.final.name.endswith(".ome.zarr") else self.final.stem
        write_multiscales_metadata(self._root, datasets, fmt=fmt, axes=axes, name=name)
        if self.labels:
            add_metadata(self._root, {"image-label": {"version": fmt.version}}, fmt=fmt)

    def _close(self) -> None:
        self._build_pyramid()
        self._write_metadata()


class _InMemoryWriter(MaskWriter):
    sequential = False

    def __init__(self, final, tmp, shape, geometry, dtype=np.uint8) -> None:
        super().__init__(final, tmp, shape, geometry, dtype)
        self._array = np.zeros(self.shape, dtype=self.dtype)

    def write_region(self, region, data) -> None:
        self._array[region] = data

    def _close(self) -> None:
        write_image(self.tmp, self._array, self.geometry)


def check_output_path(path: str | Path, what: str = "output") -> str:
    """The kind (:func:`volume_kind`) of an output path that :func:`create_mask_writer` can write.

    Raises
    ------
    ValueError naming the path when no writer takes it (an unknown file suffix, e.g. ``out.png``, or a
    dotted name that would be taken for a slice folder).
    """
    path = Path(path)
    kind = volume_kind(path)
    if kind == "" or (kind == "slices" and any(c.isalpha() for c in path.suffix)):
        raise ValueError(f"{path}: cannot write {what} of kind {path.suffix or path.name!r}; expected "
                         f"{SUPPORTED_OUTPUTS} (a folder of TIFF slices is a path without a suffix)")
    return kind


def create_mask_writer(path: str | Path, tmp: str | Path, shape: Sequence[int], geometry: dict | None = None,
                       slice_names: Sequence[str] | None = None, dtype: np.dtype = np.uint8,
                       labels: bool = True) -> MaskWriter:
    """A writer for a uint8 mask (or ``dtype``, e.g. uint32 instance labels) of ``shape`` ``(z, y, x)``
    whose final place is ``path``.

    Parameters
    ----------
    path : final output; its kind follows :func:`volume_kind` (no suffix: TIFF-slice folder).
    tmp : where the output is built; must be on the same file system as ``path`` (renamed at the end).
        A suffix matching ``path`` is added for single-file kinds.
    shape : (z, y, x) of the mask.
    geometry : spacing/origin/direction written to SimpleITK formats; spacing and origin become OME-Zarr's
        scale and translation.
    slice_names : file names of the slices for a TIFF-slice folder (default ``slice_00000.tif``...).
    dtype : voxel type written (default uint8; ``objects`` writes uint32 instance labels).
    labels : OME-Zarr only: the voxels are labels (a mask, instance ids), marked ``image-label`` so that
        napari opens a Labels layer; False for values such as counts (``objects``' density map).

    Raises
    ------
    ValueError naming the path for an unsupported output kind, or for OME-Zarr when ``zarr``/``ome-zarr``
    are not installed.
    """
    path, tmp = Path(path), Path(tmp)
    kind = volume_kind(path)
    if kind == "slices":
        return _SliceFolderWriter(path, tmp, shape, geometry, slice_names, dtype)
    if kind == "zarr":
        return _OmeZarrWriter(path, tmp.with_name(tmp.name + ".ome.zarr"), shape, geometry, dtype, labels)
    suffix = ".b2nd" if kind == "b2nd" else image_suffix(path)
    tmp = tmp.with_name(tmp.name + suffix)
    if kind == "tif":
        return _Tiff3DWriter(path, tmp, shape, geometry, dtype)
    if kind == "b2nd":
        return _Blosc2Writer(path, tmp, shape, geometry, dtype)
    if kind == "sitk":
        return _InMemoryWriter(path, tmp, shape, geometry, dtype)
    raise ValueError(f"{path}: cannot write this kind of output; expected {SUPPORTED_OUTPUTS}")

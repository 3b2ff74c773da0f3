"""Ingest unannotated SELMA3D volumes into a streaming pretraining store (design decision 4).

A download holds ``unannotated_<structure>/<sample>/<channel>/`` folders of 2D TIFF slices
(and, in other releases, single 3D files). Each channel volume becomes one chunked, compressed
blosc2 array ``<store>/volumes/<structure>/<sample>/<channel>.b2nd``, written one slab of
``chunks[0]`` slices at a time, so peak memory is two slabs (``2 * chunks[0] * y * x * itemsize``:
the one being compressed and the next one being read), whatever the depth. For slice series a
forked reader process reads, checks, checksums and measures slab k + 1 while the ingesting
process compresses slab k, so a volume takes about as long as the slower of the two. In the same
single pass the ingester gathers

* a low-resolution block-mean image (one value per ``factor`` voxels), thresholded into a
  tissue mask saved beside the volume (``<channel>_tissue.npy``, boolean);
* intensity statistics over tissue (mean, std, percentiles) from a regular sub-grid of the
  voxels (every 4th voxel per axis), which keeps the pass at the speed of reading + compressing;
* a CRC32 of the raw voxels in C order, re-checked when a rerun decides whether a volume is done.

The tissue threshold is Otsu's on block means of a few evenly spaced slices (read once the
first slab is out), so the statistics of a slab can be restricted to tissue while it is in memory.

Resume and integrity: every file is written under a temporary name and renamed when complete;
the manifest (``manifest.json``, written atomically) lists a volume only after its file was
renamed. A rerun keeps a listed volume only if its file decodes to the recorded shape, dtype,
chunk count and CRC32 and its source is unchanged; everything else is redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunetv2_selma.io import (
    TIFF_SUFFIXES,
    SliceSeries,
    image_suffix,
    read_image,
    strip_image_suffix,
    write_json_atomic,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "nnunetv2_selma.pretraining_store"
MANIFEST_VERSION = 1
LOG_NAME = "ingest.log"
#: the manifest is rewritten at most this often during an ingest (and always at its end)
MANIFEST_INTERVAL_S = 2.0
VOLUME_FILE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd", ".tif", ".tiff", ".b2nd")

#: chunk and block shapes (z, y, x), chosen by benchmarks/bench_ingest.py for random 128^3 reads
DEFAULT_CHUNKS = (64, 128, 128)
DEFAULT_BLOCKS = (32, 32, 32)
#: fast codec: ingest must keep pace with reading the slices
DEFAULT_CODEC = "ZSTD"
DEFAULT_CLEVEL = 1
#: low-resolution tissue masks are at most this many voxels per axis
MASK_MAX_SIDE = 256
#: the tissue-threshold pre-pass reads this many evenly spaced slices
THRESHOLD_SLICES = 8

logger = logging.getLogger("nnunetv2_selma.ingest")


# ----------------------------------------------------------------------------------------------
# discovery
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VolumeSource:
    """One channel volume found in a download.

    ``kind`` is ``"slices"`` (``path`` is a folder of 2D TIFFs) or ``"file"`` (a 3D image).
    ``name`` is the store key ``<structure>/<sample>/<channel>``.
    """

    structure: str
    sample: str
    channel: str
    kind: str
    path: str

    @property
    def name(self) -> str:
        return f"{self.structure}/{self.sample}/{self.channel}"


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and (path.name.lower().endswith(".b2nd") or bool(image_suffix(path)))


def _volume_stem(path: Path) -> str:
    return path.name[: -len(".b2nd")] if path.name.lower().endswith(".b2nd") else strip_image_suffix(path)


def find_volume_sources(root: str | Path) -> list[VolumeSource]:
    """Every unannotated channel volume below ``root``, sorted by name.

    Layout searched (at any depth below ``root``, ``root`` itself included)::

        unannotated_<structure>/<sample>/<channel>/*.tif   -> slice series (any sub-folder is a channel,
                                                              an empty one is reported at ingest)
        unannotated_<structure>/<sample>/<channel>.<ext>   -> single 3D file, channel = file name
        unannotated_<structure>/<sample>.<ext>             -> single 3D file, channel "C00"

    with ``<ext>`` one of ``.tif .tiff .nii.gz .nii .mha .nrrd .b2nd``. TIFFs directly inside a
    sample folder are 3D files, never slices (slices live in channel folders).

    Raises
    ------
    ValueError naming ``root`` when it is missing or holds no ``unannotated_*`` folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: input folder does not exist; expected the SELMA3D download root")
    roots = [root] if root.name.startswith("unannotated_") else []
    roots += sorted(p for p in root.rglob("unannotated_*") if p.is_dir())
    if not roots:
        raise ValueError(f"{root}: found no 'unannotated_<structure>' folder; expected e.g. unannotated_vessel/")
    sources: list[VolumeSource] = []
    for struct_dir in roots:
        structure = struct_dir.name[len("unannotated_"):]
        for entry in sorted(struct_dir.iterdir()):
            if _is_volume_file(entry):
                sources.append(VolumeSource(structure, _volume_stem(entry), "C00", "file", str(entry)))
            elif entry.is_dir():
                for sub in sorted(entry.iterdir()):
                    if sub.is_dir():
                        sources.append(VolumeSource(structure, entry.name, sub.name, "slices", str(sub)))
                    elif _is_volume_file(sub):
                        sources.append(VolumeSource(structure, entry.name, _volume_stem(sub), "file", str(sub)))
    from collections import Counter

    # Counter, not list.count: 2026 downloads hold ~35,000 files, a quadratic scan took minutes
    dupes = sorted(n for n, k in Counter(s.name for s in sources).items() if k > 1)
    if dupes:
        raise ValueError(f"{root}: several sources map to the same volume name(s) {dupes}; rename one of them")
    return sorted(sources, key=lambda s: s.name)


# ----------------------------------------------------------------------------------------------
# lazy readers of one source: .shape, .dtype, .read(z0, z1), .where(z)
# ----------------------------------------------------------------------------------------------
class _SliceReader:
    def __init__(self, folder: str) -> None:
        self.series = SliceSeries(folder)
        self.shape, self.dtype = tuple(self.series.shape), np.dtype(self.series.dtype)

    def read(self, z0: int, z1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Slices ``z0:z1``, each checked against the first (shape, dtype) by :meth:`SliceSeries.read`;
        ``out`` is a reused slab buffer (a fresh slab per read costs page faults)."""
        return self.series.read(z0, z1, out=out)

    def where(self, z: int) -> str:
        return str(self.series.files[z])

    def signature(self) -> str:
        h = hashlib.sha256()
        for p in self.series.files:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()


class _FileReader:
    """A 3D file; TIFF pages and .b2nd are read lazily, other formats are loaded whole."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._array = None
        self._tiff = None
        if self.path.name.lower().endswith(".b2nd"):
            import blosc2

            try:
                self._array = blosc2.open(str(self.path), mode="r")
            except Exception as e:
                raise ValueError(f"{self.path}: cannot be opened as blosc2 ({type(e).__name__}: {e})") from e
            shape, dtype = self._array.shape, self._array.dtype
        elif image_suffix(self.path) in TIFF_SUFFIXES:
            shape, dtype = self._open_tiff()
        else:
            self._array, _ = read_image(self.path)
            shape, dtype = self._array.shape, self._array.dtype
        if len(shape) != 3:
            raise ValueError(f"{self.path}: found an image of shape {tuple(shape)}; expected a 3D image (z, y, x)")
        self.shape, self.dtype = tuple(int(s) for s in shape), np.dtype(dtype)

    def _open_tiff(self):
        import tifffile

        try:
            tif = tifffile.TiffFile(self.path)
            series = tif.series[0]
            if len(series.shape) == 3 and len(tif.pages) == series.shape[0]:
                # one page per z plane: read a slab of pages at a time, never the whole stack
                self._tiff = tif
                return series.shape, series.dtype
            tif.close()
        except Exception as e:
            raise ValueError(f"{self.path}: cannot be read ({type(e).__name__}: {e})") from e
        self._array, _ = read_image(self.path)
        return self._array.shape, self._array.dtype

    def read(self, z0: int, z1: int, out: np.ndarray | None = None) -> np.ndarray:
        if self._tiff is not None:
            try:
                data = self._tiff.asarray(key=range(z0, z1)).reshape(z1 - z0, *self.shape[1:])
            except Exception as e:
                raise ValueError(f"{self.path}: pages {z0}..{z1 - 1} unreadable ({type(e).__name__}: {e})") from e
        else:
            data = np.asarray(self._array[z0:z1])
        if out is None:
            return data
        out = out[: z1 - z0]
        out[...] = data
        return out

    def where(self, z: int) -> str:
        return f"{self.path} (z={z})"

    def signature(self) -> str:
        return _file_signature(self.path)


def _file_signature(path: Path) -> str:
    """Name, size and mtime of a 3D source file: needs no reader (opening a .nii.gz reads it whole)."""
    st = path.stat()
    return hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def _open_source(source: VolumeSource):
    return _SliceReader(source.path) if source.kind == "slices" else _FileReader(source.path)


# ----------------------------------------------------------------------------------------------
# statistics and tissue mask, gathered slab by slab
# ----------------------------------------------------------------------------------------------
def _pow2_at_least(n: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def mask_factors(shape: tuple[int, int, int], chunk_z: int) -> tuple[int, int, int]:
    """Down-sampling factors (z, y, x) of the tissue mask: powers of two >= 8 keeping every mask
    side <= ``MASK_MAX_SIDE``; the z factor divides ``chunk_z`` so a mask block never straddles slabs."""
    f = [max(8, _pow2_at_least(s / MASK_MAX_SIDE)) for s in shape]
    f[0] = min(f[0], chunk_z)
    return tuple(f)


class _TissueStats:
    """Block means (low-res image) and a histogram / sample of tissue voxels on a sub-grid."""

    def __init__(self, shape, dtype, factors, threshold: float) -> None:
        self.shape, self.dtype, self.f = shape, np.dtype(dtype), factors
        # statistics and block means use every 4th voxel per axis (1/64 of the data): enough
        # samples (8+ per mask block, millions per volume) and cheap beside reading + compressing
        self.step = tuple(min(4, f) for f in factors)
        self.threshold = threshold
        self.low_shape = tuple(math.ceil(s / f) for s, f in zip(shape, factors))
        self.low_sum = np.zeros(self.low_shape, np.float64)
        self.low_cnt = np.zeros(self.low_shape, np.int64)
        self.integer = self.dtype.kind in "ui" and self.dtype.itemsize <= 2
        if self.integer:
            self.offset = int(np.iinfo(self.dtype).min)
            self.hist = np.zeros(1 << (8 * self.dtype.itemsize), np.int64)
        else:
            self.samples: list[np.ndarray] = []
        self.n_tissue_sub = 0
        self.n_sub = 0

    def _block_sums(self, sub: np.ndarray, z0: int):
        """Sums and counts of ``sub`` (sub-grid of a slab starting at voxel ``z0``) per mask block."""
        fz, fy, fx = (f // s for f, s in zip(self.f, self.step))  # sub-grid points per block side
        nz, ny, nx = sub.shape
        bz0 = z0 // self.f[0]
        pz, py, px = math.ceil(nz / fz) * fz, math.ceil(ny / fy) * fy, math.ceil(nx / fx) * fx
        shape6 = (pz // fz, fz, py // fy, fy, px // fx, fx)
        if (pz, py, px) == (nz, ny, nx):
            sums = sub.reshape(shape6).sum(axis=(1, 3, 5), dtype=np.float64)
            cnts = np.full(sums.shape, fz * fy * fx, np.int64)
        else:
            pad = np.zeros((pz, py, px), np.float64)
            cnt = np.zeros((pz, py, px), np.int32)
            pad[:nz, :ny, :nx] = sub
            cnt[:nz, :ny, :nx] = 1
            sums = pad.reshape(shape6).sum(axis=(1, 3, 5))
            cnts = cnt.reshape(shape6).sum(axis=(1, 3, 5))
        nbz = min(sums.shape[0], self.low_shape[0] - bz0)
        ly, lx = self.low_shape[1], self.low_shape[2]
        return sums[:nbz, :ly, :lx], cnts[:nbz, :ly, :lx], bz0

    def update(self, slab: np.ndarray, z0: int) -> None:
        sz, sy, sx = self.step
        # z0 is a multiple of chunk_z, itself a multiple of the z factor: the sub-grid stays aligned
        sub = np.ascontiguousarray(slab[::sz, ::sy, ::sx])
        sums, cnts, bz0 = self._block_sums(sub, z0)
        self.low_sum[bz0 : bz0 + sums.shape[0]] += sums
        self.low_cnt[bz0 : bz0 + sums.shape[0]] += cnts
        means = sums / np.maximum(cnts, 1)
        tissue_blocks = means >= self.threshold
        fz, fy, fx = (f // s for f, s in zip(self.f, self.step))
        sel = np.repeat(np.repeat(np.repeat(tissue_blocks, fz, 0), fy, 1), fx, 2)
        sel = sel[: sub.shape[0], : sub.shape[1], : sub.shape[2]]
        values = sub[sel]
        self.n_sub += sub.size
        self.n_tissue_sub += values.size
        if self.integer:
            self.hist += np.bincount((values.astype(np.int64) - self.offset).ravel(), minlength=self.hist.size)
        else:
            self.samples.append(values.astype(np.float64).ravel())

    def mask(self) -> np.ndarray:
        means = self.low_sum / np.maximum(self.low_cnt, 1)
        return means >= self.threshold

    def stats(self) -> dict:
        qs = {"p00_5": 0.5, "p01": 1.0, "p05": 5.0, "p25": 25.0, "p50": 50.0, "p75": 75.0, "p95": 95.0,
              "p99": 99.0, "p99_5": 99.5}
        out: dict = {"sampled_voxels": int(self.n_tissue_sub),
                     "tissue_fraction": self.n_tissue_sub / max(self.n_sub, 1),
                     "sample_step": list(self.step), "threshold": float(self.threshold)}
        if self.n_tissue_sub == 0:
            out.update({"mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0, **{k: 0.0 for k in qs}})
            return out
        if self.integer:
            values = np.arange(self.hist.size, dtype=np.float64) + self.offset
            n = self.hist.sum()
            mean = float((self.hist * values).sum() / n)
            var = float((self.hist * (values - mean) ** 2).sum() / n)
            cdf = np.cumsum(self.hist)
            nz = np.flatnonzero(self.hist)
            out.update({"mean": mean, "std": math.sqrt(var), "min": float(values[nz[0]]), "max": float(values[nz[-1]])})
            for k, q in qs.items():
                # lower percentile ("inverted_cdf"): the smallest value with cdf >= q% of n
                out[k] = float(values[np.searchsorted(cdf, q / 100.0 * n)])
        else:
            v = np.concatenate(self.samples)
            out.update({"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "max": float(v.max())})
            pct = np.percentile(v, list(qs.values()))
            out.update({k: float(p) for k, p in zip(qs, pct)})
        return out


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape, finite), the same number as
    ``skimage.filters.threshold_otsu(values, nbins)``: the bin centre of a ``nbins``-bin histogram
    over ``[min, max]`` that maximises the between-class variance.

    Written with numpy because importing ``skimage.filters`` (it pulls in ``scipy.ndimage``)
    costs 0.2-0.5 s, paid again by every forked slab reader of :func:`ingest_volume`.
    A constant input returns that constant.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(values, bins=nbins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    with np.errstate(invalid="ignore", divide="ignore"):  # empty classes give nan, never the maximum
        m1 = np.cumsum(counts * centres) / w1
        m2 = (np.cumsum((counts * centres)[::-1]) / w2[::-1])[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[int(np.nanargmax(between))])


def _tissue_threshold(reader, factors) -> float:
    """Otsu threshold of 2D block means on a few evenly spaced slices (the whole volume's tissue
    threshold, known before the statistics of the first slab are taken)."""
    z = reader.shape[0]
    picks = sorted({int(round(i)) for i in np.linspace(0, z - 1, min(THRESHOLD_SLICES, z))})
    _, fy, fx = factors
    means = []
    for k in picks:
        plane = reader.read(k, k + 1)[0]
        if plane.dtype.kind == "f" and np.isnan(plane).any():
            raise ValueError(f"{reader.where(k)}: found NaN voxels; expected finite intensities")
        sy, sx = max(1, fy // 4), max(1, fx // 4)
        sub = plane[::sy, ::sx].astype(np.float64)
        gy, gx = fy // sy, fx // sx
        py, px = math.ceil(sub.shape[0] / gy) * gy, math.ceil(sub.shape[1] / gx) * gx
        pad = np.full((py, px), np.nan)
        pad[: sub.shape[0], : sub.shape[1]] = sub
        means.append(np.nanmean(pad.reshape(py // gy, gy, px // gx, gx), axis=(1, 3)).ravel())
    # a constant image returns its value: everything is "tissue"
    return otsu_threshold(np.concatenate(means))


def low_resolution_tissue_mask(reader, chunk_z: int = DEFAULT_CHUNKS[0]) -> tuple[np.ndarray, tuple, float]:
    """The tissue mask ingest stores beside a volume, for any lazy reader (``.shape``, ``.dtype``,
    ``.read(z0, z1)``, ``.where(z)``): same factors, same Otsu threshold on block means, same sub-grid.

    Reads the volume once, ``factors[0]`` planes at a time. Returns ``(mask, factors, threshold)``:
    boolean ``mask`` of shape ``ceil(shape / factors)``, one value per ``factors`` (z, y, x) voxels.
    ``predict_large --tissue-mask auto`` uses it on its input.
    """
    factors = mask_factors(tuple(reader.shape), chunk_z)
    threshold = _tissue_threshold(reader, factors)
    stats = _TissueStats(tuple(reader.shape), reader.dtype, factors, threshold)
    for z0 in range(0, reader.shape[0], factors[0]):
        stats.update(reader.read(z0, min(reader.shape[0], z0 + factors[0])), z0)
    return stats.mask(), factors, threshold


# ----------------------------------------------------------------------------------------------
# writing one volume
# ----------------------------------------------------------------------------------------------
def _cparams(codec: str, clevel: int, nthreads: int) -> dict:
    import blosc2

    return {"codec": getattr(blosc2.Codec, codec), "clevel": clevel, "filters": [blosc2.Filter.SHUFFLE],
            "nthreads": nthreads}


class _SlabSource:
    """The slabs of one source in z order, with the CRC32 and tissue statistics gathered on the way.

    For every slab of ``slab_depth`` planes the producer reads it into one of two reused buffers,
    rejects NaN planes, updates the CRC32 of the raw voxels (C order) and the tissue statistics
    (after the tissue-threshold pre-pass, done once the first slab is out). Iterating yields
    ``(z0, z1, buffer)`` (planes ``z0:z1`` are ``buffer[: z1 - z0]``); the consumer hands each
    buffer back with :meth:`release` once it is written, and calls :meth:`close` in any case.
    After the last slab, :attr:`crc` and :attr:`stats` hold the results. Peak memory: two slabs.

    For slice series on systems with ``fork``, the producer is a child process writing into
    shared anonymous memory, so reading, checksumming and statistics run beside the compression
    in the parent: blosc2 holds the GIL while it compresses a slice of an NDArray, so a thread
    would not overlap. Other sources (3D files, loaded whole or read through blosc2, whose thread
    pools must not cross a fork) are produced in-process, one slab after the other.
    """

    def __init__(self, reader, slab_depth: int, factors, kind: str) -> None:
        import multiprocessing

        self.reader, self.factors = reader, factors
        self.crc = 0
        self.stats: _TissueStats | None = None
        shape, dtype = reader.shape, reader.dtype
        self.depth = min(slab_depth, shape[0])
        nbuf = 2 if shape[0] > self.depth else 1
        slab_bytes = self.depth * shape[1] * shape[2] * dtype.itemsize
        self._proc = None
        if kind == "slices" and "fork" in multiprocessing.get_all_start_methods():
            import mmap

            self._mem = mmap.mmap(-1, nbuf * slab_bytes)  # MAP_SHARED | MAP_ANONYMOUS: seen by the child
            self._bufs = [np.frombuffer(self._mem, dtype, self.depth * shape[1] * shape[2], i * slab_bytes)
                          .reshape(self.depth, *shape[1:]) for i in range(nbuf)]
            ctx = multiprocessing.get_context("fork")
            self._free_r, self._free_w = ctx.Pipe(duplex=False)
            self._done_r, self._done_w = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(target=self._child, name="ingest-reader")
            self._proc.start()
            self._free_r.close()
            self._done_w.close()
        else:
            self._bufs = [np.empty((self.depth, *shape[1:]), dtype) for _ in range(nbuf)]

    def _produce(self, wait_free):
        """Generator of ``("slab", index, z0, z1)`` then ``("done", crc, stats)``.

        A slab is announced as soon as it is read and checked; its CRC32 and statistics (and,
        for the first, the tissue-threshold pre-pass) follow while the consumer compresses it,
        which only reads the buffer. A buffer is refilled only after the consumer released it.
        """
        reader = self.reader
        shape, dtype = reader.shape, reader.dtype
        stats, crc = None, 0
        for k, z0 in enumerate(range(0, shape[0], self.depth)):
            i = k % len(self._bufs)
            if k >= len(self._bufs):
                wait_free()
            z1 = min(z0 + self.depth, shape[0])
            data = reader.read(z0, z1, out=self._bufs[i])
            if dtype.kind == "f":
                bad = np.flatnonzero(np.isnan(data).reshape(data.shape[0], -1).any(axis=1))
                if bad.size:
                    raise ValueError(f"{reader.where(z0 + int(bad[0]))}: found NaN voxels; expected finite "
                                     f"intensities (fix or drop this slice)")
            yield ("slab", i, z0, z1)
            if stats is None:
                stats = _TissueStats(shape, dtype, self.factors, _tissue_threshold(reader, self.factors))
            crc = zlib.crc32(data, crc)  # slab buffers are C-contiguous
            stats.update(data, z0)
        yield ("done", crc, stats)

    def _child(self) -> None:
        self._free_w.close()  # so that a dead parent shows up as EOF here
        self._done_r.close()
        try:
            try:
                for msg in self._produce(self._free_r.recv):
                    self._done_w.send(msg)
            except (EOFError, BrokenPipeError):
                return  # the parent is gone or gave up: nobody to tell
            except BaseException as e:  # handed to the parent, which raises it
                try:
                    self._done_w.send(("error", e))
                except (pickle.PicklingError, TypeError, AttributeError):
                    self._done_w.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
        except (EOFError, BrokenPipeError):
            return

    def __iter__(self):
        if self._proc is None:
            # in-process: the consumer has released the buffer before the generator resumes
            for msg in self._produce(lambda: None):
                if msg[0] == "done":
                    self.crc, self.stats = msg[1], msg[2]
                    return
                yield msg[2], msg[3], self._bufs[msg[1]]
            return
        while True:
            try:
                msg = self._done_r.recv()
            except EOFError:
                self._proc.join()
                raise RuntimeError(f"{self.reader.where(0)}: the slab reader process died "
                                   f"(exit code {self._proc.exitcode})") from None
            if msg[0] == "error":
                raise msg[1]
            if msg[0] == "done":
                self.crc, self.stats = msg[1], msg[2]
                return
            yield msg[2], msg[3], self._bufs[msg[1]]

    def release(self, buffer: np.ndarray) -> None:
        """Give a slab buffer back to the producer once its planes are written."""
        if self._proc is not None:
            self._free_w.send(True)

    def close(self) -> None:
        """Stop the producer (finished or not) and free the shared memory."""
        if self._proc is None:
            return
        self._free_w.close()
        self._done_r.close()
        self._proc.join(timeout=5)
        if self._proc.exitcode is None:  # still busy reading after an error in the parent
            self._proc.terminate()
            self._proc.join()
        self._bufs, self._mem = [], None  # unmapped when the last view of it is gone


def volume_paths(store: str | Path, name: str) -> tuple[Path, Path]:
    """Paths of the array (``.b2nd``) and tissue mask (``_tissue.npy``) of volume ``name`` in ``store``."""
    base = Path(store) / "volumes" / name
    return base.with_name(base.name + ".b2nd"), base.with_name(base.name + "_tissue.npy")


def ingest_volume(source: VolumeSource, store: str | Path, chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
                  blocks: tuple[int, int, int] = DEFAULT_BLOCKS, codec: str = DEFAULT_CODEC,
                  clevel: int = DEFAULT_CLEVEL, nthreads: int = 1) -> dict:
    """Write one source volume into ``store`` and return its manifest entry.

    Reads ``chunks[0]`` slices at a time (two such slabs are the peak memory; see
    :class:`_SlabSource`), writes them into a blosc2 array of the source dtype (int16 negatives
    are kept), updates tissue statistics and the CRC32, then renames the temporary array and mask
    into place. On failure the temporary array is removed.

    Returns
    -------
    dict: name, structure, sample, channel, source, source_kind, source_signature, shape, dtype,
    chunks, blocks, codec, clevel, nchunks, crc32, nbytes, cbytes, file, tissue_mask, mask_factors,
    stats (see :class:`_TissueStats`), seconds.

    Raises
    ------
    ValueError naming the slice/file and the reason: unreadable slice, size or dtype mismatch in
    a series, gap in the numbering, empty folder, NaN in float input, empty volume.
    """
    t0 = time.perf_counter()
    reader = _open_source(source)
    shape, dtype = reader.shape, reader.dtype
    if min(shape) < 1:
        raise ValueError(f"{source.path}: volume of shape {shape} holds no voxel")
    if dtype.kind not in "uif":
        raise ValueError(f"{source.path}: found dtype {dtype}; expected an integer or float image")
    chunks_eff = tuple(min(c, s) for c, s in zip(chunks, shape))
    blocks_eff = tuple(min(b, c) for b, c in zip(blocks, chunks_eff))
    factors = mask_factors(shape, chunks[0])

    array_path, mask_path = volume_paths(store, source.name)
    array_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_array = array_path.with_name(array_path.name + ".partial")
    tmp_mask = mask_path.with_name(mask_path.name[: -len(".npy")] + ".partial.npy")
    for p in (tmp_array, tmp_mask):
        p.unlink(missing_ok=True)
    slabs = _SlabSource(reader, chunks_eff[0], factors, source.kind)
    try:
        import blosc2  # after the producer started: it reads the first slab meanwhile

        out = blosc2.empty(shape, dtype=dtype, chunks=chunks_eff, blocks=blocks_eff, urlpath=str(tmp_array),
                           cparams=_cparams(codec, clevel, nthreads), mode="w")
        # the producer reads, checks, checksums and measures slab k + 1 while this process
        # compresses slab k: ingest runs at the speed of the slower of the two, not their sum
        for z0, z1, buf in slabs:
            out[z0:z1] = buf[: z1 - z0]
            slabs.release(buf)
    except BaseException:
        tmp_array.unlink(missing_ok=True)  # a failed volume leaves nothing behind
        raise
    finally:
        slabs.close()
    crc, stats = slabs.crc, slabs.stats
    nchunks, cbytes = int(out.schunk.nchunks), int(out.schunk.cbytes)
    del out
    np.save(tmp_mask, stats.mask())
    os.replace(tmp_mask, mask_path)
    os.replace(tmp_array, array_path)
    store = Path(store)
    return {
        "name": source.name, "structure": source.structure, "sample": source.sample, "channel": source.channel,
        "source": source.path, "source_kind": source.kind, "source_signature": reader.signature(),
        "shape": list(shape), "dtype": dtype.str, "chunks": list(chunks_eff), "blocks": list(blocks_eff),
        "codec": codec, "clevel": clevel, "nchunks": nchunks, "crc32": crc,
        "nbytes": int(np.prod(shape)) * dtype.itemsize, "cbytes": cbytes,
        "file": array_path.relative_to(store).as_posix(), "tissue_mask": mask_path.relative_to(store).as_posix(),
        "mask_factors": list(factors), "stats": stats.stats(), "seconds": time.perf_counter() - t0,
    }


def verify_volume(store: str | Path, entry: dict, check_source: bool = True) -> str | None:
    """Check that a manifest entry's files exist and decode to what was recorded.

    Decodes the array slab by slab (bounded memory) and compares shape, dtype, chunk count and
    CRC32; with ``check_source`` also that the source still has the recorded signature.

    Returns
    -------
    None when the volume is intact, else the reason (str).
    """
    import blosc2

    store = Path(store)
    array_path, mask_path = store / entry["file"], store / entry["tissue_mask"]
    if not array_path.is_file() or not mask_path.is_file():
        return f"missing {array_path if not array_path.is_file() else mask_path}"
    try:
        arr = blosc2.open(str(array_path), mode="r")
        if list(arr.shape) != entry["shape"] or arr.dtype.str != entry["dtype"]:
            return (f"{array_path}: shape {arr.shape}/{arr.dtype} differs from manifest "
                    f"{entry['shape']}/{entry['dtype']}")
        if int(arr.schunk.nchunks) != entry["nchunks"]:
            return f"{array_path}: {arr.schunk.nchunks} chunks, manifest says {entry['nchunks']}"
        crc, step = 0, int(entry["chunks"][0])
        for z0 in range(0, arr.shape[0], step):
            crc = zlib.crc32(np.ascontiguousarray(arr[z0 : z0 + step]), crc)
        if crc != entry["crc32"]:
            return f"{array_path}: CRC32 {crc} differs from manifest {entry['crc32']} (corrupt)"
        np.load(mask_path)
    except Exception as e:
        return f"{array_path}: cannot be decoded ({type(e).__name__}: {e})"
    if check_source and Path(entry["source"]).exists():
        try:
            # a file that no longer reads has another size or mtime: its signature needs no reader
            sig = (_file_signature(Path(entry["source"])) if entry["source_kind"] == "file"
                   else _SliceReader(entry["source"]).signature())
        except ValueError as e:
            return f"source changed and no longer reads: {e}"
        if sig != entry["source_signature"]:
            return f"{entry['source']}: source changed since ingest"
    return None


# ----------------------------------------------------------------------------------------------
# the whole store
# ----------------------------------------------------------------------------------------------
@dataclass
class IngestReport:
    """Outcome of :func:`ingest_store`: volume names written now, kept from before, and failures
    (``{"name", "source", "reason"}``)."""

    store: str
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def load_manifest(store: str | Path) -> dict:
    """Read ``<store>/manifest.json``.

    Raises
    ------
    FileNotFoundError / ValueError naming the file when it is missing, not a store manifest, or of
    another version.
    """
    path = Path(store) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pretraining-store manifest; create the store with nnUNetv2_selma_ingest")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: found format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                         f"expected {MANIFEST_FORMAT!r} version {MANIFEST_VERSION}. Re-ingest into a new store.")
    return manifest


def _write_manifest(store: Path, volumes: dict, failed: list[dict], params: dict) -> None:
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "params": params,
                "volumes": dict(sorted(volumes.items())), "failed": failed}
    write_json_atomic(store / MANIFEST_NAME, manifest)


def _safe_ingest(source: VolumeSource, store: str, kwargs: dict) -> tuple[VolumeSource, dict | None, str | None]:
    try:
        return source, ingest_volume(source, store, **kwargs), None
    except Exception as e:  # a bad volume never stops the others
        reason = str(e) if isinstance(e, ValueError) else f"{source.path}: {type(e).__name__}: {e}"
        return source, None, reason


def _check_store_apart_from_input(input_root: Path, store: Path) -> None:
    """Refuse a store inside the input (the next run would search it for volumes) or the input inside the store."""
    inp, out = input_root.resolve(), store.resolve()
    if out == inp or out.is_relative_to(inp):
        raise ValueError(f"store {store} is inside the input folder {input_root}; a rerun would search the store "
                         "for volumes. Choose a store folder outside the download root")
    if inp.is_relative_to(out):
        raise ValueError(f"input folder {input_root} is inside the store {store}; choose a store folder that does "
                         "not contain the download")


def ingest_store(input_root: str | Path, store: str | Path, num_processes: int = 1,
                 chunks: tuple[int, int, int] = DEFAULT_CHUNKS, blocks: tuple[int, int, int] = DEFAULT_BLOCKS,
                 codec: str = DEFAULT_CODEC, clevel: int = DEFAULT_CLEVEL, progress: bool = True) -> IngestReport:
    """Ingest every unannotated volume below ``input_root`` into ``store`` (resumable).

    Volumes already in the manifest are verified (:func:`verify_volume`) and kept when intact;
    the others are written by ``num_processes`` worker processes. The manifest is rewritten
    atomically after every finished volume, so killing the ingest at any moment leaves a valid
    store; a rerun finishes the job. A log goes to ``<store>/ingest.log``.

    Returns
    -------
    IngestReport; ``report.ok`` is False when any volume failed (each failure names the file and reason).

    Raises
    ------
    ValueError, before anything is created, when ``input_root`` is missing or holds no
    ``unannotated_*`` folder, or when the store lies inside ``input_root`` (or ``input_root``
    inside the store).
    """
    from tqdm import tqdm

    store = Path(store)
    # checked before anything is created: a failed start leaves no store folder and no log behind
    _check_store_apart_from_input(Path(input_root), store)
    sources = find_volume_sources(input_root)
    store.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(store / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        params = {"chunks": list(chunks), "blocks": list(blocks), "codec": codec, "clevel": clevel}
        try:
            old = load_manifest(store)
            volumes = old["volumes"] if old.get("params") == params else {}
        except FileNotFoundError:
            volumes = {}
        report = IngestReport(str(store))
        wanted = {s.name for s in sources}
        volumes = {k: v for k, v in volumes.items() if k in wanted}
        todo = []
        for s in sources:
            entry = volumes.get(s.name)
            if entry is not None and entry["source"] == s.path:
                reason = verify_volume(store, entry)
                if reason is None:
                    report.kept.append(s.name)
                    logger.info("kept %s (verified)", s.name)
                    continue
                logger.warning("redoing %s: %s", s.name, reason)
            volumes.pop(s.name, None)
            todo.append(s)
        logger.info("ingest %s -> %s: %d volumes, %d kept, %d to write with %d process(es)",
                    input_root, store, len(sources), len(report.kept), len(todo), num_processes)
        _write_manifest(store, volumes, [], params)
        # blosc2 threads share the cores with the worker processes, each of which leaves one core
        # to its slab reader process (measured: on 2 cores, 1 blosc2 thread + the reader beats 2 + the reader)
        kwargs = dict(chunks=tuple(chunks), blocks=tuple(blocks), codec=codec, clevel=clevel,
                      nthreads=max(1, (os.cpu_count() or 1) // max(num_processes, 1) - 1))
        bar = tqdm(total=len(todo), desc="ingest", unit="volume", disable=not progress)
        # Rewriting the whole manifest after each of ~35,000 small 2026 patches is quadratic: write
        # it at most every MANIFEST_INTERVAL_S and once at the end. A kill loses at most that much
        # work: unlisted volumes are redone on the rerun, so the store stays valid.
        last_write = [time.monotonic()]

        def record(source, entry, reason):
            if reason is None:
                volumes[source.name] = entry
                report.written.append(source.name)
                logger.info("wrote %s %s %s in %.1f s", source.name, entry["shape"], entry["dtype"], entry["seconds"])
            else:
                report.failed.append({"name": source.name, "source": source.path, "reason": reason})
                logger.error("FAILED %s: %s", source.name, reason)
            if time.monotonic() - last_write[0] >= MANIFEST_INTERVAL_S:
                _write_manifest(store, volumes, report.failed, params)
                last_write[0] = time.monotonic()
            bar.update(1)

        if num_processes <= 1:
            for s in todo:
                record(*_safe_ingest(s, str(store), kwargs))
        elif todo:
            with ProcessPoolExecutor(max_workers=num_processes) as pool:
                futures = [pool.submit(_safe_ingest, s, str(store), kwargs) for s in todo]
                for fut in as_completed(futures):
                    record(*fut.result())
        _write_manifest(store, volumes, report.failed, params)
        bar.close()
        return report
    finally:
        logger.removeHandler(handler)
        handler.close()


__all__ = ["VolumeSource", "IngestReport", "find_volume_sources", "ingest_volume", "ingest_store", "verify_volume",
           "load_manifest", "volume_paths", "mask_factors", "otsu_threshold"]

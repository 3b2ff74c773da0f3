"""Ingest unannotated SELMA3D volumes into a streaming pretraining store: the store's writer.

A download holds ``unannotated_<structure>/<sample>/<channel>/`` folders of 2D TIFF slices
(and, in other releases, single 3D files, OME-Zarr included), each read through
:func:`nnunetv2_selma.volumes.open_volume`. Each channel volume becomes one chunked, compressed
blosc2 array ``<store>/volumes/<structure>/<sample>/<channel>.b2nd``, written one slab of
``chunks[0]`` slices at a time, so peak memory is two slabs (``2 * chunks[0] * y * x * itemsize``:
the one being compressed and the next one being read), whatever the depth. For slice series a
forked reader process reads, checks, checksums and measures slab k + 1 while the ingesting
process compresses slab k, so a volume takes about as long as the slower of the two. In the same
single pass the ingester gathers

* the low-resolution tissue mask saved beside the volume (``<channel>_tissue.npy``, boolean) and
  intensity statistics over tissue (:mod:`nnunetv2_selma.volumes.tissue`): all of the volume is tissue
  unless it has a clearly dark outside (``stats["tissue_rule"]`` says which and why), so pretraining
  never loses the dimmer half of a crop that is tissue everywhere;
* a CRC32 of the raw voxels in C order, re-checked when a rerun decides whether a volume is done.

Resume and integrity (the format and its checks: :mod:`nnunetv2_selma.store.format`): every file is
written under a temporary name and renamed when complete; the manifest lists a volume only after its
file was renamed. A rerun keeps a listed volume only if its file decodes to the recorded shape, dtype,
chunk count and CRC32 and its source is unchanged; everything else is redone.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import atomic_path
from nnunetv2_selma.store.format import (
    load_manifest,
    source_signature,
    verify_volume,
    volume_paths,
    write_manifest,
)
from nnunetv2_selma.volumes import MultiChannelVolumeError, open_volume, volume_kind
from nnunetv2_selma.volumes.images import image_suffix, strip_image_suffix
from nnunetv2_selma.volumes.tissue import TissueStats, mask_factors, tissue_threshold

LOG_NAME = "ingest.log"
#: the manifest is rewritten at most this often during an ingest (and always at its end)
MANIFEST_INTERVAL_S = 2.0

#: chunk and block shapes (z, y, x), chosen by benchmarks/bench_ingest.py for random 128^3 reads
DEFAULT_CHUNKS = (64, 128, 128)
DEFAULT_BLOCKS = (32, 32, 32)
#: fast codec: ingest must keep pace with reading the slices
DEFAULT_CODEC = "ZSTD"
DEFAULT_CLEVEL = 1

logger = logging.getLogger("nnunetv2_selma.ingest")


# ----------------------------------------------------------------------------------------------
# discovery
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnannotatedVolume:
    """One channel volume found in a download (read through :func:`~nnunetv2_selma.volumes.open_volume`).

    ``kind`` is ``"slices"`` (``path`` is a folder of 2D TIFFs) or ``"file"`` (a 3D image: one file,
    or an OME-Zarr folder). ``name`` is the store key ``<structure>/<sample>/<channel>``.
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
    if path.is_dir():
        return volume_kind(path) == "zarr"
    return path.is_file() and (path.name.lower().endswith(".b2nd") or bool(image_suffix(path)))


def _volume_stem(path: Path) -> str:
    lower = path.name.lower()
    for suffix in (".b2nd", ".ome.zarr", ".zarr"):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return strip_image_suffix(path)


def find_volume_sources(root: str | Path) -> list[UnannotatedVolume]:
    """Every unannotated channel volume below ``root``, sorted by name.

    Layout searched (at any depth below ``root``, ``root`` itself included)::

        unannotated_<structure>/<sample>/<channel>/*.tif   -> slice series (any sub-folder is a channel,
                                                              an empty one is reported at ingest)
        unannotated_<structure>/<sample>/<channel>.<ext>   -> single 3D file, channel = file name
        unannotated_<structure>/<sample>.<ext>             -> single 3D file, channel "C00"

    with ``<ext>`` one of ``.tif .tiff .nii.gz .nii .mha .nrrd .b2nd .zarr`` (an OME-Zarr folder). TIFFs
    directly inside a sample folder are 3D files, never slices (slices live in channel folders).

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
    sources: list[UnannotatedVolume] = []
    for struct_dir in roots:
        structure = struct_dir.name[len("unannotated_"):]
        for entry in sorted(struct_dir.iterdir()):
            if _is_volume_file(entry):
                sources.append(UnannotatedVolume(structure, _volume_stem(entry), "C00", "file", str(entry)))
            elif entry.is_dir():
                for sub in sorted(entry.iterdir()):
                    if _is_volume_file(sub):
                        sources.append(UnannotatedVolume(structure, entry.name, _volume_stem(sub), "file", str(sub)))
                    elif sub.is_dir():
                        sources.append(UnannotatedVolume(structure, entry.name, sub.name, "slices", str(sub)))
    from collections import Counter

    # Counter, not list.count: 2026 downloads hold ~35,000 files, a quadratic scan took minutes
    dupes = sorted(n for n, k in Counter(s.name for s in sources).items() if k > 1)
    if dupes:
        raise ValueError(f"{root}: several sources map to the same volume name(s) {dupes}; rename one of them")
    return sorted(sources, key=lambda s: s.name)


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
        self.stats: TissueStats | None = None
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
            data = reader.read_planes(z0, z1, out=self._bufs[i])
            if dtype.kind == "f":
                bad = np.flatnonzero(np.isnan(data).reshape(data.shape[0], -1).any(axis=1))
                if bad.size:
                    raise ValueError(f"{reader.where(z0 + int(bad[0]))}: found NaN voxels; expected finite "
                                     f"intensities (fix or drop this slice)")
            yield ("slab", i, z0, z1)
            if stats is None:
                stats = TissueStats(shape, dtype, self.factors, tissue_threshold(reader, self.factors))
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
            try:
                self._free_w.send(True)
            except (BrokenPipeError, ConnectionResetError):
                # the reader stopped after reporting an error (it sends it, then exits): that error, or its
                # death, is the next message the iteration reads; raising the closed pipe would hide it
                pass

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


def ingest_volume(source: UnannotatedVolume, store: str | Path, chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
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
    stats (see :class:`~nnunetv2_selma.volumes.tissue.TissueStats`), seconds.

    Raises
    ------
    ValueError naming the slice/file and the reason: unreadable slice, size or dtype mismatch in
    a series, gap in the numbering, empty folder, NaN in float input, empty volume.
    """
    t0 = time.perf_counter()
    try:
        reader = open_volume(source.path)
    except MultiChannelVolumeError as e:
        raise ValueError(f"{e} per channel, named after it, in the sample folder "
                         f"(unannotated_{source.structure}/{source.sample}/C00.ome.zarr, C01.ome.zarr, ...); "
                         f"each becomes one store volume") from e
    shape, dtype = reader.shape, reader.dtype
    if min(shape) < 1:
        raise ValueError(f"{source.path}: volume of shape {shape} holds no voxel")
    if dtype.kind not in "uif":
        raise ValueError(f"{source.path}: found dtype {dtype}; expected an integer or float image")
    chunks_eff = tuple(min(c, s) for c, s in zip(chunks, shape))
    blocks_eff = tuple(min(b, c) for b, c in zip(blocks, chunks_eff))
    factors = mask_factors(shape, chunks[0])

    array_path, mask_path = volume_paths(store, source.name)
    # the slab reader computes the tissue threshold with scikit-image: imported here, a forked reader
    # inherits it instead of paying the import (0.3 s) for every volume
    import skimage.filters  # noqa: F401

    slabs = _SlabSource(reader, chunks_eff[0], factors, source.kind)
    # a failed volume leaves nothing behind; the mask is moved into place before the array, whose presence
    # marks the volume written
    with atomic_path(array_path) as tmp_array:
        try:
            import blosc2  # after the producer started: it reads the first slab meanwhile

            out = blosc2.empty(shape, dtype=dtype, chunks=chunks_eff, blocks=blocks_eff, urlpath=str(tmp_array),
                               cparams=_cparams(codec, clevel, nthreads), mode="w")
            # the producer reads, checks, checksums and measures slab k + 1 while this process
            # compresses slab k: ingest runs at the speed of the slower of the two, not their sum
            for z0, z1, buf in slabs:
                out[z0:z1] = buf[: z1 - z0]
                slabs.release(buf)
        finally:
            slabs.close()
        crc, stats = slabs.crc, slabs.stats
        nchunks, cbytes = int(out.schunk.nchunks), int(out.schunk.cbytes)
        del out
        tissue = stats.mask()
        with atomic_path(mask_path) as tmp_mask:
            np.save(tmp_mask, tissue)
    store = Path(store)
    return {
        "name": source.name, "structure": source.structure, "sample": source.sample, "channel": source.channel,
        "source": source.path, "source_kind": source.kind,
        "source_signature": source_signature(source.kind, source.path, reader.files()),
        "shape": list(shape), "dtype": dtype.str, "chunks": list(chunks_eff), "blocks": list(blocks_eff),
        "codec": codec, "clevel": clevel, "nchunks": nchunks, "crc32": crc,
        "nbytes": int(np.prod(shape)) * dtype.itemsize, "cbytes": cbytes,
        "file": array_path.relative_to(store).as_posix(), "tissue_mask": mask_path.relative_to(store).as_posix(),
        "mask_factors": list(factors), "stats": stats.stats(), "seconds": time.perf_counter() - t0,
        # blocks a patch centre is drawn from (every block when none is tissue): the reader weighs
        # volumes by it without loading every tissue mask first
        "tissue_blocks": int(tissue.sum()) if tissue.any() else int(tissue.size),
    }


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


def _safe_ingest(source: UnannotatedVolume, store: str,
                 kwargs: dict) -> tuple[UnannotatedVolume, dict | None, str | None]:
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


def _volumes_to_write(store: Path, sources: list[UnannotatedVolume], params: dict,
                      report: IngestReport) -> tuple[dict, list[UnannotatedVolume]]:
    """The manifest's volumes worth keeping and the sources still to write.

    A manifest of other parameters keeps nothing; a listed volume is kept (and named in ``report.kept``) only when
    its source is the same file and :func:`verify_volume` finds it intact.
    """
    try:
        old = load_manifest(store)
        volumes = old["volumes"] if old.get("params") == params else {}
    except FileNotFoundError:
        volumes = {}
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
    return volumes, todo


class _Recorder:
    """Takes each finished volume (or its failure) into the report and, now and then, the manifest.

    Rewriting the whole manifest after each of ~35,000 small 2026 patches is quadratic: it is written at most
    every MANIFEST_INTERVAL_S and once at the end. A kill loses at most that much work: unlisted volumes are
    redone on the rerun, so the store stays valid.
    """

    def __init__(self, store: Path, volumes: dict, report: IngestReport, params: dict, bar) -> None:
        self.store, self.volumes, self.report, self.params, self.bar = store, volumes, report, params, bar
        self.last_write = time.monotonic()

    def __call__(self, source: UnannotatedVolume, entry: dict | None, reason: str | None) -> None:
        if reason is None:
            self.volumes[source.name] = entry
            self.report.written.append(source.name)
            logger.info("wrote %s %s %s in %.1f s, tissue %.1f%% (%s)", source.name, entry["shape"], entry["dtype"],
                        entry["seconds"], 100 * entry["stats"]["tissue_fraction"],
                        entry["stats"]["tissue_rule"]["reason"])
        else:
            self.report.failed.append({"name": source.name, "source": source.path, "reason": reason})
            logger.error("FAILED %s: %s", source.name, reason)
        if time.monotonic() - self.last_write >= MANIFEST_INTERVAL_S:
            self.write()
        self.bar.update(1)

    def write(self) -> None:
        write_manifest(self.store, self.volumes, self.report.failed, self.params)
        self.last_write = time.monotonic()


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
        report = IngestReport(str(store))
        volumes, todo = _volumes_to_write(store, sources, params, report)
        logger.info("ingest %s -> %s: %d volumes, %d kept, %d to write with %d process(es)",
                    input_root, store, len(sources), len(report.kept), len(todo), num_processes)
        write_manifest(store, volumes, [], params)
        # blosc2 threads share the cores with the worker processes, each of which leaves one core
        # to its slab reader process (measured: on 2 cores, 1 blosc2 thread + the reader beats 2 + the reader)
        kwargs = dict(chunks=tuple(chunks), blocks=tuple(blocks), codec=codec, clevel=clevel,
                      nthreads=max(1, (os.cpu_count() or 1) // max(num_processes, 1) - 1))
        bar = tqdm(total=len(todo), desc="ingest", unit="volume", disable=not progress)
        record = _Recorder(store, volumes, report, params, bar)
        if num_processes <= 1:
            for s in todo:
                record(*_safe_ingest(s, str(store), kwargs))
        elif todo:
            with ProcessPoolExecutor(max_workers=num_processes) as pool:
                futures = [pool.submit(_safe_ingest, s, str(store), kwargs) for s in todo]
                for fut in as_completed(futures):
                    record(*fut.result())
        record.write()
        bar.close()
        return report
    finally:
        logger.removeHandler(handler)
        handler.close()


__all__ = ["DEFAULT_BLOCKS", "DEFAULT_CHUNKS", "DEFAULT_CLEVEL", "DEFAULT_CODEC", "IngestReport", "UnannotatedVolume",
           "find_volume_sources", "ingest_store", "ingest_volume"]

"""The pretraining store's on-disk format, owned here: its writer (``store.ingest``) and its reader
(``store.reader``) both import it, never each other.

A store is a folder::

    manifest.json                                     versioned; lists a volume only once its files are complete
    ingest.log
    volumes/<structure>/<sample>/<channel>.b2nd       chunked blosc2 array, the source dtype
    volumes/<structure>/<sample>/<channel>_tissue.npy low-resolution boolean tissue mask

Every file is written under a temporary name and renamed when complete, and the manifest is written
atomically, so a store is valid at any moment. :func:`verify_volume` re-checks a listed volume
(shape, dtype, chunk count, CRC32 of the raw voxels in C order, unchanged source).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import write_json_atomic
from nnunetv2_selma.volumes.readers import list_slice_files

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "nnunetv2_selma.pretraining_store"
MANIFEST_VERSION = 1


def volume_paths(store: str | Path, name: str) -> tuple[Path, Path]:
    """Paths of the array (``.b2nd``) and tissue mask (``_tissue.npy``) of volume ``name`` in ``store``."""
    base = Path(store) / "volumes" / name
    return base.with_name(base.name + ".b2nd"), base.with_name(base.name + "_tissue.npy")


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


def write_manifest(store: str | Path, volumes: dict, failed: list[dict], params: dict) -> None:
    """Write ``<store>/manifest.json`` atomically: ``volumes`` (name -> entry), ``failed`` and the ingest ``params``."""
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "params": params,
                "volumes": dict(sorted(volumes.items())), "failed": failed}
    write_json_atomic(Path(store) / MANIFEST_NAME, manifest)


def source_signature(kind: str, path: str | Path, files: list[Path] | None = None) -> str:
    """SHA-256 of the name, size and mtime of a source's files: a rerun redoes a volume whose source changed.

    ``kind`` is ``"slices"`` (every slice of the folder; ``files`` when already listed) or ``"file"``
    (one 3D file, stat only: opening a .nii.gz would read it whole; an OME-Zarr folder: its metadata files).
    Raises ValueError when a slice folder no longer lists as a series.
    """
    path = Path(path)
    if kind == "file" and not path.is_dir():
        st = path.stat()
        return hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    if files is None:
        if kind == "slices":
            files = list_slice_files(path)
        else:
            from nnunetv2_selma.volumes import open_volume

            files = open_volume(path).files()
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


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
            sig = source_signature(entry["source_kind"], entry["source"])
        except ValueError as e:
            return f"source changed and no longer reads: {e}"
        if sig != entry["source_signature"]:
            return f"{entry['source']}: source changed since ingest"
    return None

"""Reader of the pretraining store written by :mod:`nnunetv2_selma.store.ingest`; the format is in
:mod:`nnunetv2_selma.store.format`.

A store is a folder with ``manifest.json`` (versioned), one blosc2 array per channel volume and
a low-resolution boolean tissue mask beside each. :class:`PretrainingStore` lists the volumes,
reads any patch (zero-padded beyond the volume) and samples random patches inside tissue.
It pickles as its path and manifest: blosc2 arrays are opened lazily in each process, so every
data-loading worker holds its own handles.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnunetv2_selma.store.format import MANIFEST_NAME, load_manifest


@dataclass(frozen=True)
class StoreVolume:
    """One channel volume of a store.

    Attributes
    ----------
    name : str, unique key ``<structure>/<sample>/<channel>`` (e.g. ``"vessel/sample_01/C00"``)
    structure, sample, channel : str
    shape : tuple (z, y, x)
    dtype : numpy dtype of the stored voxels (the source dtype; int16 negatives kept)
    stats : dict over tissue voxels: mean, std, min, max, p00_5, p01, p05, p25, p50, p75, p95, p99,
        p99_5, tissue_fraction, sampled_voxels
    source : str, the slice folder or file it was ingested from
    """

    name: str
    structure: str
    sample: str
    channel: str
    shape: tuple
    dtype: np.dtype
    stats: dict
    source: str


class PretrainingStore:
    """Random access to the volumes of a pretraining store.

    Parameters
    ----------
    path : folder holding ``manifest.json``

    Raises
    ------
    FileNotFoundError / ValueError naming the manifest when it is missing or of another version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._manifest = load_manifest(self.path)
        self._entries: dict[str, dict] = self._manifest["volumes"]
        self.volumes: list[StoreVolume] = [
            StoreVolume(name=e["name"], structure=e["structure"], sample=e["sample"], channel=e["channel"],
                        shape=tuple(e["shape"]), dtype=np.dtype(e["dtype"]), stats=dict(e["stats"]),
                        source=e["source"])
            for e in self._entries.values()
        ]
        self._arrays: dict = {}
        self._tissue: dict[str, np.ndarray] = {}
        self._tissue_idx: dict[str, np.ndarray] = {}

    # pickling: path + manifest only; handles are reopened lazily in the receiving process
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"], state["_tissue"], state["_tissue_idx"] = {}, {}, {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.volumes)

    def __repr__(self) -> str:
        return f"PretrainingStore({str(self.path)!r}, {len(self.volumes)} volumes)"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the manifest's volume entries (content, not paths or timings): equal stores
        give equal fingerprints wherever they live; any re-ingested or added volume changes it."""
        keys = ("name", "shape", "dtype", "chunks", "blocks", "codec", "clevel", "crc32", "stats", "mask_factors")
        payload = [{k: self._entries[n][k] for k in keys} for n in sorted(self._entries)]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def volume(self, name: str) -> StoreVolume:
        """The :class:`StoreVolume` called ``name`` (KeyError listing the known names otherwise)."""
        for v in self.volumes:
            if v.name == name:
                return v
        raise KeyError(f"{self.path}: no volume {name!r}; the store holds {[v.name for v in self.volumes]}")

    def eligible(self, structures=None) -> list[StoreVolume]:
        """The volumes :meth:`sample_patch` draws from for ``structures`` (None: all).

        Raises ValueError naming the store and its structures when none matches.
        """
        wanted = None if structures is None else {structures} if isinstance(structures, str) else set(structures)
        chosen = [v for v in self.volumes if wanted is None or v.structure in wanted]
        if not chosen:
            raise ValueError(f"{self.path}: no volume of structure(s) {sorted(wanted or [])}; the store holds "
                             f"{sorted({v.structure for v in self.volumes})}")
        return chosen

    def check_files(self, structures=None) -> None:
        """Check that every file :meth:`sample_patch` may open for ``structures`` exists and is not empty.

        Run before a long job: a deleted ``.b2nd`` would otherwise surface only when first sampled
        (or never, in a short run). Raises ValueError listing each missing file.
        """
        missing = []
        for v in self.eligible(structures):
            for key in ("file", "tissue_mask"):
                path = self.path / self._entries[v.name][key]
                if not path.is_file() or path.stat().st_size == 0:
                    missing.append(f"{path} ({v.name})")
        if missing:
            raise ValueError(f"pretraining store {self.path}: {len(missing)} file(s) listed in {MANIFEST_NAME} are "
                             f"missing or empty: {'; '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. "
                             "Rerun nnUNetv2_selma_ingest on the same -i/-o to rewrite them")

    def _array(self, name: str):
        arr = self._arrays.get(name)
        if arr is None:
            import blosc2

            if name not in self._entries:
                self.volume(name)  # raises the KeyError with the list of names
            arr = blosc2.open(str(self.path / self._entries[name]["file"]), mode="r", dparams={"nthreads": 1})
            self._arrays[name] = arr
        return arr

    def tissue_mask(self, name: str) -> np.ndarray:
        """The low-resolution boolean tissue mask of ``name``; one voxel per ``mask_factors`` block."""
        mask = self._tissue.get(name)
        if mask is None:
            mask = np.load(self.path / self._entries[name]["tissue_mask"])
            self._tissue[name] = mask
        return mask

    def read_patch(self, name: str, start, size) -> np.ndarray:
        """The patch of ``name`` at ``start`` (z, y, x) of ``size`` (z, y, x), raw dtype.

        Any start is allowed (negative too); voxels outside the volume are zero. A volume smaller
        than ``size`` therefore yields a zero-padded patch.
        """
        arr = self._array(name)
        start = tuple(int(s) for s in start)
        size = tuple(int(s) for s in size)
        if len(start) != 3 or len(size) != 3 or min(size) < 1:
            raise ValueError(f"read_patch: start {start} and size {size} must be 3 ints (z, y, x), size >= 1")
        lo = tuple(max(0, s) for s in start)
        hi = tuple(min(d, s + n) for d, s, n in zip(arr.shape, start, size))
        if all(h - lo_ == n for lo_, h, n in zip(lo, hi, size)):
            # inside the volume (the usual case): decode straight into the result, skipping
            # NDArray.__getitem__'s key processing and any zero fill
            return arr.get_slice_numpy(np.empty(size, dtype=arr.dtype), (lo, hi))
        out = np.zeros(size, dtype=arr.dtype)
        if all(h > lo_ for lo_, h in zip(lo, hi)):
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
            inner = np.empty(tuple(b - a for a, b in zip(lo, hi)), dtype=arr.dtype)
            out[dst] = arr.get_slice_numpy(inner, (lo, hi))
        return out

    def _tissue_index(self, name: str) -> np.ndarray:
        idx = self._tissue_idx.get(name)
        if idx is None:
            mask = self.tissue_mask(name)
            # no tissue found (e.g. an all-dark volume): sample anywhere rather than never
            idx = np.flatnonzero(mask) if mask.any() else np.arange(mask.size)
            self._tissue_idx[name] = idx
        return idx

    def sample_patch(self, size, rng: np.random.Generator, structures=None) -> tuple[np.ndarray, str, tuple]:
        """A random raw patch centred in tissue.

        A tissue block is drawn uniformly over all tissue blocks of the eligible volumes (so big
        volumes are drawn more often), the patch centre uniformly inside it; the start is then
        clamped so the patch stays inside the volume where the volume is large enough.

        Parameters
        ----------
        size : (z, y, x)
        rng : numpy Generator (the only source of randomness: reproducible per worker seed)
        structures : iterable of structure names to draw from, or None for all

        Returns
        -------
        (patch of ``size`` in the raw dtype, volume name, start (z, y, x))
        """
        size = tuple(int(s) for s in size)
        names = [v.name for v in self.eligible(structures)]
        # the manifest's tissue_blocks where ingest recorded it: the first draw loads one mask, not all
        counts = np.array([self._entries[n]["tissue_blocks"] if "tissue_blocks" in self._entries[n]
                           else self._tissue_index(n).size for n in names], dtype=np.float64)
        name = names[int(rng.choice(len(names), p=counts / counts.sum()))]
        idx = self._tissue_index(name)
        block = np.unravel_index(int(idx[rng.integers(idx.size)]), self.tissue_mask(name).shape)
        factors = self._entries[name]["mask_factors"]
        shape = self._entries[name]["shape"]
        start = []
        for b, f, d, n in zip(block, factors, shape, size):
            centre = min(d - 1, b * f + int(rng.integers(f)))
            s = centre - n // 2
            start.append(int(max(0, min(s, d - n))) if d >= n else 0)
        start = tuple(start)
        return self.read_patch(name, start, size), name, start


def open_store(store: Any) -> Any:
    """A :class:`PretrainingStore` for a path (str or ``os.PathLike``); anything else (an open store, or an
    object with the same methods, as tests pass) is returned as is."""
    if isinstance(store, (str, os.PathLike)):
        return PretrainingStore(Path(store))
    return store

"""Convert SELMA3D annotated patches into nnU-Net v2 raw datasets, one per structure.

Entry point: :func:`convert_download`. The download is searched in any known layout
(:mod:`nnunetv2_selma.dataset_conversion.annotated_discovery`); each subset becomes
``DatasetNNN_SELMA3D_<Structure>`` with ``imagesTr``/``labelsTr`` and a ``dataset.json``.

Choices, and why:

* Every output file is ``.nii.gz``, also for ``.mha`` input, so one dataset (and the combined one,
  which mixes subsets) has one ``file_ending``, as nnU-Net requires.
* Geometry is rewritten: spacing 1 (or the user's), zero origin, identity direction, for images and
  masks alike; SELMA3D gives no spacing and nnU-Net checks image/mask geometry agree.
* Images keep their dtype (int16 stays int16, negatives included); nothing is cast.
* Masks become uint8 ``mask > 0``; any other encoding ({0,95,255}, {0,255}) is logged per file.
  Negative or non-integer mask values are errors: they mean the file is not a mask.
* Everything is written into a staging folder inside the raw folder and moved into place only
  when every dataset of the run is complete; on any error the staging folder is removed.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nnunetv2_selma.atomic import commit_path
from nnunetv2_selma.dataset_conversion.annotated_discovery import (
    AnnotatedCase,
    AnnotatedLayoutError,
    AnnotatedSubset,
    discover_annotated,
)
from nnunetv2_selma.structures import SUBSETS
from nnunetv2_selma.volumes.images import read_image, write_image

logger = logging.getLogger(__name__)

FILE_ENDING = ".nii.gz"
DEFAULT_FIRST_ID = 701


@dataclass(frozen=True)
class StructureInfo:
    """What a known subset holds: the structure name, its ID slot and its channel (stain) names."""

    structure: str
    slot: int | None  # dataset ID = first ID + slot; None: numbered with the subsets not listed
    channel_names: tuple[str, ...]


#: Known subsets (names exactly as on disk, every edition; from :data:`nnunetv2_selma.structures.SUBSETS`)
#: -> structure. Default dataset ID = ``DEFAULT_FIRST_ID + slot``: Nuclei 701 (shannel_cells, cell_nuclei),
#: Vessels 702, cFos 703 (cFos-Active_Neurons, cfos_neuron), Plaques 704, BloodVessels 705, Microglia 706,
#: Axons 707 (axon, axonalmarker), PeripheralNerves 708, LymphaticVessels 709, Combined 710, other subsets
#: (gutnerve, protein and those not listed) 711, 712, ... in sorted subset order.
KNOWN_SUBSETS: dict[str, StructureInfo] = {
    name: StructureInfo(s.dataset_structure, s.slot, s.channel_names) for name, s in SUBSETS.items()
}
COMBINED_STRUCTURE = "Combined"
COMBINED_SLOT = 9
UNKNOWN_FIRST_SLOT = 10

#: The default dataset IDs, for ``--help`` and the README.
DEFAULT_IDS_TEXT = ", ".join(
    [f"{k} ({v.structure}) {DEFAULT_FIRST_ID + v.slot}" for k, v in KNOWN_SUBSETS.items() if v.slot is not None]
    + [f"combined {DEFAULT_FIRST_ID + COMBINED_SLOT}",
       f"other subsets {DEFAULT_FIRST_ID + UNKNOWN_FIRST_SLOT}+ in sorted order"]
)


class ConversionError(ValueError):
    """A file or a target dataset prevents the conversion; the message names it and says what was expected."""


def structure_name(subset: str) -> str:
    """Structure name of a subset: the known one, else its words in CamelCase (``my-new_cells`` -> ``MyNewCells``)."""
    if subset in KNOWN_SUBSETS:
        return KNOWN_SUBSETS[subset].structure
    words = [w for w in re.split(r"[^A-Za-z0-9]+", subset) if w]
    return "".join(w[:1].upper() + w[1:] for w in words) or "Unknown"


def _channel_names(subset: str, n_channels: int) -> list[str]:
    known = KNOWN_SUBSETS.get(subset)
    if known and len(known.channel_names) == n_channels:
        return list(known.channel_names)
    return ["LSM"] if n_channels == 1 else [f"LSM{c}" for c in range(n_channels)]


def default_dataset_ids(subsets: Sequence[str], combined: bool = False,
                        first_id: int = DEFAULT_FIRST_ID) -> dict[str, int]:
    """Dataset ID per subset (and ``"combined"`` if asked): ``first_id + slot`` (see :data:`KNOWN_SUBSETS`)."""
    def slot(s: str) -> int | None:
        return KNOWN_SUBSETS[s].slot if s in KNOWN_SUBSETS else None

    unknown = sorted(s for s in subsets if slot(s) is None)
    ids = {s: first_id + (slot(s) if slot(s) is not None else UNKNOWN_FIRST_SLOT + unknown.index(s)) for s in subsets}
    if combined:
        ids["combined"] = first_id + COMBINED_SLOT
    return ids


def _resolve_ids(subsets: Sequence[str], combined: bool, ids: Mapping[str, int] | None,
                 first_id: int) -> dict[str, int]:
    out = default_dataset_ids(subsets, combined, first_id)
    by_structure = {structure_name(s): s for s in subsets}
    for key, value in (ids or {}).items():
        target = key if key in out else by_structure.get(key, "combined" if key.lower() == "combined" else None)
        if target is None or target not in out:
            raise ConversionError(f"--ids {key}={value}: found no subset or structure named {key!r} in the download; "
                                  f"expected one of {', '.join(sorted(out))} (or their structures)")
        out[target] = int(value)
    for key, value in out.items():
        if not 1 <= value <= 999:
            raise ConversionError(f"dataset ID for {key}: found {value}; expected 1..999 (nnU-Net uses 3 digits)")
    seen: dict[int, str] = {}
    for key, value in out.items():
        if value in seen:
            raise ConversionError(f"dataset ID {value} given to both {seen[value]} and {key}; expected distinct IDs")
        seen[value] = key
    return out


def _existing_datasets(dataset_id: int, raw_dir: Path) -> list[Path]:
    """Folders named ``DatasetNNN_*`` for this ID in ``raw_dir`` and nnU-Net's preprocessed and results folders.

    Preprocessed data or trained models of another dataset with the same ID would make nnU-Net's
    ID lookup ambiguous later, so they count as taken too.
    """
    found = []
    for base in (str(raw_dir), os.environ.get("nnUNet_preprocessed"), os.environ.get("nnUNet_results")):
        if base and Path(base).is_dir():
            prefix = f"Dataset{dataset_id:03d}_"
            found += sorted(p for p in Path(base).iterdir() if p.is_dir() and p.name.startswith(prefix))
    return found


def _check_targets(raw_dir: Path, names: dict[str, str], overwrite: bool) -> None:
    """Refuse IDs taken by another dataset, and existing datasets of the same name unless ``overwrite``."""
    problems = []
    for key, name in names.items():
        dataset_id = int(name[len("Dataset"):len("Dataset") + 3])
        for other in sorted(set(_existing_datasets(dataset_id, raw_dir))):
            if other.name != name:
                problems.append(f"{other}: dataset ID {dataset_id} is already taken by {other.name}; expected no "
                                f"dataset with this ID for {name} ({key}). Choose another ID with --ids or --first-id")
        if (raw_dir / name).exists() and not overwrite:
            problems.append(f"{raw_dir / name}: already exists; expected no dataset there. Pass --overwrite "
                            f"(overwrite=True) to replace it")
    if problems:
        raise ConversionError("cannot write the datasets:\n  " + "\n  ".join(problems))


def _geometry(spacing_zyx: Sequence[float] | None) -> dict:
    spacing = tuple(float(s) for s in (spacing_zyx or (1.0, 1.0, 1.0)))
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise ConversionError(f"spacing: found {spacing_zyx}; expected three positive numbers Z Y X")
    return {"spacing": spacing[::-1], "origin": (0.0, 0.0, 0.0),
            "direction": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)}


def binarize_mask(mask: np.ndarray, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Foreground ``mask > 0`` as uint8 {0, 1}.

    Returns
    -------
    binary : uint8 array of the same shape
    remapped_from : the sorted distinct values of ``mask`` when they were not already within {0, 1}, else None

    Raises
    ------
    ConversionError naming ``path`` when ``mask`` holds negative, non-integer or non-finite values.
    """
    if mask.dtype.kind == "b":
        return mask.astype(np.uint8), None
    if mask.dtype.kind not in "iuf":
        raise ConversionError(f"{path}: mask of dtype {mask.dtype}; expected integer (or integer-valued) labels")
    if mask.dtype.kind == "f":
        bad = ~np.isfinite(mask) | (mask != np.round(mask))
        if bad.any():
            examples = np.unique(mask[bad])[:5].tolist()
            raise ConversionError(f"{path}: mask holds non-integer values such as {examples} "
                                  f"({int(bad.sum())} voxels); "
                                  f"expected integer labels (0 = background, > 0 = foreground)")
    if mask.dtype.kind != "u" and mask.min() < 0:
        examples = np.unique(mask[mask < 0])[:5].tolist()
        raise ConversionError(f"{path}: mask holds negative values such as {examples} "
                              f"({int((mask < 0).sum())} voxels); "
                              f"expected labels >= 0 (0 = background, > 0 = foreground)")
    values = np.unique(mask)
    remapped = values if (values.size > 2 or values.max(initial=0) > 1) else None
    return (mask > 0).astype(np.uint8), remapped


def _format_values(values: np.ndarray) -> str:
    shown = [int(v) for v in values[:8]]
    return "{" + ",".join(map(str, shown)) + (",..." if values.size > 8 else "") + "}"


def read_checked(path: Path, what: str) -> np.ndarray:
    """Read a 3D image, refusing truncated gzip streams (ITK's NIfTI reader zero-fills them silently).

    Raises
    ------
    ConversionError naming ``path`` when it is unreadable, truncated or not 3D.
    """
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                while f.read(1 << 24):
                    pass
        except (OSError, EOFError, zlib.error) as e:
            raise ConversionError(f"{path}: cannot be read, truncated or corrupt gzip stream ({type(e).__name__}: "
                                  f"{e}); expected a readable 3D image ({what})") from e
    try:
        array, _ = read_image(path)
    except ValueError as e:
        raise ConversionError(f"{e}; expected a readable 3D image ({what})") from e
    return array


def _convert_case(case: AnnotatedCase, channels: Sequence[int], images_dir: Path, labels_dir: Path,
                  geometry: dict) -> str:
    shape = None
    first = None
    for out_c, c in enumerate(channels):
        src = case.channels[c]
        array = read_checked(src, f"channel {c:04d} of {case.case_id}")
        if shape is None:
            shape, first = array.shape, src
        elif array.shape != shape:
            raise ConversionError(f"{src}: channel {c:04d} has shape {array.shape}; expected {shape} like {first.name}")
        write_image(images_dir / f"{case.case_id}_{out_c:04d}{FILE_ENDING}", array, geometry)
    # the mask is checked against every channel, also the ones not written (--vessel-channel)
    for c in sorted(set(case.channels) - set(channels)):
        other = read_checked(case.channels[c], f"channel {c:04d} of {case.case_id}")
        if other.shape != shape:
            raise ConversionError(f"{case.channels[c]}: channel {c:04d} has shape {other.shape}; expected {shape} "
                                  f"like {first.name}")
    mask = read_checked(case.mask, f"mask of {case.case_id}")
    if mask.shape != shape:
        raise ConversionError(f"{case.mask}: mask has shape {mask.shape}; expected {shape} like its image {first}")
    binary, remapped = binarize_mask(mask, case.mask)
    if remapped is not None:
        logger.info("%s: remapped %s -> {0,1} (foreground = mask > 0)", case.mask, _format_values(remapped))
    if not binary.any():
        logger.warning("%s: mask is empty (no foreground voxel)", case.mask)
    write_image(labels_dir / f"{case.case_id}{FILE_ENDING}", binary, geometry)
    return case.case_id


def _write_dataset_json(folder: Path, channel_names: Sequence[str], structure: str, num_cases: int,
                        description: str, sources: dict[str, list[str]]) -> None:
    # built by hand (not nnU-Net's generate_dataset_json) so key order, and thus the bytes, never change
    content = {
        "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": {"background": 0, structure: 1},
        "numTraining": num_cases,
        "file_ending": FILE_ENDING,
        "name": folder.name,
        "description": description,
        "reference": "SELMA3D challenge (arXiv 2501.03880)",
        "converted_by": "nnunetv2_selma.dataset_conversion.annotated.convert_download",
        "selma3d_sources": sources,
    }
    (folder / "dataset.json").write_text(json.dumps(content, indent=2) + "\n")


def _make_dataset(staging: Path, name: str) -> tuple[Path, Path, Path]:
    folder = staging / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    return folder, folder / "imagesTr", folder / "labelsTr"


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def convert_download(root: str | Path, raw_dir: str | Path | None = None, ids: Mapping[str, int] | None = None,
                     vessel_channels: Sequence[int] | int | None = None, combined: bool = False,
                     spacing: Sequence[float] | None = None, overwrite: bool = False,
                     first_id: int = DEFAULT_FIRST_ID, subsets: Sequence[str] | None = None) -> dict[str, Path]:
    """Convert every annotated subset of a SELMA3D download into nnU-Net raw datasets.

    Parameters
    ----------
    root : download folder, in any known layout (challenge, BioImage Archive, prefixed 2025/2026 names).
    raw_dir : where datasets go; default ``$nnUNet_raw``.
    ids : overrides ``{subset or structure or "combined": dataset_id}``; others keep their default.
    vessel_channels : channel indices to keep for multi-channel subsets (vessels: 0 = WGA, 1 = Evans
        blue); default all. With one channel kept, vessels count as single-channel (see ``combined``).
    combined : also write one dataset of all single-channel structures, label ``structure``, case
        names prefixed with the structure.
    spacing : voxel spacing ``(z, y, x)`` written into every file; default ``(1, 1, 1)``.
    overwrite : replace existing datasets of the same name (never a different dataset with the same ID).
    first_id : dataset ID of slot 0; default IDs are ``first_id + slot`` (:data:`DEFAULT_IDS_TEXT`).
    subsets : convert only these subsets (names as on disk); default all.

    Returns
    -------
    dict structure name (``"Combined"`` for the combined dataset) -> dataset folder.

    Raises
    ------
    AnnotatedLayoutError for missing/unpaired/empty inputs or an unknown layout; ConversionError for
    unreadable files, shape mismatches, invalid masks and taken IDs. Nothing is left in ``raw_dir``
    when either is raised.
    """
    raw_dir = _raw_dir(raw_dir)
    geometry = _geometry(spacing)
    if isinstance(vessel_channels, int):
        vessel_channels = [vessel_channels]
    found = discover_annotated(root)
    root = Path(root).resolve()
    if subsets is not None:
        missing = sorted(set(subsets) - set(found))
        if missing:
            raise ConversionError(f"{root}: found subsets {sorted(found)}; expected also {missing}")
        found = {k: v for k, v in found.items() if k in subsets}
    plan = _plan_datasets(found, vessel_channels, combined)
    id_of = _resolve_ids(list(found), combined, ids, first_id)
    plan.sort(key=lambda p: id_of[p.subset.name])
    names = {p.subset.name: f"Dataset{id_of[p.subset.name]:03d}_SELMA3D_{p.structure}" for p in plan}
    if combined:
        names["combined"] = f"Dataset{id_of['combined']:03d}_SELMA3D_{COMBINED_STRUCTURE}"
    _check_targets(raw_dir, names, overwrite)

    staging = Path(tempfile.mkdtemp(prefix=".selma_convert_", dir=raw_dir))
    try:
        written = _write_datasets(plan, names, staging, root, geometry)
        if combined:
            single = [p for p in plan if len(p.channels) == 1]
            written[COMBINED_STRUCTURE] = _write_combined(single, written, staging / names["combined"])
        return _move_into_place(written, raw_dir, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class _PlannedDataset:
    """One subset's dataset: its structure name and the channels kept (indices and names)."""

    subset: AnnotatedSubset
    structure: str
    channels: list[int]
    channel_names: list[str]


def _raw_dir(raw_dir: str | Path | None) -> Path:
    if raw_dir is None:
        raw_dir = os.environ.get("nnUNet_raw")
        if not raw_dir:
            raise ConversionError("nnUNet_raw is not set; expected raw_dir or the nnUNet_raw environment variable")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    return raw_dir


def _plan_datasets(found: Mapping[str, AnnotatedSubset], vessel_channels: Sequence[int] | None,
                   combined: bool) -> list[_PlannedDataset]:
    """One dataset per subset, with the channels to keep; refuses clashing structures and a combined
    dataset without a single-channel subset."""
    plan = []
    for sub in found.values():
        n = sub.n_channels
        channels = list(range(n))
        if vessel_channels is not None and n > 1:
            bad = [c for c in vessel_channels if not 0 <= c < n]
            if bad:
                raise ConversionError(f"vessel channels: found {list(vessel_channels)} for subset {sub.name} with {n} "
                                      f"channels; expected indices in 0..{n - 1}")
            channels = list(vessel_channels)
        names = _channel_names(sub.name, n)
        plan.append(_PlannedDataset(sub, structure_name(sub.name), channels, [names[c] for c in channels]))
    structures = [p.structure for p in plan]
    if len(set(structures)) != len(structures):
        raise ConversionError(f"subsets {sorted(found)} map to structures {structures}; expected distinct structure "
                              f"names (convert them separately with subsets=...)")
    if combined and not any(len(p.channels) == 1 for p in plan):
        raise ConversionError(f"combined dataset: found no single-channel subset among {sorted(found)}; expected one")
    return plan


def _write_datasets(plan: list[_PlannedDataset], names: Mapping[str, str], staging: Path, root: Path,
                    geometry) -> dict[str, Path]:
    """Write every planned dataset under ``staging``; structure -> dataset folder."""
    written: dict[str, Path] = {}
    n_cases = sum(len(p.subset.cases) for p in plan)
    with logging_redirect_tqdm(), tqdm(total=n_cases, desc="converting annotated patches", unit="case") as bar:
        for p in plan:
            sub = p.subset
            folder, images, labels = _make_dataset(staging, names[sub.name])
            sources = {}
            for case in sub.cases:
                _convert_case(case, p.channels, images, labels, geometry)
                sources[case.case_id] = [_relative(case.channels[c], root) for c in p.channels] + [
                    _relative(case.mask, root)]
                bar.update()
            _write_dataset_json(folder, p.channel_names, p.structure, len(sub.cases),
                                f"SELMA3D annotated subset {sub.name} ({'+'.join(sorted(sub.layouts))} layout)",
                                sources)
            written[p.structure] = folder
    return written


def _write_combined(single: list[_PlannedDataset], written: Mapping[str, Path], target: Path) -> Path:
    """The dataset of all single-channel structures together (label ``structure``), copied from their own."""
    folder, images, labels = _make_dataset(target.parent, target.name)
    sources = {}
    for p in single:
        src = written[p.structure]
        for case in p.subset.cases:
            cid = f"{p.structure}_{case.case_id}"
            shutil.copyfile(src / "imagesTr" / f"{case.case_id}_0000{FILE_ENDING}",
                            images / f"{cid}_0000{FILE_ENDING}")
            shutil.copyfile(src / "labelsTr" / f"{case.case_id}{FILE_ENDING}", labels / f"{cid}{FILE_ENDING}")
            sources[cid] = [f"{src.name}/imagesTr/{case.case_id}_0000{FILE_ENDING}"]
    _write_dataset_json(folder, ["LSM"], "structure", len(sources),
                        "SELMA3D single-channel structures together: " + ", ".join(p.structure for p in single),
                        sources)
    return folder


def _move_into_place(written: Mapping[str, Path], raw_dir: Path, staging: Path) -> dict[str, Path]:
    """Every dataset is complete: move them into place (replacing same-name datasets when asked)."""
    out = {}
    for structure, folder in written.items():
        final = raw_dir / folder.name
        if final.exists():
            shutil.move(str(final), str(staging / f"old_{folder.name}"))
            logger.info("%s: replaced (overwrite); preprocessed data of this dataset is now stale", final)
        commit_path(folder, final)
        out[structure] = final
        logger.info("wrote %s", final)
    return out


__all__ = ["AnnotatedLayoutError", "ConversionError", "DEFAULT_FIRST_ID", "DEFAULT_IDS_TEXT", "KNOWN_SUBSETS",
           "binarize_mask", "convert_download", "default_dataset_ids", "structure_name"]

"""Writing synthetic SELMA3D downloads in the real on-disk layouts (see SELMA3D.md).

* Annotated patches in three layouts (``LAYOUTS``):

  - ``challenge``: ``<root>/brain_<x>_patches/<Subset>/raw/patchvolume_NNN_0000.nii.gz`` (+ ``_0001``
    for ``VessAP_vessel``), masks ``<root>/annotation_brain_<x>/<Subset>/gt/patchvolume_NNN.nii.gz``;
    ``<x>`` differs between subsets (``BRAIN_OF_SUBSET``).
  - ``bia``: ``<root>/SELMA3D_training_annotated/<subset>/{raw,gt}/...`` with the same file names.
  - ``prefixed``: ``<root>/SELMA3D_2025_annotated/raw/<subset>_patchvolume_NNN_0000<ext>`` and
    ``<root>/SELMA3D_2025_annotated/gt/<subset>_patchvolume_NNN<ext>``.

  - ``2026``: ``<root>/SELMA3D_2026_annotated/images/<prefix>_NNNN.mha`` with the mask under the
    same name in ``<root>/SELMA3D_2026_annotated/masks/`` (the organisers' example input is
    ``cell_nuclei_2301.mha``); single-channel (vessels: the WGA channel), 200^3 x ``patch_scale``,
    for the 2026 training structures the generator draws (``SUBSETS_2026``: nuclei, c-Fos, plaques,
    vessels; nerves and axons are not drawn). Its unannotated data are many small 3D files,
    ``<root>/unannotated_<structure>/<prefix>_NNNNN.tif``, 300^3 x ``patch_scale`` each, instead of
    slice folders.

  Masks are uint8 and cycle through the encodings {0,1}, {0,255} and {0,95,255} (95 marks the
  boundary voxels of objects), so every layout holds all three.
* Unannotated volumes: ``<root>/unannotated_<structure>/<sample>/C00/*.tif`` (and ``C01`` for
  vessels), one 2D TIFF per z plane, written slab by slab.
* Challenge-style test inputs: ``<root>/test_inputs/images/<structure>_NNN.{mha,tif}`` with masks in
  ``<root>/test_inputs/masks/`` under the same name.

Each subset folder and each unannotated sample gets a ``preview*.png`` picture (MIPs, mask outlined).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import atomic_path
from nnunetv2_selma.download_record import DOWNLOAD_RECORD
from nnunetv2_selma.structures import STRUCTURES, SUBSETS, subsets_of_edition, unannotated_folder_structures
from nnunetv2_selma.synthetic.domains import AcquisitionDomain
from nnunetv2_selma.synthetic.pictures import projection_panels, save_mip_picture
from nnunetv2_selma.synthetic.volumes import LightSheetScene, canonical_structure, n_channels
from nnunetv2_selma.volumes.images import write_image

log = logging.getLogger(__name__)

#: 2024 subset (as on disk) -> the structure drawn, from the one table in nnunetv2_selma.structures
SUBSETS_2024 = {name: STRUCTURES[SUBSETS[name].structure].synthetic for name in subsets_of_edition("2024")}
LAYOUTS = ("challenge", "bia", "prefixed", "2026")
#: 2026 training subsets the generator draws: file-name prefix -> structure drawn
SUBSETS_2026 = {name: STRUCTURES[SUBSETS[name].structure].synthetic for name in subsets_of_edition("2026")
                if name in ("cell_nuclei", "cfos_neuron", "AD_plaques", "blood_vessel")}
PATCH_EDGE_2026, UNANNOTATED_EDGE_2026 = 200, 300  # the 2026 release: 200^3 annotated, 300^3 unannotated
# real 2024 patch shapes (z, y, x); AD_plaques is an assumption (not confirmed by the organisers)
PATCH_SHAPES_2024 = {"shannel_cells": (200, 200, 200), "VessAP_vessel": (50, 500, 500),
                     "cFos-Active_Neurons": (100, 100, 100), "AD_plaques": (200, 200, 200)}
# the challenge download spreads subsets over several brains; nobody may hard-code brain_1
BRAIN_OF_SUBSET = {"shannel_cells": 1, "VessAP_vessel": 2, "cFos-Active_Neurons": 1, "AD_plaques": 3}
MASK_ENCODINGS = ((0, 1), (0, 255), (0, 95, 255))
TEST_SET_FOLDER = "test_inputs"
UNANNOTATED_STRUCTURES = tuple(sorted(unannotated_folder_structures()))
PATCH_FORMATS = (".nii.gz", ".mha")
MIN_PATCH_EDGE = 16
#: nnU-Net's 5-fold cross-validation (KFold(5)) needs at least 5 training cases per dataset
DEFAULT_CASES_PER_SUBSET = 5


def patch_shape(subset: str, patch_scale: float) -> tuple[int, int, int]:
    """The (z, y, x) shape of a ``subset`` patch scaled by ``patch_scale`` (at least 16 per axis)."""
    if subset not in PATCH_SHAPES_2024:
        raise ValueError(f"unknown subset {subset!r}; expected one of {', '.join(PATCH_SHAPES_2024)}")
    return _scaled(PATCH_SHAPES_2024[subset], patch_scale)


def _scaled(shape: tuple[int, int, int], patch_scale: float) -> tuple[int, int, int]:
    """``shape`` x ``patch_scale``, at least ``MIN_PATCH_EDGE`` per axis."""
    if patch_scale <= 0:
        raise ValueError(f"patch_scale must be > 0; got {patch_scale}")
    return tuple(max(MIN_PATCH_EDGE, int(round(s * patch_scale))) for s in shape)


def encode_mask(mask: np.ndarray, encoding: tuple[int, ...]) -> np.ndarray:
    """Encode a bool mask as uint8 with ``encoding`` = (0, 1), (0, 255) or (0, 95, 255).

    With (0, 95, 255) the mask's inner boundary voxels get 95 and its interior 255.
    """
    if encoding == (0, 1):
        return mask.astype(np.uint8)
    if encoding == (0, 255):
        return mask.astype(np.uint8) * np.uint8(255)
    if encoding == (0, 95, 255):
        from skimage.segmentation import find_boundaries

        out = mask.astype(np.uint8) * np.uint8(255)
        out[find_boundaries(mask, mode="inner") & mask] = 95
        return out
    raise ValueError(f"unknown mask encoding {encoding}; expected one of {MASK_ENCODINGS}")


def _patch_dirs(root: Path, layout: str, subset: str) -> tuple[Path, Path, Path, str]:
    """(raw folder, gt folder, picture path, file-name prefix) of ``subset`` in ``layout``."""
    if layout == "challenge":
        brain = BRAIN_OF_SUBSET[subset]
        raw = root / f"brain_{brain}_patches" / subset / "raw"
        gt = root / f"annotation_brain_{brain}" / subset / "gt"
        return raw, gt, raw.parent / "preview.png", ""
    if layout == "bia":
        raw = root / "SELMA3D_training_annotated" / subset / "raw"
        return raw, raw.parent / "gt", raw.parent / "preview.png", ""
    if layout == "prefixed":
        base = root / "SELMA3D_2025_annotated"
        return base / "raw", base / "gt", base / f"preview_{subset}.png", f"{subset}_"
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def write_annotated_patches(root: str | Path, layout: str = "challenge", subsets=tuple(SUBSETS_2024),
                            cases_per_subset: int = DEFAULT_CASES_PER_SUBSET, patch_scale: float = 0.25,
                            seed: int = 0, file_format: str = ".nii.gz",
                            dtype: str = "uint16", contrast: float = 1.0,
                            domains: Sequence[AcquisitionDomain] | None = None) -> dict[str, list[Path]]:
    """Write annotated patches of the 2024 subsets in one of ``LAYOUTS``.

    Parameters
    ----------
    root : download root (created if missing).
    layout : ``challenge``, ``bia`` or ``prefixed``.
    subsets : names from ``SUBSETS_2024``.
    cases_per_subset : patches per subset, numbered 000, 001, ... (default 5: ``nnUNetv2_train`` folds
        0-4 need at least 5 cases; with fewer only ``nnUNetv2_train ... all`` works).
    patch_scale : multiplies the real 2024 patch shapes (``PATCH_SHAPES_2024``), min 16 per axis.
    seed : same seed, same bytes.
    file_format : ``.nii.gz`` or ``.mha``.
    dtype : image dtype, ``uint16`` or ``int16``; masks are always uint8.
    contrast : object brightness multiplier (1.0 default; lower is dimmer objects, a harder task).
    domains : ``None`` (default scenes) or one acquisition domain per case (``cases_per_subset`` of them):
        case ``i`` of every subset is recorded under ``domains[i]``.

    Returns
    -------
    dict subset -> image paths written (every channel: ``_0000`` and for VessAP_vessel ``_0001``).
    """
    root = Path(root)
    if file_format not in PATCH_FORMATS:
        raise ValueError(f"file_format must be one of {PATCH_FORMATS}; got {file_format!r}")
    if domains is not None and len(domains) != cases_per_subset:
        raise ValueError(f"domains: {len(domains)} given; expected one per case ({cases_per_subset})")
    written: dict[str, list[Path]] = {}
    for subset in subsets:
        if subset not in SUBSETS_2024:
            raise ValueError(f"unknown subset {subset!r}; expected one of {', '.join(SUBSETS_2024)}")
        s_index = list(SUBSETS_2024).index(subset)
        raw, gt, picture, prefix = _patch_dirs(root, layout, subset)
        raw.mkdir(parents=True, exist_ok=True)
        gt.mkdir(parents=True, exist_ok=True)
        shape = patch_shape(subset, patch_scale)
        paths, panels = [], []
        for case in range(cases_per_subset):
            scene = LightSheetScene(SUBSETS_2024[subset], shape, seed=_seed(seed, 10, s_index, case), dtype=dtype,
                                    contrast=contrast, domain=domains[case] if domains is not None else None)
            channels, mask = scene.render(0, shape[0])
            name = f"{prefix}patchvolume_{case:03d}"
            for ch, image in enumerate(channels):
                path = raw / f"{name}_{ch:04d}{file_format}"
                write_image(path, image)
                paths.append(path)
            encoding = MASK_ENCODINGS[(case + s_index) % len(MASK_ENCODINGS)]
            write_image(gt / f"{name}{file_format}", encode_mask(mask, encoding))
            if case < 3:
                panels += projection_panels(name, channels, mask)
        if panels:
            save_mip_picture(picture, panels, ncols=2 * len(channels),
                             title=f"{subset} ({SUBSETS_2024[subset]}), {layout} layout, shape {shape}")
        written[subset] = paths
        log.info("wrote %d %s patches of shape %s to %s", cases_per_subset, subset, shape, raw)
    return written


def _seed(*parts: int) -> int:
    """One integer seed from several (a hash that numpy's SeedSequence makes well mixed)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> 1)


def _slice_name(z: int, zero_pad: bool) -> str:
    return f"img_{z + 1:05d}.tif" if zero_pad else f"slice_{z}.tif"


def write_unannotated_volume(sample_dir: str | Path, shape: tuple[int, int, int], structure: str,
                             dtype: str = "uint16", seed: int = 0, slab: int = 32,
                             zero_pad: bool = False, picture: bool = True, contrast: float = 1.0,
                             domain: AcquisitionDomain | None = None) -> list[Path]:
    """Write one unannotated volume as folders of 2D TIFF slices, slab by slab.

    Parameters
    ----------
    sample_dir : the sample folder; ``C00`` (and ``C01`` for vessels) are created inside it.
    shape : (z, y, x) of the volume; any size (memory is bounded by ``slab`` planes plus a blur halo).
    structure : one of ``STRUCTURES`` or the folder names ``ab_plaque``, ``cfos``, ``nucleus``, ``vessel``.
    dtype : ``uint16`` or ``int16`` (int16 puts the dark background below zero).
    seed : same seed, same bytes; the output does not depend on ``slab``.
    slab : planes rendered at once.
    zero_pad : slice names ``img_00001.tif``... (numbered from 1) instead of ``slice_0.tif``,
        ``slice_1.tif``... (numbered from 0, no padding, so string order != numeric order).
    picture : also save ``<sample_dir>/preview.png`` (MIPs accumulated slab by slab, mask outlined).
    contrast : object brightness multiplier (see :class:`~nnunetv2_selma.synthetic.volumes.LightSheetScene`).
    domain : acquisition domain the volume is recorded under (``None``: the default scene).

    Returns
    -------
    The channel folders, ``[C00]`` or ``[C00, C01]``.
    """
    sample_dir = Path(sample_dir)
    if slab < 1:
        raise ValueError(f"slab must be >= 1; got {slab}")
    scene = LightSheetScene(canonical_structure(structure), shape, seed=_seed(seed, 20), whole_sample=True,
                            dtype=dtype, contrast=contrast, domain=domain)
    nch = n_channels(structure)
    final = [sample_dir / f"C{ch:02d}" for ch in range(nch)]
    with ExitStack() as folders:  # each channel folder moved into place whole
        partial = [folders.enter_context(atomic_path(d, directory=True)) for d in final]
        mips = _render_slices(scene, partial, slab, zero_pad)
        for dst in final:
            if dst.exists():
                shutil.rmtree(dst)
    if picture:
        mip_z, mip_y, mask_z, mask_y = mips
        panels = []
        for ch in range(nch):
            panels += [(f"C{ch:02d} top (MIP z)", mip_z[ch], mask_z), (f"C{ch:02d} side (MIP y)", mip_y[ch], mask_y)]
        save_mip_picture(sample_dir / "preview.png", panels, ncols=2,
                         title=f"unannotated {structure} {sample_dir.name}, shape {scene.shape}, {scene.dtype}")
    return final


def _render_slices(scene: LightSheetScene, folders: list[Path], slab: int, zero_pad: bool) -> tuple:
    """Render ``scene`` slab by slab into one folder of slices per channel; returns the MIPs (top and side,
    per channel) and the mask's, accumulated on the way."""
    import tifffile

    nch, partial = len(folders), folders
    nz, ny, nx = scene.shape
    mip_z = [np.zeros((ny, nx), scene.dtype) for _ in range(nch)]
    mip_y = [np.zeros((nz, nx), scene.dtype) for _ in range(nch)]
    mask_z = np.zeros((ny, nx), bool)
    mask_y = np.zeros((nz, nx), bool)
    if nch:
        for ch in range(nch):
            mip_z[ch][:] = np.iinfo(scene.dtype).min
    for z0 in range(0, nz, slab):
        z1 = min(nz, z0 + slab)
        channels, mask = scene.render(z0, z1)
        for ch, image in enumerate(channels):
            for i in range(z1 - z0):
                tifffile.imwrite(partial[ch] / _slice_name(z0 + i, zero_pad), image[i])
            np.maximum(mip_z[ch], image.max(axis=0), out=mip_z[ch])
            mip_y[ch][z0:z1] = image.max(axis=1)
        mask_z |= mask.any(axis=0)
        mask_y[z0:z1] = mask.any(axis=1)
    return mip_z, mip_y, mask_z, mask_y


def write_annotated_patches_2026(root: str | Path, cases_per_subset: int = DEFAULT_CASES_PER_SUBSET,
                                 patch_scale: float = 0.25, seed: int = 0, contrast: float = 1.0,
                                 first_number: int = 2301) -> dict[str, list[Path]]:
    """Write 2026-style annotated patches: ``images/<prefix>_NNNN.mha``, masks of the same name in ``masks/``.

    Numbers run from ``first_number`` over all subsets (as the organisers' ``cell_nuclei_2301``);
    masks cycle through ``MASK_ENCODINGS`` like the other layouts. Returns subset -> image paths.
    """
    base = Path(root) / "SELMA3D_2026_annotated"
    images, masks = base / "images", base / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    shape, number, written = _scaled((PATCH_EDGE_2026,) * 3, patch_scale), first_number, {}
    for s_index, (prefix, structure) in enumerate(SUBSETS_2026.items()):
        paths, panels = [], []
        for case in range(cases_per_subset):
            scene = LightSheetScene(structure, shape, seed=_seed(seed, 50, s_index, case), contrast=contrast)
            channels, mask = scene.render(0, shape[0])
            name = f"{prefix}_{number:04d}.mha"
            number += 1
            write_image(images / name, channels[0])
            write_image(masks / name, encode_mask(mask, MASK_ENCODINGS[(case + s_index) % len(MASK_ENCODINGS)]))
            paths.append(images / name)
            if case < 2:
                panels += projection_panels(name, channels[:1], mask)
        save_mip_picture(base / f"preview_{prefix}.png", panels, ncols=2, title=f"2026 layout: {prefix}, shape {shape}")
        written[prefix] = paths
        log.info("wrote %d %s patches of shape %s to %s", cases_per_subset, prefix, shape, images)
    return written


def write_unannotated_patches_2026(root: str | Path, per_structure: int, patch_scale: float = 0.25, seed: int = 0,
                                   contrast: float = 1.0) -> dict[str, list[Path]]:
    """Write 2026-style unannotated data: many small 3D TIFFs, ``unannotated_<structure>/<prefix>_NNNNN.tif``.

    One file per patch, single-channel (vessels: WGA), 300^3 x ``patch_scale``, cut from inside tissue.
    Returns structure folder -> file paths.
    """
    import tifffile

    shape, written = _scaled((UNANNOTATED_EDGE_2026,) * 3, patch_scale), {}
    for s_index, folder in enumerate(UNANNOTATED_STRUCTURES):
        structure = canonical_structure(folder)
        prefix = next(p for p, s in SUBSETS_2026.items() if s == structure)
        out = Path(root) / f"unannotated_{folder}"
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for k in range(per_structure):
            scene = LightSheetScene(structure, shape, seed=_seed(seed, 60, s_index, k), contrast=contrast)
            channels, _ = scene.render(0, shape[0])
            path = out / f"{prefix}_{k:05d}.tif"
            tifffile.imwrite(path, channels[0])
            paths.append(path)
        written[folder] = paths
    return written


def write_test_inputs(out_dir: str | Path, structures=("cfos", "microglia"), cases_per_structure: int = 2,
                      shape: tuple[int, int, int] = (48, 64, 64), seed: int = 0) -> list[Path]:
    """Write challenge-style test inputs and their ground truth.

    Images go to ``<out_dir>/images/<structure>_NNN<ext>`` (NNN from 001), single-channel uint16;
    ``ext`` alternates ``.mha`` and ``.tif`` over cases, starting with ``.tif`` for the second
    structure, so both formats appear (``cfos_001.mha``, ``microglia_001.tif``). Binary uint8 masks
    (0/1) go to ``<out_dir>/masks/`` under the same file name. The structure is the name's prefix.

    Returns
    -------
    The image paths, in writing order.
    """
    out_dir = Path(out_dir)
    images, masks = out_dir / "images", out_dir / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    written = []
    for s_index, structure in enumerate(structures):
        canonical_structure(structure)
        if n_channels(structure) != 1:
            raise ValueError(f"test inputs are single-channel images; {structure!r} draws {n_channels(structure)}")
        panels = []
        for case in range(cases_per_structure):
            scene = LightSheetScene(structure, shape, seed=_seed(seed, 30, s_index, case))
            (image,), mask = scene.render(0, scene.shape[0])
            ext = (".mha", ".tif")[(case + s_index) % 2]
            name = f"{structure}_{case + 1:03d}{ext}"
            write_image(images / name, image)
            write_image(masks / name, mask.astype(np.uint8))
            written.append(images / name)
            if case < 2:
                panels += projection_panels(name, [image], mask)
        if panels:
            save_mip_picture(out_dir / f"preview_{structure}.png", panels, ncols=2, title=f"test inputs: {structure}")
    return written


def _check_download_root(root: Path, layout: str, overwrite: bool) -> None:
    """Refuse an unknown layout, a file, or a non-empty folder without ``overwrite``: before anything is written."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: found a file; expected a folder for the download (absent or empty). "
                         f"Choose a folder path")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root}: exists and is not empty; nothing was written. Choose another folder, or "
                              f"pass --overwrite (overwrite=True in Python) to replace it")


def _write_unannotated_volumes(root: Path, per_structure: int, shape: tuple[int, int, int], dtype: str, seed: int,
                               slab: int, contrast: float) -> dict[str, list[Path]]:
    """``per_structure`` whole-volume samples (TIFF slice folders) of each unannotated structure."""
    unannotated: dict[str, list[Path]] = {}
    for s_index, structure in enumerate(UNANNOTATED_STRUCTURES):
        samples = []
        for k in range(per_structure):
            sample = root / f"unannotated_{structure}" / f"sample_{k + 1}"
            write_unannotated_volume(sample, shape, structure, dtype=dtype, seed=_seed(seed, 40, s_index, k),
                                     slab=slab, zero_pad=bool((s_index + k) % 2), contrast=contrast)
            samples.append(sample)
        unannotated[structure] = samples
    return unannotated


def _download_summary(root: Path, tmp: Path, layout: str, contrast: float, cases_per_subset: int,
                      written: tuple[dict, dict, list], start: float) -> dict:
    """What :func:`write_download` returns, with the paths written under ``tmp`` moved to ``root``."""
    annotated, unannotated, tests = written

    def moved(p: Path) -> Path:
        return root / p.relative_to(tmp)

    return {
        "root": root,
        "layout": layout,
        "contrast": contrast,
        "annotated": {k: [moved(p) for p in v] for k, v in annotated.items()},
        "unannotated": {k: [moved(p) for p in v] for k, v in unannotated.items()},
        "test_inputs": [moved(p) for p in tests],
        # nnUNetv2_selma_convert reads this and never takes the test set for training data
        "test_set": TEST_SET_FOLDER if tests else None,
        "pictures": sorted(root.rglob("preview*.png")),
        "counts": {
            "annotated_cases": {k: cases_per_subset for k in annotated},
            "unannotated_volumes": {k: len(v) for k, v in unannotated.items()},
            "test_inputs": len(tests),
        },
        "seconds": round(time.perf_counter() - start, 2),
    }


def write_download(root: str | Path, layout: str = "challenge", cases_per_subset: int = DEFAULT_CASES_PER_SUBSET,
                   patch_scale: float = 0.25,
                   unannotated_shape: tuple[int, int, int] = (64, 128, 128), unannotated_per_structure: int = 1,
                   unannotated_dtype: str = "uint16", seed: int = 0, test_inputs: bool = True,
                   file_format: str = ".nii.gz", overwrite: bool = False, slab: int = 32,
                   contrast: float = 1.0) -> dict:
    """Write a whole synthetic SELMA3D download: annotated patches, unannotated volumes, test inputs.

    Everything is written into a temporary folder next to ``root`` and moved into place at the end,
    so ``root`` is either absent, or complete. ``root`` may exist if empty; a non-empty ``root`` is
    refused unless ``overwrite``.

    Parameters
    ----------
    layout : annotated-patch layout, one of ``LAYOUTS``.
    unannotated_shape, unannotated_per_structure, unannotated_dtype : the unannotated volumes,
        ``unannotated_per_structure`` samples for each of ``ab_plaque``, ``cfos``, ``nucleus``, ``vessel``
        (sample k is ``sample_<k+1>``; the first structure's first sample, and every other sample,
        name slices without zero padding). With ``layout="2026"``: ``unannotated_per_structure`` small
        3D TIFFs per structure, 300^3 x ``patch_scale`` (``unannotated_shape`` and ``unannotated_dtype``
        do not apply), and annotated patches 200^3 x ``patch_scale`` as ``.mha``.
    file_format : ``.nii.gz`` or ``.mha`` for the annotated patches (not the 2026 layout: ``.mha``).
    contrast : object brightness multiplier of annotated patches and unannotated volumes alike
        (1.0 default; lower gives dim objects near the background, a harder segmentation task).

    Returns
    -------
    dict with ``root``, ``layout``, ``annotated`` (subset -> image paths), ``unannotated``
    (structure -> sample folders), ``test_inputs`` (image paths), ``test_set`` (the test inputs' folder
    relative to ``root``, ``None`` without test inputs: ``nnUNetv2_selma_convert`` skips it), ``pictures``
    (png paths), ``counts`` and ``seconds``. The same summary, with string paths, is saved as
    ``<root>/synthetic_summary.json``.
    """
    root = Path(root)
    _check_download_root(root, layout, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with atomic_path(root, directory=True, unique=True) as tmp:
        if layout == "2026":
            annotated = write_annotated_patches_2026(tmp, cases_per_subset, patch_scale, seed, contrast)
            unannotated = write_unannotated_patches_2026(tmp, unannotated_per_structure, patch_scale, seed, contrast)
        else:
            annotated = write_annotated_patches(tmp, layout, cases_per_subset=cases_per_subset,
                                                patch_scale=patch_scale, seed=seed, file_format=file_format,
                                                contrast=contrast)
            unannotated = _write_unannotated_volumes(tmp, unannotated_per_structure, unannotated_shape,
                                                     unannotated_dtype, seed, slab, contrast)
        tests = write_test_inputs(tmp / TEST_SET_FOLDER, seed=seed) if test_inputs else []
        if root.exists():
            shutil.rmtree(root)  # --overwrite: the old download goes only once the new one is complete
    summary = _download_summary(root, tmp, layout, contrast, cases_per_subset, (annotated, unannotated, tests), start)
    (root / DOWNLOAD_RECORD).write_text(json.dumps(summary, indent=1, default=str))
    log.info("synthetic download written to %s in %.1f s", root, summary["seconds"])
    return summary

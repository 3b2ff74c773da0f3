"""Finding SELMA3D annotated patches on disk, in any of the known layouts, without being told which.

Three layouts are known (see ``SELMA3D.md``); nothing here assumes a fixed depth below the root:

* ``challenge``: ``brain_<x>_patches/<Subset>/raw/patchvolume_NNN_0000.nii.gz`` with masks in
  ``annotation_brain_<x>/<Subset>/gt/patchvolume_NNN.nii.gz``;
* ``bia``: ``.../<subset>/raw/patchvolume_NNN_0000.nii.gz`` with masks in ``.../<subset>/gt/``;
* ``prefixed``: ``<any>/raw/<subset>_patchvolume_NNN_0000.nii.gz`` (or ``.mha``) with masks in
  ``<any>/gt/<subset>_patchvolume_NNN.nii.gz``; the subset is the name's prefix.
* ``2026``: ``<any>/<images>/<prefix>_NNNN.mha`` (optionally ``_0000`` before the suffix) with the
  mask under the SAME name in a sibling mask folder; ``<images>`` is ``raw``, ``images`` or
  ``imagesTr``, the mask folder ``gt``, ``labels``, ``labelsTr`` or ``masks``. The organisers'
  2026 code confirms the names (an input ``cell_nuclei_2301.mha`` in
  YingChen7/SELMA3D2026_example_algorithm ``test/input``; its ground truth is read under the same
  name in YingChen7/SELMA3D2026_evaluation ``evaluate.py``); the folder names of the training
  download are not published, hence the variants.

Every ``raw`` folder below the root is scanned for images and every ``gt`` folder for masks; each
file says by its name (prefix or not) and by its ancestors (``brain_<x>_patches`` or not) which
layout it belongs to. Images and masks are paired by (subset, brain, patch number).
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nnunetv2_selma.download_record import DOWNLOAD_RECORD, recorded_test_set
from nnunetv2_selma.structures import SUBSETS
from nnunetv2_selma.volumes.images import IMAGE_SUFFIXES, image_suffix, strip_image_suffix

logger = logging.getLogger(__name__)

LAYOUT_HELP = (
    "known layouts: (1) challenge: <root>/brain_<x>_patches/<Subset>/raw/patchvolume_NNN_0000.nii.gz with masks "
    "in <root>/annotation_brain_<x>/<Subset>/gt/patchvolume_NNN.nii.gz; (2) bia: <root>/.../<subset>/raw/"
    "patchvolume_NNN_0000.nii.gz with masks in <root>/.../<subset>/gt/patchvolume_NNN.nii.gz; (3) prefixed: "
    "<root>/.../raw/<subset>_patchvolume_NNN_0000.nii.gz|.mha with masks in "
    "<root>/.../gt/<subset>_patchvolume_NNN.<ext>; (4) 2026: <root>/.../raw|images|imagesTr/<prefix>_NNNN.mha "
    "(optionally _0000 before the suffix) with the mask of the same name in <root>/.../gt|labels|labelsTr|masks/"
)

_IMAGE_NAME = re.compile(r"^(?:(?P<prefix>.+?)_)?patchvolume_(?P<number>\d+)_(?P<channel>\d{4})$")
_MASK_NAME = re.compile(r"^(?:(?P<prefix>.+?)_)?patchvolume_(?P<number>\d+)$")
#: 2026 names: ``cell_nuclei_2301`` (+ ``_0000`` on images); the prefix starts with a letter
_FLAT_IMAGE_NAME = re.compile(r"^(?P<prefix>[A-Za-z][\w\-]*?)_(?P<number>\d+)(?:_(?P<channel>\d{4}))?$")
_FLAT_MASK_NAME = re.compile(r"^(?P<prefix>[A-Za-z][\w\-]*?)_(?P<number>\d+)$")
IMAGE_FOLDERS = ("raw", "images", "imagesTr")
MASK_FOLDERS = ("gt", "labels", "labelsTr", "masks")
_BRAIN_PATCHES = re.compile(r"^brain_(?P<brain>.+)_patches$")
_BRAIN_ANNOTATION = re.compile(r"^annotation_brain_(?P<brain>.+)$")


class AnnotatedLayoutError(ValueError):
    """The download does not hold a complete, consistent set of annotated patches.

    The message names every offending file, what was found and what was expected.
    """


@dataclass
class AnnotatedCase:
    """One annotated patch: its channel files and its mask.

    ``number`` is the patch number as written on disk (zero padding kept); ``brain`` is the ``<x>``
    of the challenge layout's ``brain_<x>_patches`` folder, ``""`` in the other layouts.
    """

    subset: str
    brain: str
    number: str
    layout: str
    channels: dict[int, Path] = field(default_factory=dict)
    mask: Path | None = None

    @property
    def case_id(self) -> str:
        """nnU-Net case identifier: ``patchvolume_NNN``, ``brain<x>_patchvolume_NNN`` when brains exist."""
        base = f"patchvolume_{self.number}"
        return f"brain{self.brain}_{base}" if self.brain else base


@dataclass
class AnnotatedSubset:
    """All cases of one subset (e.g. ``VessAP_vessel``), sorted by case identifier."""

    name: str
    layouts: set[str]
    cases: list[AnnotatedCase]

    @property
    def n_channels(self) -> int:
        """Number of channel files per case (the largest channel index + 1 over all cases)."""
        return 1 + max((max(c.channels) for c in self.cases if c.channels), default=0)


def _brain_of(path: Path, root: Path, pattern: re.Pattern) -> str | None:
    for part in path.relative_to(root).parts:
        m = pattern.match(part)
        if m:
            return m.group("brain")
    return None


def _walk_dirs(root: Path) -> list[Path]:
    """Every directory below ``root`` (itself included), in sorted order so results are deterministic."""
    out = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.append(Path(dirpath))
    return sorted(out)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and image_suffix(p))


def _describe_root(root: Path) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(entries[:10]) + (f", ... ({len(entries)} entries)" if len(entries) > 10 else "")
    return shown or "an empty folder"


def _recorded_test_sets(root: Path, dirs: list[Path]) -> list[Path]:
    """Test-input folders named by download records at or above ``root`` or in ``dirs`` (logged, never scanned).

    A generated download keeps its challenge-style test inputs (``images/`` + ``masks/``, a layout
    discovery would otherwise take for 2026 training patches) in the folder its record names.
    """
    found = []
    for folder in [*reversed(root.parents), *dirs]:
        try:
            test_set = recorded_test_set(folder)
        except ValueError as e:
            raise AnnotatedLayoutError(str(e)) from e
        if test_set is None:
            continue
        test_set = test_set.resolve()
        if root == test_set or test_set in root.parents:
            raise AnnotatedLayoutError(
                f"{root}: is the test set named by {folder / DOWNLOAD_RECORD} (test inputs, never training "
                f"data); expected the download root {folder}: pass -i {folder}, its test set is skipped")
        if test_set.is_dir():
            logger.info("%s: skipped, the test set named by %s (test inputs are never training data)",
                        test_set, folder / DOWNLOAD_RECORD)
            found.append(test_set)
    return found


def _training_cases_among_test_inputs(cases, test_sets: list[Path]) -> list[str]:
    """One problem per training case that is also a test input: the same case name, or the same file bytes."""
    tests = [p for t in test_sets for d in _walk_dirs(t) if d.name not in MASK_FOLDERS for p in _image_files(d)]
    if not tests:
        return []
    by_name = {}
    for path in tests:
        stem = strip_image_suffix(path)
        by_name.setdefault(stem, path)
        by_name.setdefault(re.sub(r"_\d{4}$", "", stem), path)
    problems = []
    for case in sorted(cases, key=lambda c: (c.subset, c.case_id)):
        for path in case.channels.values():
            name = re.sub(r"_\d{4}$", "", strip_image_suffix(path)) if case.layout != "2026" else \
                f"{case.subset}_{case.number}"
            same = by_name.get(name) or next(
                (t for t in tests if t.stat().st_size == path.stat().st_size and filecmp.cmp(t, path, shallow=False)),
                None)
            if same is not None:
                problems.append(f"{path}: training case {name} of subset {case.subset} is also the test "
                                f"input {same}; expected test inputs never to be training data: remove it from "
                                f"the training folders (or from the test set)")
                break
    return problems


def discover_annotated(root: str | Path) -> dict[str, AnnotatedSubset]:
    """Find every annotated subset below ``root``, in any known layout, and pair images with masks.

    Parameters
    ----------
    root : folder of a SELMA3D download (or any folder above the annotated patches).

    Returns
    -------
    dict subset name (exactly as on disk) -> :class:`AnnotatedSubset`, sorted by name; each case
    has all its channel files and its mask.

    Raises
    ------
    AnnotatedLayoutError listing every problem at once: an image without mask, a mask without image,
    a case missing a channel file, an empty subset folder, two files claiming the same case, a
    training case that is also a test input, or a root that matches no known layout.

    A folder that a download record (``synthetic_summary.json``, at or above ``root`` or below it)
    names as the test set is never scanned: test inputs are never training data.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise AnnotatedLayoutError(f"{root}: not a folder; expected the root folder of a SELMA3D download")
    found = _Discovery(root)
    dirs = _walk_dirs(root)
    test_sets = _recorded_test_sets(root, dirs)
    dirs = [d for d in dirs if not any(d == t or t in d.parents for t in test_sets)]
    for folder in dirs:
        if folder.name in IMAGE_FOLDERS:
            found.scan_images(folder)
    for folder in dirs:
        if folder.name in MASK_FOLDERS:
            found.scan_masks(folder)
    found.report_empty_subsets()
    found.report_masks_without_image()
    found.report_images_without_mask()
    found.problems += _training_cases_among_test_inputs(found.cases.values(), test_sets)
    subsets = found.subsets()
    if found.problems:
        raise AnnotatedLayoutError(f"{root}: {len(found.problems)} problem(s) in the annotated patches:\n  "
                                   + "\n  ".join(found.problems))
    if not subsets:
        raise AnnotatedLayoutError(
            f"{root}: matches no known layout of SELMA3D annotated patches; found {_describe_root(root)}. "
            f"Expected raw/ and gt/ folders of patchvolume files below it; {LAYOUT_HELP}"
        )
    for sub in subsets.values():
        logger.info("found subset %s: %d cases, %d channel(s), layout %s", sub.name, len(sub.cases),
                    sub.n_channels, "+".join(sorted(sub.layouts)))
        if sub.name not in SUBSETS:
            # converted all the same (named after its words); said so that a misspelt prefix is noticed
            logger.info("subset %s is not a known SELMA3D subset (known: %s)", sub.name, ", ".join(SUBSETS))
    return dict(sorted(subsets.items()))


class _Discovery:
    """What the scan of one download root found: cases by (subset, brain, number), masks without an image,
    and every problem, in the order :func:`discover_annotated` reports them."""

    def __init__(self, root: Path):
        self.root = root
        self.problems: list[str] = []
        self.cases: dict[tuple[str, str, str], AnnotatedCase] = {}
        self.mask_only: dict[tuple[str, str, str], Path] = {}
        self.subset_containers: set[Path] = set()  # parents of <Subset> folders in the unprefixed layouts
        self.empty_folders: list[Path] = []

    def scan_images(self, folder: Path) -> None:
        """Add the images of one image folder to their cases (one file per case and channel)."""
        files = _image_files(folder)
        if not files and folder.name == "raw":
            self.empty_folders.append(folder)
        for path in files:
            named = self._image_case(folder, path)
            if named is None:
                continue
            key, layout, channel = named
            case = self.cases.setdefault(key, AnnotatedCase(*key, layout))
            if channel in case.channels:
                self.problems.append(f"{path}: found a second file for channel {channel:04d} of case {case.case_id} "
                                     f"of subset {key[0]}; expected one, already have {case.channels[channel]}")
                continue
            case.channels[channel] = path

    def _image_case(self, folder: Path, path: Path) -> tuple[tuple[str, str, str], str, int] | None:
        """(subset, brain, number), layout and channel of an image file, or None when it is no patch image."""
        m = _IMAGE_NAME.match(strip_image_suffix(path))
        flat = None if m else _FLAT_IMAGE_NAME.match(strip_image_suffix(path))
        if not m and not flat:
            logger.warning("%s: ignored, name matches neither [<subset>_]patchvolume_NNN_CCCC nor "
                           "<prefix>_NNNN[_CCCC] (%s)", path, "|".join(IMAGE_SUFFIXES))
            return None
        if flat and folder.name != "raw" and not any((folder.parent / d).is_dir() for d in MASK_FOLDERS):
            # images/ alone is too common a name to claim: a 2026 image folder has a mask folder beside it
            logger.info("%s: ignored, no mask folder (%s) beside %s", path, "|".join(MASK_FOLDERS), folder)
            return None
        if flat:
            subset, brain, layout = flat.group("prefix"), "", "2026"
            m = flat
        elif m.group("prefix"):
            subset, brain, layout = m.group("prefix"), "", "prefixed"
        else:
            subset = folder.parent.name
            brain = _brain_of(folder, self.root, _BRAIN_PATCHES)
            layout = "challenge" if brain is not None else "bia"
            brain = brain or ""
            self.subset_containers.add(folder.parent.parent)
        return (subset, brain, m.group("number")), layout, int(m.group("channel") or 0)

    def scan_masks(self, folder: Path) -> None:
        """Give each mask of one mask folder to its case; keep the masks of no case for the report."""
        files = _image_files(folder)
        if not files and (folder.parent / "raw").is_dir() and _image_files(folder.parent / "raw"):
            logger.warning("%s: empty mask folder", folder)
        for path in files:
            m = _MASK_NAME.match(strip_image_suffix(path)) or _FLAT_MASK_NAME.match(strip_image_suffix(path))
            if not m:
                logger.warning("%s: ignored, name matches neither [<subset>_]patchvolume_NNN nor <prefix>_NNNN (%s)",
                               path, "|".join(IMAGE_SUFFIXES))
                continue
            if m.group("prefix"):
                subset, brain = m.group("prefix"), ""
            else:
                subset = folder.parent.name
                brain = _brain_of(folder, self.root, _BRAIN_ANNOTATION) or ""
                self.subset_containers.add(folder.parent.parent)
            key = (subset, brain, m.group("number"))
            case = self.cases.get(key)
            if case is None:
                if key in self.mask_only:
                    self.problems.append(f"{path}: found a second mask for {key}; expected one, "
                                         f"already have {self.mask_only[key]}")
                self.mask_only[key] = path
            elif case.mask is not None:
                self.problems.append(f"{path}: found a second mask for case {case.case_id} of subset {subset}; "
                                     f"expected one, already have {case.mask}")
            else:
                case.mask = path

    def report_empty_subsets(self) -> None:
        """A raw folder with no image, or a folder beside other subset folders holding no image."""
        for folder in self.empty_folders:
            self.problems.append(f"{folder}: empty subset, found no patchvolume_NNN_0000 image; expected at least "
                                 f"one annotated patch (remove the folder to skip this subset)")
        reported = {f.parent for f in self.empty_folders}
        for container in sorted(self.subset_containers):
            for sub in sorted(p for p in container.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if sub in reported or any(_image_files(d) for d in _walk_dirs(sub)):
                    continue
                self.problems.append(f"{sub}: empty subset, found no image or mask files; expected "
                                     f"{sub.name}/raw/patchvolume_NNN_0000.nii.gz (remove the folder to skip this "
                                     f"subset)")

    def report_masks_without_image(self) -> None:
        for (subset, brain, number), path in sorted(self.mask_only.items()):
            ext = image_suffix(path)
            old = _MASK_NAME.match(strip_image_suffix(path))
            if old is None:  # 2026: the image has the mask's name, in a sibling image folder
                where = path.parent.parent / f"{{{','.join(IMAGE_FOLDERS)}}}" / path.name
            else:
                name = (f"{subset}_" if old.group("prefix") else "") + f"patchvolume_{number}_0000{ext}"
                where = (self.root / f"brain_{brain}_patches" / subset / "raw" / name if brain
                         else path.parent.parent / "raw" / name)
            self.problems.append(f"{path}: mask without image; found no image of subset {subset} patch {number}, "
                                 f"expected {where}")

    def report_images_without_mask(self) -> None:
        for case in sorted(self.cases.values(), key=lambda c: (c.subset, c.case_id)):
            if case.mask is not None:
                continue
            first = case.channels[min(case.channels)]
            ext = image_suffix(first)
            name = (f"{case.subset}_" if case.layout == "prefixed" else "") + f"patchvolume_{case.number}{ext}"
            if case.layout == "2026":
                where = first.parent.parent / f"{{{','.join(MASK_FOLDERS)}}}" / f"{case.subset}_{case.number}{ext}"
            elif case.layout == "challenge":
                where = self.root / f"annotation_brain_{case.brain}" / case.subset / "gt" / name
            else:
                where = first.parent.parent / "gt" / name
            self.problems.append(f"{first}: image without mask; found no mask of subset {case.subset} patch "
                                 f"{case.number}, expected {where}")

    def subsets(self) -> dict[str, AnnotatedSubset]:
        """The cases grouped by subset; a case missing a channel the subset's others have is a problem."""
        subsets: dict[str, AnnotatedSubset] = {}
        for case in sorted(self.cases.values(), key=lambda c: (c.subset, c.case_id)):
            sub = subsets.setdefault(case.subset, AnnotatedSubset(case.subset, set(), []))
            sub.layouts.add(case.layout)
            sub.cases.append(case)
        for sub in subsets.values():
            n = sub.n_channels
            for case in sub.cases:
                missing = [c for c in range(n) if c not in case.channels]
                if missing:
                    first = case.channels[min(case.channels)]
                    stem = strip_image_suffix(first)[:-4]
                    expected = ", ".join(str(first.parent / f"{stem}{c:04d}{image_suffix(first)}") for c in missing)
                    self.problems.append(f"{first}: case {case.case_id} of subset {sub.name} has channels "
                                         f"{sorted(case.channels)}; expected {list(range(n))} like the other cases, "
                                         f"missing {expected}")
        return subsets

"""Challenge-style test inputs <-> an nnU-Net input folder, and nnU-Net predictions back.

SELMA3D test inputs are single files named by case (``cfos_001.mha``, ``microglia_002.tif``), one
file per case, several channels (vessels: WGA + Evans blue) as one 4D file. ``nnUNetv2_predict``
only finds ``<CASE>_<CHANNEL>.<file_ending>`` files and silently finds "0 cases" in such a folder.
:func:`challenge_inputs_to_nnunet` writes ``<CASE>_0000.nii.gz`` (and ``_0001`` for a second channel)
plus a record of where each case came from; :func:`predictions_to_challenge` turns nnU-Net's
``<CASE>.nii.gz`` predictions back into the input's file names, formats and geometry.

Geometry: SELMA3D carries no physical spacing and SELMA models are trained at spacing 1 on the
voxel grid, so the nnU-Net inputs are written with unit spacing, zero origin and identity
direction (nnU-Net then resamples nothing, exactly like the challenge container); the original
spacing, origin and direction are kept in the record and restored on the way back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import atomic_path, write_json_atomic
from nnunetv2_selma.volumes.images import (
    IDENTITY_GEOMETRY,
    IMAGE_SUFFIXES,
    TIFF_SUFFIXES,
    image_suffix,
    read_image_channels,
    strip_image_suffix,
    write_image,
)

#: the record :func:`challenge_inputs_to_nnunet` leaves in the nnU-Net input folder (nnU-Net ignores it)
RECORD_NAME = "selma_test_inputs.json"
NNUNET_FILE_ENDING = ".nii.gz"
#: a 4D input with at most this many entries on its first (TIFF) or last (MetaImage vector) axis is
#: read as channels; SELMA3D inputs have one or two
MAX_CHANNELS = 4


@dataclass(frozen=True)
class ChallengeInput:
    """One challenge-style test input: its case name, file, channel count, shape and geometry."""

    case: str
    path: Path
    n_channels: int
    shape: tuple[int, int, int]
    geometry: dict


def read_challenge_input(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a test input as ``(c, z, y, x)`` plus its geometry (``spacing``/``origin``/``direction``).

    3D files are one channel; a 4D TIFF ``(c, z, y, x)`` or a MetaImage/NIfTI vector image with at
    most :data:`MAX_CHANNELS` components is several. Raises ValueError naming the file otherwise.
    """
    array, geometry = read_image_channels(path, MAX_CHANNELS)
    return array, {k: [float(v) for v in geometry[k]] for k in ("spacing", "origin", "direction")}


def find_challenge_inputs(folder: str | Path) -> list[Path]:
    """The image files of a test-input folder (or of its ``images/`` subfolder), sorted by name.

    Raises ValueError naming the folder when it does not exist, holds no image, or two files share
    a case name (``cfos_001.mha`` next to ``cfos_001.tif``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: test-input folder does not exist")
    for candidate in (folder, folder / "images"):
        files = sorted(p for p in candidate.iterdir() if p.is_file() and image_suffix(p)) \
            if candidate.is_dir() else []
        if files:
            break
    else:
        raise ValueError(f"{folder}: holds no test image ({', '.join(IMAGE_SUFFIXES)}), nor does {folder / 'images'}")
    seen: dict[str, Path] = {}
    for path in files:
        case = strip_image_suffix(path)
        if case in seen:
            raise ValueError(f"{candidate}: case {case!r} has two files, {seen[case].name} and {path.name}; keep one")
        seen[case] = path
    return files


def challenge_inputs_to_nnunet(input_folder: str | Path, output_folder: str | Path) -> list[ChallengeInput]:
    """Write challenge-style test inputs as an nnU-Net input folder for ``nnUNetv2_predict -i``.

    Every ``<case>.<ext>`` becomes ``<case>_0000.nii.gz`` (``_0001``... for further channels) at
    unit spacing (see the module docstring), and ``<output_folder>/selma_test_inputs.json`` records
    each case's file name, shape and geometry for :func:`predictions_to_challenge`.

    Raises
    ------
    ValueError naming the file or folder: no inputs, unreadable or non-3D images, cases with
    different channel counts (one model, one channel count: convert them into separate folders),
    an output folder inside the input folder, or an output folder holding other files.
    """
    input_folder, output_folder = Path(input_folder), Path(output_folder)
    files = find_challenge_inputs(input_folder)
    if output_folder.resolve() == files[0].parent.resolve():
        raise ValueError(f"-o {output_folder} is the test-input folder itself; choose a new folder")
    if output_folder.exists() and any(p.name != RECORD_NAME and not p.name.endswith(NNUNET_FILE_ENDING)
                                      for p in output_folder.iterdir()):
        raise ValueError(f"-o {output_folder} exists and holds other files than nnU-Net inputs; choose a new folder")
    # read the headers first: a mixed folder fails before anything is written
    inputs = []
    for path in files:
        array, geometry = read_challenge_input(path)
        inputs.append(ChallengeInput(strip_image_suffix(path), path, int(array.shape[0]), tuple(array.shape[1:]),
                                geometry))
    counts = {i.n_channels for i in inputs}
    if len(counts) > 1:
        by = {c: [i.path.name for i in inputs if i.n_channels == c] for c in sorted(counts)}
        raise ValueError(f"{input_folder}: cases with different channel counts {by}; one nnU-Net model takes one "
                         "channel count: convert them into separate folders")
    output_folder.mkdir(parents=True, exist_ok=True)
    for item in inputs:
        array, _ = read_challenge_input(item.path)
        for c, channel in enumerate(array):
            target = output_folder / f"{item.case}_{c:04d}{NNUNET_FILE_ENDING}"
            with atomic_path(target) as tmp:
                write_image(tmp, channel, IDENTITY_GEOMETRY)
    record = {"source": str(input_folder.resolve()),
              "cases": {i.case: {"file": i.path.name, "channels": i.n_channels, "shape": list(i.shape),
                                 "geometry": i.geometry} for i in inputs}}
    write_json_atomic(output_folder / RECORD_NAME, record)
    return inputs


def _load_record(test_inputs: Path) -> dict:
    """The record of a folder written by :func:`challenge_inputs_to_nnunet`, or one made from a challenge folder."""
    if (test_inputs / RECORD_NAME).is_file():
        return json.loads((test_inputs / RECORD_NAME).read_text())
    cases = {}
    for path in find_challenge_inputs(test_inputs):
        array, geometry = read_challenge_input(path)
        cases[strip_image_suffix(path)] = {"file": path.name, "channels": int(array.shape[0]),
                                           "shape": list(array.shape[1:]), "geometry": geometry}
    return {"source": str(test_inputs.resolve()), "cases": cases}


def predictions_to_challenge(prediction_folder: str | Path, test_inputs: str | Path,
                             output_folder: str | Path, dtype: str = "uint8") -> list[Path]:
    """Write nnU-Net's ``<case>.nii.gz`` predictions under the test inputs' names and formats.

    Parameters
    ----------
    prediction_folder : ``nnUNetv2_predict -o`` folder
    test_inputs : the folder :func:`challenge_inputs_to_nnunet` wrote (its record is used) or the
        original challenge test-input folder
    output_folder : gets ``cfos_001.mha`` etc.: a binary (0/1) mask of the input's shape, with the
        input's spacing, origin and direction for MetaImage/NIfTI, in ``dtype`` (``uint8``; the
        2025 edition expects ``int8``)

    Raises
    ------
    ValueError naming the case when a prediction is missing or its shape differs from the input's.
    """
    prediction_folder, output_folder = Path(prediction_folder), Path(output_folder)
    record = _load_record(Path(test_inputs))
    predictions = {strip_image_suffix(p): p for p in prediction_folder.iterdir() if image_suffix(p)} \
        if prediction_folder.is_dir() else {}
    missing = sorted(set(record["cases"]) - set(predictions))
    if missing:
        raise ValueError(f"{prediction_folder}: no prediction for {len(missing)} of {len(record['cases'])} test "
                         f"case(s): {', '.join(missing[:10])}; expected <case>{NNUNET_FILE_ENDING} from "
                         "nnUNetv2_predict")
    from nnunetv2_selma.volumes.images import read_image

    output_folder.mkdir(parents=True, exist_ok=True)
    written = []
    for case, info in sorted(record["cases"].items()):
        seg, _ = read_image(predictions[case])
        if list(seg.shape) != list(info["shape"]):
            raise ValueError(f"case {case}: prediction {predictions[case]} has shape {seg.shape} but the input "
                             f"{info['file']} has {tuple(info['shape'])}; expected equal shapes")
        target = output_folder / info["file"]
        suffix = image_suffix(target)
        with atomic_path(target) as tmp:
            write_image(tmp, (seg > 0).astype(dtype), None if suffix in TIFF_SUFFIXES else info["geometry"])
        written.append(target)
    return written


__all__ = ["RECORD_NAME", "ChallengeInput", "find_challenge_inputs", "predictions_to_challenge", "read_challenge_input",
           "challenge_inputs_to_nnunet"]

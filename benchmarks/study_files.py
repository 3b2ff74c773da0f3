"""What the unannotated-benefit study writes where, for the study and the small scripts that read its folder.

``bench_unannotated_benefit.py`` draws the data and runs the arms; ``foreground_calls.py`` and ``share_proxy.py``
read its ``--work`` folder back. They share the structure table and the image reader here, so a script that only
reads a folder does not import the whole study.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: structure -> the 2024 subset written for it, its dataset id (own ids: never mixed with the label-efficiency
#: study's), the unannotated folder of its volumes
STRUCTURES = {"nuclei": ("shannel_cells", 721, "nucleus"), "cfos": ("cFos-Active_Neurons", 723, "cfos"),
              "plaques": ("AD_plaques", 724, "ab_plaque")}


def read_array(path: Path, what: str) -> np.ndarray:
    """The voxels of the image at ``path`` (z, y, x); a missing file is named with ``what`` was expected there."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image (expected {what})")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def rows_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a script that reads a study's rows back: ``--work``, ``--structure``, ``--arms``, ``-o``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the study's --work folder")
    parser.add_argument("--structure", help="only this structure (nuclei, cfos, plaques)")
    parser.add_argument("--arms", nargs="+", help="only these arms")
    parser.add_argument("-o", "--output", type=Path, help="also write the records as JSON here")
    return parser

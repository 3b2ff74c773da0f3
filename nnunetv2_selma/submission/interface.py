"""What a SELMA3D Grand Challenge algorithm container reads and writes, per edition.

Grand Challenge mounts one input image under ``<input root>/images/<input slug>/`` and expects
one output image at ``<output root>/images/<output slug>/output.mha``. The slugs and the output
pixel type differ between editions; everything else in :mod:`nnunetv2_selma.submission` is
edition-agnostic and looks them up here.

Environment variables (local runs and tests; the container needs none of them):

``SELMA_INPUT_ROOT``   input root (default ``/input``)
``SELMA_OUTPUT_ROOT``  output root (default ``/output``)
``SELMA_MODELS_DIR``   folder with ``models.json`` and the model folders (default ``/opt/app/resources``)
``SELMA_EDITION``      ``2024`` or ``2025`` (default: the edition the container was exported for)
``SELMA_DEVICE``       ``cuda``/``cpu`` (default: ``cuda`` when available)
``SELMA_USE_MIRRORING`` ``0``/``1``: test-time mirroring (default from ``models.json``, else 1)
``SELMA_TILE_STEP_SIZE`` sliding-window step as a fraction of the patch (default 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: where the image keeps its resources (models.json and model folders)
DEFAULT_MODELS_DIR = "/opt/app/resources"
DEFAULT_INPUT_ROOT = "/input"
DEFAULT_OUTPUT_ROOT = "/output"
OUTPUT_NAME = "output.mha"


@dataclass(frozen=True)
class Edition:
    """Input/output interface of one SELMA3D edition.

    Attributes
    ----------
    name : str
        ``"2024"`` or ``"2025"``.
    input_slug, output_slug : str
        Grand Challenge interface slugs: folders under ``images/``.
    input_suffixes : tuple of str
        Accepted input file types (lower case).
    output_dtype : numpy dtype
        Pixel type of the binary output mask.
    """

    name: str
    input_slug: str
    output_slug: str
    input_suffixes: tuple[str, ...]
    output_dtype: type

    def input_folder(self, input_root: str) -> str:
        return f"{input_root.rstrip('/')}/images/{self.input_slug}"

    def output_file(self, output_root: str) -> str:
        return f"{output_root.rstrip('/')}/images/{self.output_slug}/{OUTPUT_NAME}"


EDITIONS: dict[str, Edition] = {
    "2024": Edition("2024", "3d-brain-microscopy", "brain-structure", (".mha", ".tif", ".tiff"), np.uint8),
    "2025": Edition("2025", "light-sheet-3d-microscopy", "isolated-biological-structure",
                    (".mha", ".tif", ".tiff"), np.int8),
}
DEFAULT_EDITION = "2024"


def get_edition(name: str | int) -> Edition:
    """The :class:`Edition` called ``name``; ValueError naming the known editions otherwise."""
    key = str(name).strip()
    if key not in EDITIONS:
        raise ValueError(f"unknown SELMA3D edition {name!r}; expected one of {', '.join(EDITIONS)}")
    return EDITIONS[key]

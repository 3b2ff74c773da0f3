"""What a SELMA3D Grand Challenge algorithm container reads and writes, per edition.

Grand Challenge mounts one input image under ``<input root>/images/<input slug>/`` and expects
one output image at ``<output root>/images/<output slug>/output.mha``. The slugs, the output
pixel type and the API differ between editions; everything else in :mod:`nnunetv2_selma.submission`
is edition-agnostic and looks them up here.

API: 2024 and 2025 containers run once per case (``exec``: start, read, write, exit). 2026 uses
Grand Challenge's ``invoke`` API (image label ``org.grand-challenge.api-method="invoke"``): the
container starts an HTTP server on port 4743 that loads the model once, answers ``GET /health``
with 200 when ready, and handles one case per ``POST /invoke`` (201 when the output is written);
the weights are uploaded separately as ``model.tar.gz`` and extracted to ``/opt/ml/model``
(YingChen7/SELMA3D2026_example_algorithm: ``inference.py``, ``do_test_run.sh``, ``do_save.sh``).

Environment variables (local runs and tests; the container needs none of them):

``SELMA_INPUT_ROOT``   input root (default ``/input``)
``SELMA_OUTPUT_ROOT``  output root (default ``/output``)
``SELMA_MODELS_DIR``   folder with ``models.json`` and the model folders (default ``/opt/app/resources``)
``SELMA_EDITION``      ``2024``, ``2025`` or ``2026`` (default: the edition the container was exported for)
``SELMA_DEVICE``       ``cuda``/``cpu`` (default: ``cuda`` when available)
``SELMA_USE_MIRRORING`` ``0``/``1``: test-time mirroring (default from ``models.json``, else 1)
``SELMA_TILE_STEP_SIZE`` sliding-window step as a fraction of the patch (default 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: where the image keeps its resources (models.json and model folders)
DEFAULT_MODELS_DIR = "/opt/app/resources"
#: where Grand Challenge extracts the separately uploaded ``model.tar.gz`` (invoke API, 2026)
INVOKE_MODELS_DIR = "/opt/ml/model"
#: the port Grand Challenge's invoke API calls (the organisers' do_test_run.sh: CONTAINER_PORT=4743)
INVOKE_PORT = 4743
DEFAULT_INPUT_ROOT = "/input"
DEFAULT_OUTPUT_ROOT = "/output"
OUTPUT_NAME = "output.mha"


@dataclass(frozen=True)
class Edition:
    """Input/output interface of one SELMA3D edition.

    Attributes
    ----------
    name : str
        ``"2024"``, ``"2025"`` or ``"2026"``.
    input_slug, output_slug : str
        Grand Challenge interface slugs: folders under ``images/``.
    input_suffixes : tuple of str
        Accepted input file types (lower case).
    output_dtype : numpy dtype
        Pixel type of the binary output mask.
    api : str
        ``"exec"`` (run once per case) or ``"invoke"`` (HTTP server, see the module docstring).
    """

    name: str
    input_slug: str
    output_slug: str
    input_suffixes: tuple[str, ...]
    output_dtype: type
    api: str = "exec"

    @property
    def models_dir(self) -> str:
        """Default resources folder: inside the image (exec) or the extracted model tarball (invoke)."""
        return INVOKE_MODELS_DIR if self.api == "invoke" else DEFAULT_MODELS_DIR

    def input_folder(self, input_root: str) -> str:
        return f"{input_root.rstrip('/')}/images/{self.input_slug}"

    def output_file(self, output_root: str) -> str:
        return f"{output_root.rstrip('/')}/images/{self.output_slug}/{OUTPUT_NAME}"


EDITIONS: dict[str, Edition] = {
    "2024": Edition("2024", "3d-brain-microscopy", "brain-structure", (".mha", ".tif", ".tiff"), np.uint8),
    "2025": Edition("2025", "light-sheet-3d-microscopy", "isolated-biological-structure",
                    (".mha", ".tif", ".tiff"), np.int8),
    "2026": Edition("2026", "light-sheet-3d-microscopy", "isolated-biological-structure",
                    (".mha", ".tif", ".tiff"), np.int8, api="invoke"),
}
DEFAULT_EDITION = "2024"


def get_edition(name: str | int) -> Edition:
    """The :class:`Edition` called ``name``; ValueError naming the known editions otherwise."""
    key = str(name).strip()
    if key not in EDITIONS:
        raise ValueError(f"unknown SELMA3D edition {name!r}; expected one of {', '.join(EDITIONS)}")
    return EDITIONS[key]

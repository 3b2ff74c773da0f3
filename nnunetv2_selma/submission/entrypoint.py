"""The container's entry point: one SELMA3D input image in, one binary mask out.

``python -m nnunetv2_selma.submission`` (the image's ENTRYPOINT) does, in order:

1. find the single input image of the edition's input folder (``.mha``, ``.tif``, ``.tiff``);
2. read it (SimpleITK for ``.mha``; tifffile for TIFF, unit spacing) as a ``(z, y, x)`` array;
3. pick the packed model from the file name's structure prefix (:mod:`.models`);
4. predict with nnU-Net's own ``nnUNetPredictor`` (sliding window, Gaussian blending, ZScore
   normalisation of the whole image as in training; GPU when present, otherwise CPU);
5. write ``output.mha`` (its folder is checked writable before step 4): a binary mask (0/1) of
   the input's exact shape, spacing, origin and direction, in the edition's pixel type, written
   to a temporary file and moved into place.

Spacing: SELMA3D carries no physical spacing and SELMA models are trained at spacing 1 on the
voxel grid, so the image is predicted on its voxel grid (the model's own spacing is handed to
nnU-Net: no resampling); the input's spacing is only copied to the output.

Environment variables (all optional; the container on Grand Challenge needs none of them):

  SELMA_INPUT_ROOT       input root (default /input)
  SELMA_OUTPUT_ROOT      output root (default /output); must be writable, checked before predicting
  SELMA_MODELS_DIR       folder with models.json and the model folders (default /opt/app/resources;
                         the 2026 image sets /opt/ml/model, where Grand Challenge extracts model.tar.gz)
  SELMA_EDITION          2024, 2025 or 2026 (default: the edition the container was exported for)
  SELMA_DEVICE           cuda or cpu (default: cuda when available)
  SELMA_USE_MIRRORING    0/1: test-time mirroring (default from models.json, else 1)
  SELMA_TILE_STEP_SIZE   sliding-window step as a fraction of the patch, in (0, 1] (default 0.5)

Every failure a user can act on (no input, two inputs, an unreadable file, a wrong channel
count, a broken ``models.json``, an output folder that is not writable, an output that cannot be
replaced) ends with one ``nnunetv2_selma.submission: error: <message>`` paragraph on stderr (the
invoke server's says ``nnunetv2_selma.submission.server``) and exit status 1, no traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunetv2_selma.atomic import atomic_path
from nnunetv2_selma.model_folder import UNREADABLE_CHECKPOINT, check_model_folder, unreadable_checkpoint
from nnunetv2_selma.nnunet_ext import ENV_VAR, shim_folder
from nnunetv2_selma.submission.interface import (
    DEFAULT_EDITION,
    DEFAULT_INPUT_ROOT,
    DEFAULT_MODELS_DIR,
    DEFAULT_OUTPUT_ROOT,
    Edition,
    get_edition,
)
from nnunetv2_selma.submission.models import (
    PackedModel,
    load_models_json,
    locate_models_dir,
    packed_models,
    select_model,
)
from nnunetv2_selma.volumes.images import image_suffix, read_image, write_image

log = logging.getLogger("nnunetv2_selma.submission")

#: the program name that starts each error line of ``python -m nnunetv2_selma.submission``
PROGRAM = "nnunetv2_selma.submission"


class SubmissionError(RuntimeError):
    """A problem with the input, the resources or the settings that the user can fix."""


@dataclass(frozen=True)
class SubmissionSettings:
    """Everything the entry point needs, resolved from the environment.

    Attributes
    ----------
    input_root, output_root, models_dir : Path
    edition : Edition
    device : str, ``"cuda"`` or ``"cpu"``
    use_mirroring : bool
    tile_step_size : float in (0, 1]
    """

    input_root: Path
    output_root: Path
    models_dir: Path
    edition: Edition
    device: str
    use_mirroring: bool
    tile_step_size: float

    @classmethod
    def from_environment(cls, environ: dict | None = None) -> SubmissionSettings:
        """Read ``SELMA_*`` variables (see :mod:`.interface`), falling back to the container defaults."""
        env = os.environ if environ is None else environ
        models_dir = locate_models_dir(env.get("SELMA_MODELS_DIR", DEFAULT_MODELS_DIR))
        config = load_models_json(models_dir)
        edition = get_edition(env.get("SELMA_EDITION", config.get("edition", DEFAULT_EDITION)))
        device = env.get("SELMA_DEVICE", "").strip().lower()
        if not device:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cuda", "cpu"):
            raise SubmissionError(f"SELMA_DEVICE={device!r}: expected 'cuda' or 'cpu'")
        mirroring = env.get("SELMA_USE_MIRRORING", "").strip()
        if mirroring not in ("", "0", "1"):
            # any other word used to mean "off" without a word: a typo must not change the predictions
            raise SubmissionError(f"SELMA_USE_MIRRORING={env['SELMA_USE_MIRRORING']!r}: expected 0 (off) or 1 (on); "
                                  f"unset it to use models.json's default")
        use_mirroring = bool(config.get("use_mirroring", True)) if not mirroring else mirroring == "1"
        try:
            step = float(env.get("SELMA_TILE_STEP_SIZE", config.get("tile_step_size", 0.5)))
        except ValueError as e:
            raise SubmissionError(f"SELMA_TILE_STEP_SIZE: {e}; expected a number in (0, 1]") from e
        if not 0.0 < step <= 1.0:
            raise SubmissionError(f"tile step size {step}: expected a number in (0, 1]")
        return cls(Path(env.get("SELMA_INPUT_ROOT", DEFAULT_INPUT_ROOT)),
                   Path(env.get("SELMA_OUTPUT_ROOT", DEFAULT_OUTPUT_ROOT)), models_dir, edition, device,
                   use_mirroring, step)


def find_input_image(folder: str | Path, suffixes: tuple[str, ...]) -> Path:
    """The one image file in ``folder`` with one of ``suffixes``.

    Hidden files (``.DS_Store``) are ignored. Raises :class:`SubmissionError` naming the folder when
    it does not exist, holds no image of an accepted type (listing what it does hold), or holds more
    than one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SubmissionError(f"input folder {folder} does not exist; expected it to hold exactly one image "
                              f"({', '.join(suffixes)})")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if image_suffix(p) in suffixes]
    if not images:
        found = ", ".join(p.name for p in files) or "nothing"
        raise SubmissionError(f"input folder {folder} holds no image of type {', '.join(suffixes)} "
                              f"(found: {found}); expected exactly one")
    if len(images) > 1:
        raise SubmissionError(f"input folder {folder} holds {len(images)} images "
                              f"({', '.join(p.name for p in images)}); expected exactly one")
    return images[0]


def _ensure_plugin_trainers_findable() -> None:
    """Append the plugin's trainer folder (:func:`~nnunetv2_selma.nnunet_ext.shim_folder`) to
    ``nnUNet_extTrainer`` unless it is there, so SELMA trainers load by name."""
    ext = str(shim_folder())
    paths = [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if ext not in paths:
        os.environ[ENV_VAR] = os.pathsep.join([*paths, ext])


def load_predictor(model: PackedModel, device: str = "cpu", use_mirroring: bool = True,
                   tile_step_size: float = 0.5):
    """An initialised ``nnUNetPredictor`` for a packed model.

    Raises :class:`~nnunetv2_selma.model_folder.ModelFolderError` naming the file when one is missing or a
    checkpoint is unreadable.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    check_model_folder(model.folder, model.folds, model.checkpoint)
    _ensure_plugin_trainers_findable()
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device == "cuda", device=torch.device(device),
                                verbose=False, verbose_preprocessing=False, allow_tqdm=True)
    try:
        predictor.initialize_from_trained_model_folder(str(model.folder), use_folds=model.folds,
                                                       checkpoint_name=model.checkpoint)
    except UNREADABLE_CHECKPOINT as e:
        # torch reports a truncated file as "OSError: [Errno 22]" or a zip-reader error, naming no file
        paths = ", ".join(str(model.folder / f"fold_{fold}" / model.checkpoint) for fold in model.folds)
        raise unreadable_checkpoint(paths, e, f"Model {model.name!r} of this submission holds an unreadable "
                                              f"checkpoint: export the submission again.") from e
    return predictor


def predict_mask(predictor, image: np.ndarray) -> np.ndarray:
    """Binary mask (uint8, 0/1) of a ``(z, y, x)`` or ``(c, z, y, x)`` image, same spatial shape.

    The image is predicted on its voxel grid: nnU-Net is told it has the model's own spacing, so
    nothing is resampled (see the module docstring). Labels above 0 count as foreground.
    """
    data = image[None] if image.ndim == 3 else image
    expected = len(predictor.dataset_json["channel_names"])
    if data.shape[0] != expected:
        raise SubmissionError(f"input has {data.shape[0]} channel(s), shape {image.shape}; the model expects "
                              f"{expected} ({', '.join(predictor.dataset_json['channel_names'].values())})")
    spacing = [float(s) for s in predictor.configuration_manager.spacing]
    seg = predictor.predict_single_npy_array(data.astype(np.float32, copy=False), {"spacing": spacing})
    return (np.asarray(seg) > 0).astype(np.uint8)


def check_output_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there (a probe file, removed).

    Raises :class:`SubmissionError` naming the folder when it cannot be created or written.
    """
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write_probe_"):
            pass
    except OSError as e:
        raise SubmissionError(f"output folder {folder} is not writable ({type(e).__name__}: {e}); mount the output "
                              "folder writable (or set SELMA_OUTPUT_ROOT to a writable folder)") from e


def load_predictors(settings: SubmissionSettings) -> dict[str, object]:
    """One initialised predictor per packed model, keyed by model name (the invoke server's start-up)."""
    models, _ = packed_models(settings.models_dir)
    predictors = {}
    for name, model in models.items():
        start = time.perf_counter()
        predictors[name] = load_predictor(model, settings.device, settings.use_mirroring, settings.tile_step_size)
        log.info("loaded model %r (folds %s) on %s in %.1f s", name, list(model.folds), settings.device,
                 time.perf_counter() - start)
    return predictors


def run_submission(settings: SubmissionSettings, predictors: dict[str, object] | None = None) -> Path:
    """Segment the one input image and write the edition's output; return the output path.

    ``predictors`` (from :func:`load_predictors`) are reused as they are; without them the chosen
    model is loaded for this one case (the run-once containers).

    Raises :class:`SubmissionError` (actionable problems) or ``ValueError`` (unreadable image).
    """
    edition = settings.edition
    input_file = find_input_image(edition.input_folder(str(settings.input_root)), edition.input_suffixes)
    log.info("input %s (edition %s)", input_file, edition.name)
    try:
        image, geometry = read_image(input_file)
    except ValueError as e:
        raise SubmissionError(f"cannot read the input image: {e}") from e
    if image.size == 0:
        raise SubmissionError(f"input image {input_file} is empty (shape {image.shape})")
    log.info("read %s %s, spacing %s, origin %s", image.shape, image.dtype, geometry["spacing"], geometry["origin"])

    models, default = packed_models(settings.models_dir)
    model, why = select_model(models, default, input_file.name)
    log.info("model %r (%s); folds %s; device %s", model.name, why, list(model.folds), settings.device)
    output_file = Path(edition.output_file(str(settings.output_root)))
    check_output_writable(output_file.parent)  # before minutes of prediction, not after
    start = time.perf_counter()
    if predictors is not None:
        predictor = predictors[model.name]
    else:
        predictor = load_predictor(model, settings.device, settings.use_mirroring, settings.tile_step_size)
    mask = predict_mask(predictor, image)
    log.info("predicted in %.1f s, %d foreground voxels of %d", time.perf_counter() - start, int(mask.sum()),
             mask.size)
    if mask.shape != image.shape:  # nnU-Net returns the input's shape; this guards the contract
        raise RuntimeError(f"prediction shape {mask.shape} differs from input shape {image.shape}")

    try:
        with atomic_path(output_file) as tmp:
            write_image(tmp, mask.astype(edition.output_dtype), geometry)
    except OSError as e:  # e.g. output.mha is a folder: os.replace named only the temporary and the target
        raise SubmissionError(f"cannot write the output {output_file}: {e.strerror or e}; expected a file "
                              f"there that can be written or replaced") from e
    log.info("wrote %s", output_file)
    return output_file


def report_error(program: str, error: BaseException) -> int:
    """Print ``<program>: error: <message>`` on stderr, the one form of the container programs' errors
    (lower-case ``error:`` as every console command says it); return the exit status 1."""
    print(f"{program}: error: {str(error).strip() or type(error).__name__}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the submission with settings from the environment; 0 on success, 1 on a user error."""
    if argv:
        print(__doc__, file=sys.stderr)
        if argv[0] in ("-h", "--help"):
            return 0
        print(f"{PROGRAM}: error: found arguments {' '.join(argv)!r}; expected none (the settings are the "
              f"SELMA_* environment variables above)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        run_submission(SubmissionSettings.from_environment())
    except (SubmissionError, ValueError, OSError) as e:  # OSErrors of the file system name their file
        return report_error(PROGRAM, e)
    return 0

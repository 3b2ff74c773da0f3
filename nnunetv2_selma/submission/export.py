"""Write a Docker build context for a SELMA3D Grand Challenge submission.

:func:`export_submission` packs one or more trained nnU-Net model folders (plans, dataset.json,
weights-only checkpoints of the chosen folds) as resources, writes ``models.json`` (structure
prefixes, default model, edition, mirroring), a Dockerfile on a pinned PyTorch image that installs
the project and its pinned dependencies from a local wheelhouse (no network at run time), the
local runner ``test_run.sh`` and a README. The context is written next to ``build_dir`` and moved
into place when complete.

Edition 2026 (Grand Challenge's invoke API): the image holds no weights; the models go to
``model/`` and ``model.tar.gz`` (its contents, uploaded separately as the algorithm's Model and
extracted by Grand Challenge to ``/opt/ml/model``); the Dockerfile carries the label
``org.grand-challenge.api-method="invoke"`` and starts :mod:`.server`; ``test_run.sh`` drives
``/health`` and ``/invoke`` on one or more images.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import logging
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

import nnunetv2_selma
from nnunetv2_selma.model_folder import check_model_folder
from nnunetv2_selma.submission.interface import DEFAULT_EDITION, INVOKE_PORT, get_edition
from nnunetv2_selma.submission.models import (
    KNOWN_STRUCTURE_PREFIXES,
    MODELS_JSON,
    normalize_name,
    structure_from_dataset_name,
)
from nnunetv2_selma.submission.templates import (
    DOCKERFILE,
    DOCKERFILE_INVOKE,
    README,
    README_INVOKE,
    TEST_RUN_INVOKE_SH,
    TEST_RUN_SH,
    fill,
)

log = logging.getLogger(__name__)

#: pinned base image: PyTorch with the CUDA runtime (torch itself comes from here, not the wheelhouse)
DEFAULT_BASE_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
#: the CPython version of DEFAULT_BASE_IMAGE; wheels must be built for it
DEFAULT_BASE_PYTHON = "3.11"
PROJECT_DISTRIBUTION = "nnunetv2-selma"
#: distributions the base image provides (CUDA builds); never packed into the wheelhouse
BASE_IMAGE_PACKAGES = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*)$")
#: the keys nnUNetPredictor reads from a checkpoint; optimizer state etc. is dropped to shrink the image
CHECKPOINT_KEYS = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes")
#: file every build context holds; ``overwrite`` replaces only a folder holding it
SUBMISSION_MARKER = ".selma_submission"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(distribution: str = PROJECT_DISTRIBUTION) -> list[str]:
    """``name==version`` for every installed distribution ``distribution`` needs, itself excluded.

    Walks the installed metadata (markers evaluated for this interpreter, no extras) and drops
    what the base image provides (torch, triton, nvidia-*). Sorted by name.

    Raises
    ------
    ValueError naming the requirement when a needed distribution is not installed.
    """
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = [distribution]
    while todo:
        name = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as e:
            raise ValueError(f"{name}: required by {distribution} but not installed; install it first") from e
        key = _canonical(dist.metadata["Name"])
        if key in seen:
            continue
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if BASE_IMAGE_PACKAGES.match(_canonical(req.name)) or _canonical(req.name) in seen:
                continue
            todo.append(req.name)
    seen.pop(_canonical(distribution))
    return [f"{name}=={version}" for name, version in sorted(seen.items())]


def _project_root() -> Path:
    root = Path(nnunetv2_selma.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise ValueError(f"nnunetv2_selma is installed from {root}, which holds no pyproject.toml: cannot build "
                         "its wheel; pass --wheelhouse with a folder that holds the nnunetv2_selma wheel")
    return root


def _wheel_key(filename: str) -> str:
    return _canonical(filename.split("-")[0])


def build_wheelhouse(dest: Path, requirements: Sequence[str], reuse: Path | None = None) -> None:
    """Fill ``dest`` with one wheel per requirement plus the project's own wheel.

    With ``reuse``, wheels are copied from that folder (nothing is downloaded); otherwise
    ``pip wheel --no-deps`` builds/downloads them for this interpreter. Raises ValueError listing
    the requirements that have no wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if reuse is not None:
        reuse = Path(reuse)
        if not reuse.is_dir():
            raise ValueError(f"--wheelhouse {reuse}: not a folder")
        for wheel in reuse.glob("*.whl"):
            shutil.copy2(wheel, dest / wheel.name)
    else:
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dest)]
        subprocess.run([*pip, *requirements], check=True)
        subprocess.run([*pip, "--no-build-isolation", str(_project_root())], check=True)
    have = {_wheel_key(w.name) for w in dest.glob("*.whl")}
    wanted = [*requirements, PROJECT_DISTRIBUTION]
    missing = [r for r in wanted if _canonical(r.split("==")[0]) not in have]
    if missing:
        raise ValueError(f"wheelhouse {reuse or dest} has no wheel for: {', '.join(missing)}")


def _pack_model(source: Path, dest: Path, folds: Sequence[int | str], checkpoint: str) -> None:
    """Copy plans/dataset.json and weights-only (CPU) checkpoints of ``folds`` from ``source`` to ``dest``."""
    import torch

    dest.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy2(source / name, dest / name)
    for fold in folds:
        ckpt = torch.load(source / f"fold_{fold}" / checkpoint, map_location="cpu", weights_only=False)
        slim = {k: ckpt[k] for k in CHECKPOINT_KEYS if k in ckpt}
        if "init_args" in slim and "device" in slim["init_args"]:
            slim["init_args"] = {**slim["init_args"], "device": torch.device("cpu")}
        (dest / f"fold_{fold}").mkdir()
        torch.save(slim, dest / f"fold_{fold}" / checkpoint)


def _write_model_tarball(folder: Path, tarball: Path) -> None:
    """``tar -czf tarball -C folder .`` (the organisers' do_save.sh): members relative to ``folder``, so
    Grand Challenge extracts ``models.json`` straight into ``/opt/ml/model``."""
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)


def parse_model_argument(argument: str) -> tuple[str | None, Path]:
    """``"cfos=/path/model"`` -> ``("cfos", Path)``; ``"/path/model"`` -> ``(None, Path)``."""
    name, sep, path = argument.partition("=")
    if sep and name and "/" not in name:
        return normalize_name(name), Path(path)
    return None, Path(argument)


def export_submission(model_folders: Sequence[str | Path | tuple[str | None, str | Path]], build_dir: str | Path,
                      edition: str = DEFAULT_EDITION, folds: Sequence[int | str] | None = None,
                      checkpoint: str = "checkpoint_final.pth", default: str | None = None,
                      use_mirroring: bool = True, base_image: str = DEFAULT_BASE_IMAGE,
                      base_python: str = DEFAULT_BASE_PYTHON, wheelhouse: str | Path | None = None,
                      build_wheels: bool = True, overwrite: bool = False) -> Path:
    """Write a complete Docker build context for a SELMA3D submission and return its path.

    Long because of its parameter list and their descriptions only; the body is four steps: refuse a build folder
    it did not write, check and name the models, write the context into a staging folder, move it into place.

    Parameters
    ----------
    model_folders : sequence of paths or ``(name, path)`` pairs
        nnU-Net training output folders (``.../<trainer>__<plans>__<configuration>``). A model's name
        (its structure key) defaults to the structure in the dataset name (``Dataset501_..._cFos``
        -> ``cfos``); names must be unique.
    build_dir : path
        Folder to create; refused if it exists unless ``overwrite``. Even with ``overwrite`` only a
        folder this function wrote (holding :data:`SUBMISSION_MARKER`) is replaced; the context is
        built in ``<build_dir>.partial`` and moved into place when complete.
    edition : ``"2024"``, ``"2025"`` or ``"2026"``
        Interface written into the image (input/output slugs, output pixel type, API: 2024/2025
        run once per case with the weights in ``resources/``; 2026 is an invoke-API server with
        the weights in ``model/`` and ``model.tar.gz``).
    folds : sequence of int/"all", optional
        Folds to pack for every model; default every ``fold_X`` holding ``checkpoint``.
    default : str, optional
        Model used when the input file name has no known structure prefix; default the first.
    use_mirroring : bool
        Test-time mirroring in the container (``SELMA_USE_MIRRORING`` overrides it at run time).
    base_image, base_python : str
        Pinned PyTorch base image and its CPython ``major.minor`` (checked at build time).
    wheelhouse : path, optional
        Reuse the wheels of this folder instead of running ``pip wheel``.
    build_wheels : bool
        False writes only ``wheelhouse/requirements.txt`` (no download; the wheels must be added
        before ``docker build``).

    Returns
    -------
    Path of the build context.

    Raises
    ------
    ValueError naming the folder/argument on a missing model file, no fold, a duplicate name, an
    unknown default, an existing ``build_dir`` (without ``overwrite``) or one this function did
    not write.
    """
    edition_info = get_edition(edition)
    build_dir = Path(build_dir)
    if build_dir.exists() and not overwrite:
        raise ValueError(f"{build_dir} already exists; choose a new folder or pass --overwrite")
    if build_dir.exists():
        _check_replaceable(build_dir, "--overwrite")
    # staged beside build_dir and moved into place complete; neither side folder may be a user's
    tmp = build_dir.with_name(build_dir.name + ".partial")
    old = build_dir.with_name(build_dir.name + ".old")
    for side in (tmp, old):
        if side.exists():
            _check_replaceable(side, "staging")
    models, sources = _collect_models(model_folders, folds, checkpoint)
    default = normalize_name(default) if default else next(iter(models))
    if default not in models:
        raise ValueError(f"default model {default!r} is not one of {sorted(models)}")

    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / SUBMISSION_MARKER).write_text("written by nnUNetv2_selma_export_submission; "
                                         "--overwrite replaces only folders holding this file\n")
    try:
        _write_context(tmp, sources, models, checkpoint, edition_info, default, use_mirroring, base_image,
                       base_python, wheelhouse, build_wheels)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if build_dir.exists():
        # move the old context aside first: a failure between the two renames loses nothing
        if old.exists():
            shutil.rmtree(old)
        build_dir.replace(old)
        tmp.replace(build_dir)
        shutil.rmtree(old)
    else:
        tmp.replace(build_dir)
    log.info("wrote the build context %s (edition %s, models %s, default %r)", build_dir, edition_info.name,
             sorted(models), default)
    return build_dir


def _collect_models(model_folders: Sequence[str | Path | tuple[str | None, str | Path]],
                    folds: Sequence[int | str] | None, checkpoint: str) -> tuple[dict[str, dict], list]:
    """Check every model folder and name it: ``{name: model entry}`` and ``[(name, folder, folds)]``."""
    models: dict[str, dict] = {}
    sources: list[tuple[str, Path, list]] = []
    for item in model_folders:
        name, folder = item if isinstance(item, tuple) else parse_model_argument(str(item))
        folder = Path(folder)
        chosen = check_model_folder(folder, folds, checkpoint)
        plans = json.loads((folder / "plans.json").read_text())
        name = name or structure_from_dataset_name(plans.get("dataset_name", folder.parent.name))
        if name in models:
            raise ValueError(f"two models are called {name!r}; name them explicitly with -m NAME=FOLDER")
        models[name] = {"folder": name, "folds": chosen, "checkpoint": checkpoint,
                        "prefixes": list(KNOWN_STRUCTURE_PREFIXES.get(name, (name,))),
                        "dataset_name": plans.get("dataset_name"), "source": str(folder.resolve())}
        sources.append((name, folder, chosen))
    if not models:
        raise ValueError("no model folder given")
    return models, sources


def _check_replaceable(folder: Path, why: str) -> None:
    """Refuse to delete ``folder`` unless this command wrote it (it holds :data:`SUBMISSION_MARKER`)."""
    if not folder.is_dir() or not (folder / SUBMISSION_MARKER).is_file():
        kind = "folder" if folder.is_dir() else "file"
        what = ("--overwrite replaces only a build context this command wrote" if why == "--overwrite"
                else "it is in the way of the build context")
        raise ValueError(f"{folder}: a {kind} without {SUBMISSION_MARKER}, so not a build context written by "
                         f"nnUNetv2_selma_export_submission; {what}. Choose another -o, or move {folder} away")


def _write_context(tmp: Path, sources, models: dict, checkpoint: str, edition_info, default: str,
                   use_mirroring: bool, base_image: str, base_python: str, wheelhouse, build_wheels: bool) -> None:
    """Fill the staging folder ``tmp`` with resources, wheelhouse, Dockerfile, README and runner."""
    invoke = edition_info.api == "invoke"
    resources = tmp / ("model" if invoke else "resources")
    resources.mkdir()
    for name, folder, chosen in sources:
        log.info("packing model %r from %s, folds %s", name, folder, chosen)
        _pack_model(folder, resources / name, chosen, checkpoint)
    config = {"edition": edition_info.name, "default": default, "use_mirroring": bool(use_mirroring),
              "tile_step_size": 0.5, "models": models}
    (resources / MODELS_JSON).write_text(json.dumps(config, indent=2))
    if invoke:
        _write_model_tarball(resources, tmp / "model.tar.gz")

    requirements = pinned_requirements()
    wheel_dir = tmp / "wheelhouse"
    wheel_dir.mkdir()
    (wheel_dir / "requirements.txt").write_text("\n".join([*requirements, PROJECT_DISTRIBUTION]) + "\n")
    if build_wheels or wheelhouse is not None:
        build_wheelhouse(wheel_dir, requirements, Path(wheelhouse) if wheelhouse is not None else None)
        wheel_note = "The wheels are included."
    else:
        wheel_note = ("The wheels were NOT built (--no-wheels): run `pip wheel --no-deps -w wheelhouse "
                      "-r wheelhouse/requirements.txt` plus the project's wheel before `docker build`.")

    values = {"EDITION": edition_info.name, "BASE_IMAGE": base_image, "PYTHON_VERSION": base_python,
              "INPUT_SLUG": edition_info.input_slug, "OUTPUT_SLUG": edition_info.output_slug,
              "DEFAULT": default, "WHEEL_NOTE": wheel_note, "PORT": INVOKE_PORT}
    (tmp / "Dockerfile").write_text(fill(DOCKERFILE_INVOKE if invoke else DOCKERFILE, **values))
    (tmp / "README.md").write_text(fill(README_INVOKE if invoke else README, **values))
    # the weights travel as model.tar.gz, never inside the invoke image
    (tmp / ".dockerignore").write_text("test_output/\n" + ("model/\nmodel.tar.gz\n" if invoke else ""))
    runner = tmp / "test_run.sh"
    runner.write_text(fill(TEST_RUN_INVOKE_SH if invoke else TEST_RUN_SH, **values))
    runner.chmod(0o755)

"""Which packed model segments which input: ``models.json`` and structure prefixes.

A container may hold one model per structure. ``models.json`` (in the resources folder) says::

    {
      "default": "cfos",
      "use_mirroring": true,
      "edition": "2024",
      "models": {
        "cfos":     {"folder": "cfos",     "folds": [0], "checkpoint": "checkpoint_final.pth",
                     "prefixes": ["cfos", "c_fos"]},
        "microglia": {"folder": "microglia", "folds": [0, 1], "checkpoint": "checkpoint_final.pth",
                     "prefixes": ["microglia"]}
      }
    }

The input file name picks the model: its name, lower-cased with ``-`` and spaces read as ``_``,
is matched against every model's prefixes and the longest prefix the name starts with wins
(``AD_plaques_patchvolume_023.mha`` -> ``plaques``). A name no prefix matches (Grand Challenge
usually hands in a UUID) gets the ``default`` model.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from nnunetv2_selma.structures import model_prefixes

log = logging.getLogger(__name__)

MODELS_JSON = "models.json"

#: canonical structure -> file-name prefixes known from SELMA3D's data (subset and folder names), every
#: edition; from the one table in :mod:`nnunetv2_selma.structures`
KNOWN_STRUCTURE_PREFIXES: dict[str, tuple[str, ...]] = model_prefixes()


def normalize_name(name: str) -> str:
    """Lower case, ``-``/spaces/dots -> ``_``: ``cFos-Active_Neurons`` -> ``cfos_active_neurons``."""
    return re.sub(r"[\s.\-]+", "_", name.strip().lower())


def structure_from_dataset_name(dataset_name: str) -> str:
    """Guess a structure key from an nnU-Net dataset name.

    ``Dataset501_SELMA3D_cFos`` -> ``cfos``; ``Dataset502_VessAP_vessel`` -> ``vessel``; a name that
    holds no known structure gives its own normalised tail (``Dataset580_SELMAtiny`` -> ``selmatiny``).
    """
    tail = normalize_name(re.sub(r"^Dataset\d+_", "", dataset_name))
    tail = re.sub(r"^selma3d_", "", tail)
    best = ""
    for structure, prefixes in KNOWN_STRUCTURE_PREFIXES.items():
        for prefix in prefixes:
            if (tail == prefix or tail.startswith(prefix + "_") or tail.endswith("_" + prefix)) \
                    and len(prefix) > len(best):
                best, found = prefix, structure
    return found if best else tail


@dataclass(frozen=True)
class PackedModel:
    """One model folder of the resources: where it is and which folds/checkpoint to use."""

    name: str
    folder: Path
    folds: tuple[int | str, ...]
    checkpoint: str
    prefixes: tuple[str, ...]


def locate_models_dir(models_dir: str | Path) -> Path:
    """``models_dir`` if it holds ``models.json``, else its one subfolder that does.

    A ``model.tar.gz`` packed with a top folder (``tar -czf model.tar.gz model``) extracts to
    ``/opt/ml/model/model/models.json``; both that and a flat tarball are accepted. Anything else
    returns ``models_dir`` unchanged (:func:`load_models_json` then names what is missing).
    """
    models_dir = Path(models_dir)
    if (models_dir / MODELS_JSON).is_file() or not models_dir.is_dir():
        return models_dir
    nested = [p.parent for p in models_dir.glob(f"*/{MODELS_JSON}")]
    return nested[0] if len(nested) == 1 else models_dir


def load_models_json(models_dir: str | Path) -> dict:
    """Read and check ``<models_dir>/models.json``; ValueError naming the file on any problem."""
    path = Path(models_dir) / MODELS_JSON
    if not path.is_file():
        raise ValueError(f"{path}: not found; the models folder must hold a {MODELS_JSON} written by "
                         "nnUNetv2_selma_export_submission (set SELMA_MODELS_DIR to the right folder)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    models = config.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{path}: found no 'models' mapping; expected at least one model entry")
    default = config.get("default")
    if default not in models:
        raise ValueError(f"{path}: default model {default!r} is not one of the models {sorted(models)}")
    return config


def packed_models(models_dir: str | Path) -> tuple[dict[str, PackedModel], str]:
    """All models of ``models.json`` as :class:`PackedModel` (folders resolved) and the default's name."""
    models_dir = Path(models_dir)
    config = load_models_json(models_dir)
    out = {}
    for name, entry in config["models"].items():
        folder = models_dir / entry.get("folder", name)
        folds = tuple(f if f == "all" else int(f) for f in entry.get("folds", [0]))
        prefixes = tuple(normalize_name(p) for p in entry.get("prefixes", [name]))
        out[name] = PackedModel(name, folder, folds, entry.get("checkpoint", "checkpoint_final.pth"), prefixes)
    return out, config["default"]


def select_model(models: dict[str, PackedModel], default: str, input_name: str) -> tuple[PackedModel, str]:
    """The model for an input file name and a sentence saying why it was chosen.

    The longest prefix that the normalised file name starts with wins; no match -> ``default``.
    """
    name = normalize_name(input_name)
    best: tuple[int, PackedModel | None, str] = (0, None, "")
    for model in models.values():
        for prefix in model.prefixes:
            if name.startswith(prefix) and len(prefix) > best[0]:
                best = (len(prefix), model, prefix)
    if best[1] is not None:
        return best[1], f"file name {input_name!r} starts with structure prefix {best[2]!r}"
    return models[default], f"file name {input_name!r} matches no structure prefix; using the default model"

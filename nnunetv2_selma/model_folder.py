"""nnU-Net plans and model folders, read and checked in one place.

A model folder is what ``nnUNetv2_train`` leaves in
``nnUNet_results/DatasetNNN_X/Trainer__Plans__Configuration``: ``plans.json``, ``dataset.json`` and one
``fold_N/<checkpoint>`` per trained fold. Whole-volume inference, the submission's export and its
entry point check a folder with :func:`check_model_folder` and read it with :func:`read_model_folder`;
pretraining and the network builder read a plans file with :func:`read_plans_configuration`.

nnU-Net reports a malformed plans file as a bare ``KeyError: 'configurations'`` and a truncated
checkpoint as ``OSError: [Errno 22]``, naming no file. Here every problem raises one exception type,
:class:`ModelFolderError` (a ``ValueError``), whose message names the file, what was found and what
was expected.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: the files of a model folder beside its folds
MODEL_FILES = ("plans.json", "dataset.json")
#: where nnUNetv2_train puts a model folder
EXAMPLE_MODEL_FOLDER = "nnUNet_results/DatasetNNN_X/nnUNetTrainer__nnUNetPlans__3d_fullres"
#: what torch.load raises for a truncated, corrupted or foreign file (zip reader, pickle, short read)
UNREADABLE_CHECKPOINT = (RuntimeError, OSError, EOFError, KeyError, TypeError, pickle.UnpicklingError)
#: what a configuration of an nnU-Net plans file must hold for the network and the patch sampler
_REQUIRED_CONFIGURATION_KEYS = ("patch_size", "architecture")


class ModelFolderError(ValueError):
    """A plans file, dataset.json, model folder or checkpoint that cannot be used; the message names the file."""


# ----------------------------------------------------------------------------------------------
# plans -> PlansManager, ConfigurationManager
# ----------------------------------------------------------------------------------------------
def _read_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not a JSON file ({e}); expected {expected}") from e


def read_plans_configuration(plans: dict | str | Path, configuration: str = "3d_fullres"):
    """``(PlansManager, ConfigurationManager)`` of ``configuration`` in the plans, checked at the door.

    Raises
    ------
    ModelFolderError naming the file when a plans path does not exist, is not JSON, has no
    ``configurations``, lacks ``configuration`` or the configuration lacks a required key.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    where = "the plans dictionary"
    if not isinstance(plans, dict):
        where = str(plans)
        if not Path(plans).is_file():
            raise ModelFolderError(f"plans file {plans} does not exist; run nnUNetv2_selma_plan first (it "
                                   f"writes $nnUNet_preprocessed/DatasetXXX/nnUNetSelmaPlans_<preset>.json)")
        plans = _read_json(Path(plans), "nnU-Net plans, e.g. $nnUNet_preprocessed/DatasetXXX/nnUNetSelmaPlans_cpu.json")
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict):
        raise ModelFolderError(f"{where}: no 'configurations' entry; expected an nnU-Net plans file (written by "
                               f"nnUNetv2_selma_plan or nnUNetv2_plan_experiment), not a dataset.json or another JSON")
    if configuration not in configurations:
        raise ModelFolderError(f"{where}: configuration {configuration!r} is not in the plans; available: "
                               f"{sorted(configurations)}")
    manager = PlansManager(plans)
    try:
        config = manager.get_configuration(configuration)
        missing = [k for k in _REQUIRED_CONFIGURATION_KEYS if k not in config.configuration]
    except (KeyError, TypeError) as e:
        raise ModelFolderError(f"{where}: configuration {configuration!r} is incomplete (missing {e}); re-plan "
                               f"with nnUNetv2_selma_plan") from e
    if missing:
        raise ModelFolderError(f"{where}: configuration {configuration!r} has no {', '.join(missing)}; re-plan with "
                               f"nnUNetv2_selma_plan")
    return manager, config


# ----------------------------------------------------------------------------------------------
# the model folder: files, folds, checkpoints
# ----------------------------------------------------------------------------------------------
def folds_with_checkpoint(folder: str | Path, checkpoint_name: str = "checkpoint_final.pth") -> list[int | str]:
    """The folds of ``folder`` that hold ``checkpoint_name`` (ints, or names such as ``"all"``), sorted by folder."""
    folds = []
    for sub in sorted(Path(folder).glob("fold_*")):
        if (sub / checkpoint_name).is_file():
            tail = sub.name[len("fold_"):]
            folds.append(int(tail) if tail.isdigit() else tail)
    return folds


def check_model_folder(folder: str | Path, folds: Sequence[int | str] | None = None,
                       checkpoint_name: str = "checkpoint_final.pth") -> list[int | str]:
    """Check that ``folder`` holds ``plans.json``, ``dataset.json`` and ``checkpoint_name`` in each of ``folds``
    (``None``: every fold that has one, at least one); returns the folds. Reads no file.

    Raises
    ------
    ModelFolderError naming the missing file or the folds without a checkpoint.
    """
    folder = Path(folder)
    for name in MODEL_FILES:
        if not (folder / name).is_file():
            raise ModelFolderError(f"{folder / name} is missing; expected an nnU-Net model folder (plans.json, "
                                   f"dataset.json, fold_N/{checkpoint_name}) like {EXAMPLE_MODEL_FOLDER}")
    available = folds_with_checkpoint(folder, checkpoint_name)
    chosen = list(folds) if folds is not None else available
    absent = [f for f in chosen if not (folder / f"fold_{f}" / checkpoint_name).is_file()]
    if not chosen or absent:
        raise ModelFolderError(f"model folder {folder}: folds {absent or chosen} have no {checkpoint_name}; "
                               f"expected fold_N/{checkpoint_name} for each fold asked for (folds with one: "
                               f"{available or 'none'})")
    return chosen


def unreadable_checkpoint(where: str | Path, error: BaseException, remedy: str | None = None) -> ModelFolderError:
    """The error for a checkpoint (or several, ``where`` joined) that ``torch.load`` could not read; ``remedy``:
    the last sentence, what the user should do."""
    remedy = remedy or "Copy it again (compare its size) or pick another checkpoint."
    reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0]  # torch's first sentence says it all
    return ModelFolderError(f"{where}: unreadable nnU-Net checkpoint ({type(error).__name__}: {reason}); the file "
                            f"is truncated, corrupted or not a checkpoint of nnUNetv2_train. {remedy}")


@dataclass(frozen=True)
class ModelConfiguration:
    """What nnU-Net's predictor builds from a model folder, without loading the network."""

    plans_manager: Any
    configuration_manager: Any
    dataset_json: dict
    configuration_name: str

    @property
    def label_manager(self):
        return self.plans_manager.get_label_manager(self.dataset_json)

    @property
    def num_input_channels(self) -> int:
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        return int(determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json))


def read_model_folder(folder: str | Path, folds: Sequence[int | str] = (0,),
                      checkpoint_name: str = "checkpoint_final.pth", remedy: str | None = None) -> ModelConfiguration:
    """The :class:`ModelConfiguration` of a checked model folder, with the configuration taken from the first
    fold's checkpoint as ``nnUNetPredictor`` does (``remedy``: as :func:`unreadable_checkpoint`)."""
    import torch

    folder = Path(folder)
    folds = check_model_folder(folder, folds, checkpoint_name)
    checkpoint_path = folder / f"fold_{folds[0]}" / checkpoint_name
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        configuration_name = checkpoint["init_args"]["configuration"]
    except UNREADABLE_CHECKPOINT as e:
        raise unreadable_checkpoint(checkpoint_path, e, remedy) from e
    plans_manager, configuration_manager = read_plans_configuration(folder / "plans.json", configuration_name)
    dataset_json = _read_json(folder / "dataset.json", "nnU-Net's dataset.json (channel_names, labels, ...)")
    return ModelConfiguration(plans_manager, configuration_manager, dataset_json, configuration_name)


__all__ = ["EXAMPLE_MODEL_FOLDER", "MODEL_FILES", "UNREADABLE_CHECKPOINT", "ModelConfiguration", "ModelFolderError",
           "check_model_folder", "folds_with_checkpoint", "read_model_folder", "read_plans_configuration",
           "unreadable_checkpoint"]

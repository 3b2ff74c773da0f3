"""Build the one network of nnunetv2-selma from nnU-Net plans (design decision 1).

Pretraining, fine-tuning and inference all build their network here, through nnU-Net's own
``PlansManager`` and ``get_network_from_plans``, so that the tensors a pretraining run saves
have exactly the names and shapes ``nnUNetv2_train`` expects. The self-supervised stage builds
the same network with ``num_output_channels=1``: its reconstruction head *is* the segmentation
layer, which fine-tuning never transfers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

#: what a configuration of an nnU-Net plans file must hold for the network and the patch sampler
_REQUIRED_CONFIGURATION_KEYS = ("patch_size", "architecture")


def read_plans_configuration(plans: dict | str | Path, configuration: str = "3d_fullres"):
    """``(PlansManager, ConfigurationManager)`` of ``configuration`` in the plans, checked at the door.

    nnU-Net's ``PlansManager`` reports a malformed plans file as a bare ``KeyError: 'configurations'``
    or a JSON position; here every problem names the file and what was expected.

    Raises
    ------
    FileNotFoundError when a plans path does not exist; ValueError naming the file when it is not
    JSON, has no ``configurations``, lacks ``configuration`` or the configuration lacks a required key.
    """
    where = "the plans dictionary"
    if not isinstance(plans, dict):
        where = str(plans)
        if not Path(plans).is_file():
            raise FileNotFoundError(f"plans file {plans} does not exist; run nnUNetv2_selma_plan first (it "
                                    f"writes $nnUNet_preprocessed/DatasetXXX/nnUNetSelmaPlans_<preset>.json)")
        try:
            plans = json.loads(Path(plans).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{where}: not a JSON plans file ({e}); expected nnU-Net plans, e.g. "
                             f"$nnUNet_preprocessed/DatasetXXX/nnUNetSelmaPlans_cpu.json") from e
    configurations = plans.get("configurations") if isinstance(plans, dict) else None
    if not isinstance(configurations, dict):
        raise ValueError(f"{where}: no 'configurations' entry; expected an nnU-Net plans file (written by "
                         f"nnUNetv2_selma_plan or nnUNetv2_plan_experiment), not a dataset.json or another JSON")
    if configuration not in configurations:
        raise ValueError(f"{where}: configuration {configuration!r} is not in the plans; available: "
                         f"{sorted(configurations)}")
    manager = PlansManager(plans)
    try:
        config = manager.get_configuration(configuration)
        missing = [k for k in _REQUIRED_CONFIGURATION_KEYS if k not in config.configuration]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: configuration {configuration!r} is incomplete (missing {e}); re-plan with "
                         f"nnUNetv2_selma_plan") from e
    if missing:
        raise ValueError(f"{where}: configuration {configuration!r} has no {', '.join(missing)}; re-plan with "
                         f"nnUNetv2_selma_plan")
    return manager, config


def build_network(
    plans: dict | str | Path,
    configuration: str = "3d_fullres",
    num_input_channels: int = 1,
    num_output_channels: int = 2,
    deep_supervision: bool = False,
) -> torch.nn.Module:
    """Instantiate the network that ``plans`` describe for ``configuration``.

    Parameters
    ----------
    plans : dict, str or Path
        An nnU-Net plans dictionary or the path of a plans ``.json`` file (for example
        ``$nnUNet_preprocessed/Dataset520_X/nnUNetSelmaPlans_cpu.json``).
    configuration : str
        Configuration in the plans; SELMA plans only hold ``"3d_fullres"``.
    num_input_channels : int
        Image channels (1 for most SELMA3D structures, 2 for ``VessAP_vessel``).
    num_output_channels : int
        Segmentation heads: number of classes (2 for background/foreground), or 1 for the
        reconstruction head of self-supervised pretraining.
    deep_supervision : bool
        Whether ``forward`` returns one output per decoder stage (nnU-Net training) or only the
        full-resolution one (pretraining, inference). The parameters are the same either way.

    Returns
    -------
    torch.nn.Module
        Freshly initialised network on the CPU, in training mode. For an input of shape
        ``(B, num_input_channels, *patch_size)`` (float32) it returns
        ``(B, num_output_channels, *patch_size)``.

    Raises
    ------
    FileNotFoundError
        If ``plans`` is a path that does not exist.
    ValueError
        If ``configuration`` is not in the plans, or a channel count is below 1.
    """
    if num_input_channels < 1 or num_output_channels < 1:
        raise ValueError(
            f"build_network: channel counts must be >= 1, got num_input_channels={num_input_channels}, "
            f"num_output_channels={num_output_channels}"
        )
    _, config = read_plans_configuration(plans, configuration)
    return get_network_from_plans(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=deep_supervision,
    )

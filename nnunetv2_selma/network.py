"""Build the one network of nnunetv2-selma from nnU-Net plans.

Pretraining, fine-tuning and inference all build their network here, through nnU-Net's own
``PlansManager`` and ``get_network_from_plans``, so that the tensors a pretraining run saves
have exactly the names and shapes ``nnUNetv2_train`` expects. The self-supervised stage builds
the same network with ``num_output_channels=1``: its reconstruction head *is* the segmentation
layer, which fine-tuning never transfers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunetv2_selma.model_folder import read_plans_configuration


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
    ModelFolderError (a ValueError)
        If ``plans`` is a path that does not exist or is not nnU-Net plans, or ``configuration`` is not in them.
    ValueError
        If a channel count is below 1.
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

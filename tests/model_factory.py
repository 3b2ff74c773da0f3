"""A real, tiny, untrained nnU-Net v2 model folder for tests that need one.

:func:`make_model_folder` writes what ``nnUNetv2_train`` would leave behind for a 3D full-resolution
ResEnc U-Net -- ``dataset.json``, ``plans.json`` (nnU-Net 2.8.1's format, written by hand to match
``ResEncUNetPlanner``) and ``fold_X/checkpoint_final.pth`` with the keys ``nnUNetPredictor`` reads --
without training anything. Weights are nnU-Net's own initialisation under ``torch.manual_seed(seed)``,
so the same arguments give bit-identical weights. The last segmentation layer is biased so that about
``foreground_fraction`` of the voxels of a typical (normalised) image are predicted as foreground:
outputs are then neither all background nor all foreground, which geometry and shape tests need.

Untrained but real: good for geometry, shape, I/O and packaging tests, not for quality tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from nnunetv2_selma.training.planner import SelmaPreset

CONFIGURATION = "3d_fullres"
FEATURES_PER_STAGE = (8, 16, 32)


def _plans(dataset_name: str, plans_name: str, patch_size: Sequence[int], num_channels: int) -> dict:
    """plans.json for a 3-stage ResEnc U-Net at spacing 1, as ``ResEncUNetPlanner`` would write it."""
    n_stages = len(FEATURES_PER_STAGE)
    patch_size = [int(p) for p in patch_size]
    for p in patch_size:
        if p % 2 ** (n_stages - 1):
            raise ValueError(f"patch_size {patch_size}: every edge must be divisible by {2 ** (n_stages - 1)}")
    intensity = {"max": 1000.0, "mean": 100.0, "median": 90.0, "min": 0.0, "percentile_00_5": 1.0,
                 "percentile_99_5": 900.0, "std": 50.0}
    resampling_kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    fullres = {
        "data_identifier": f"nnUNetPlans_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": patch_size,
        "median_image_size_in_voxels": [max(p * 2, 64) for p in patch_size],
        "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["ZScoreNormalization"] * num_channels,
        "use_mask_for_norm": [False] * num_channels,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": resampling_kwargs,
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                               "force_separate_z": None},
        # the topology of a SELMA preset, smaller: the same builder the plans preset uses
        "architecture": SelmaPreset("test", tuple(patch_size), tuple(FEATURES_PER_STAGE),
                                    (1, 2, 2)[:n_stages], 2, "test model").architecture(),
        "batch_dice": True,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": fullres["median_image_size_in_voxels"],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: fullres},
        "experiment_planner_used": "ResEncUNetPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): dict(intensity) for c in range(num_channels)},
    }


def _dataset_json(num_channels: int) -> dict:
    return {
        "channel_names": {str(c): f"LSM{c}" for c in range(num_channels)},
        "labels": {"background": 0, "structure": 1},
        "numTraining": 4,
        "file_ending": ".nii.gz",
        "name": "SELMA3D tiny test model",
    }


def _calibrate_foreground(network: torch.nn.Module, patch_size: Sequence[int], num_channels: int,
                          foreground_fraction: float, seed: int) -> None:
    """Shift the final seg layer's bias so ~``foreground_fraction`` of voxels of a random image are foreground."""
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((1, num_channels, *patch_size), generator=generator)
    network.eval()
    with torch.no_grad():
        logits = network(x)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        margin = (logits[0, 1] - logits[0, 0]).flatten()
        threshold = torch.quantile(margin, 1.0 - foreground_fraction)
        seg_layer = network.decoder.seg_layers[-1]
        seg_layer.bias[1] -= threshold / 2
        seg_layer.bias[0] += threshold / 2


def make_model_folder(results_root: Path, dataset_name: str = "Dataset580_SELMAtiny", num_channels: int = 1,
                      patch_size: Sequence[int] = (16, 32, 32), folds: Sequence[int | str] = (0,), seed: int = 0,
                      trainer: str = "nnUNetTrainer", plans: str = "nnUNetPlans",
                      foreground_fraction: float = 0.3) -> Path:
    """Write a loadable, untrained nnU-Net model folder and return its path.

    Parameters
    ----------
    results_root : Path
        Root under which ``<dataset_name>/<trainer>__<plans>__3d_fullres/`` is created (e.g. ``nnUNet_results``).
    dataset_name : str
        ``DatasetNNN_Name``; written into plans.json.
    num_channels : int
        Number of input channels (``_0000``, ``_0001``, ...).
    patch_size : sequence of 3 ints
        (z, y, x) patch size; each edge divisible by 4 (3 stages).
    folds : sequence of int or ``"all"``
        One ``fold_X/checkpoint_final.pth`` per entry; fold ``i`` of the sequence gets seed ``seed + i``.
    seed : int
        ``torch.manual_seed`` used before initialising the network: same arguments, same weights.
    trainer : str
        Trainer class name stored in the checkpoint; must be findable by nnU-Net at predict time.
    plans : str
        Plans identifier (folder name part and ``plans_name``).
    foreground_fraction : float in (0, 1)
        Approximate fraction of foreground voxels predicted for a normalised random image.

    Returns
    -------
    Path of the model folder, ready for ``nnUNetPredictor.initialize_from_trained_model_folder``.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    if not 0.0 < foreground_fraction < 1.0:
        raise ValueError(f"foreground_fraction {foreground_fraction}: expected a value in (0, 1)")
    folder = Path(results_root) / dataset_name / f"{trainer}__{plans}__{CONFIGURATION}"
    folder.mkdir(parents=True, exist_ok=True)
    plans_dict = _plans(dataset_name, plans, patch_size, num_channels)
    dataset_json = _dataset_json(num_channels)
    (folder / "plans.json").write_text(json.dumps(plans_dict, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    architecture = plans_dict["configurations"][CONFIGURATION]["architecture"]
    for i, fold in enumerate(folds):
        torch.manual_seed(seed + i)
        np.random.seed(seed + i)
        network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                         architecture["_kw_requires_import"], num_channels, 2,
                                         allow_init=True, deep_supervision=False)
        _calibrate_foreground(network, patch_size, num_channels, foreground_fraction, seed + i)
        checkpoint = {
            "network_weights": network.state_dict(),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": None,
            "_best_ema": None,
            "current_epoch": 0,
            "init_args": {"plans": plans_dict, "configuration": CONFIGURATION, "fold": fold,
                          "dataset_json": dataset_json, "device": torch.device("cpu")},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": (0, 1, 2),
        }
        fold_dir = folder / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        tmp = fold_dir / "checkpoint_final.pth.partial"
        torch.save(checkpoint, tmp)
        tmp.replace(fold_dir / "checkpoint_final.pth")
    return folder

"""The SELMA plans preset: one network, one patch size, one normalisation for every dataset.

SELMA3D gives no physical spacing and its structures come as patches of different shapes
(200^3 nuclei, 500x500x50 vessels, 100^3 c-Fos...). nnU-Net's default planner would pick a
different spacing, patch size and topology per dataset, so one pretrained checkpoint could
not serve them all. The planners here fix, for every dataset and for pretraining:

* spacing 1 in every axis, identity transpose, no resampling (``no_resampling_hack``);
* the one normalisation of :mod:`nnunetv2_selma.normalization` (``ZScoreNormalization`` per case, no mask),
  so pretraining, fine-tuning and inference see the same intensities;
* one residual-encoder U-Net (``ResidualEncoderUNet`` of dynamic-network-architectures)
  whose size, patch size and batch size come from a named preset (:data:`PRESETS`).

nnU-Net only looks planners up inside ``nnunetv2`` (``-pl`` cannot name ours), so
:func:`plan_and_preprocess` drives nnU-Net's Python API: fingerprint extraction
(``extract_fingerprints``), planning (``plan_experiment_dataset`` with our class) and
preprocessing (``preprocess_dataset`` with the ``DefaultPreprocessor``). Plans are written as
``nnUNetSelmaPlans_<preset>.json``, next to (never over) nnU-Net's own ``nnUNetPlans.json``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.preprocessing.resampling.no_resampling import no_resampling_hack

from nnunetv2_selma.normalization import NORMALIZATION_SCHEME

#: configuration name of SELMA plans (the only one they contain)
CONFIGURATION = "3d_fullres"


@dataclass(frozen=True)
class SelmaPreset:
    """Size of the one SELMA network.

    Attributes
    ----------
    name : str
        Preset name, part of the plans identifier ``nnUNetSelmaPlans_<name>``.
    patch_size : tuple of 3 int
        Training patch (z, y, x); divisible by ``2 ** (n_stages - 1)``.
    features_per_stage : tuple of int
        Feature maps per encoder stage (its length is the number of stages).
    n_blocks_per_stage : tuple of int
        Residual blocks per encoder stage.
    batch_size : int
        Training batch size (per GPU before nnU-Net's DDP split).
    description : str
        What the preset is for.
    """

    name: str
    patch_size: tuple[int, int, int]
    features_per_stage: tuple[int, ...]
    n_blocks_per_stage: tuple[int, ...]
    batch_size: int
    description: str

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    def architecture(self) -> dict:
        """The ``architecture`` entry of an nnU-Net plans configuration for this preset."""
        n = self.n_stages
        return {
            "network_class_name": ResidualEncoderUNet.__module__ + "." + ResidualEncoderUNet.__name__,
            "arch_kwargs": {
                "n_stages": n,
                "features_per_stage": list(self.features_per_stage),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                "n_blocks_per_stage": list(self.n_blocks_per_stage),
                "n_conv_per_stage_decoder": [1] * (n - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        }


#: the presets; the network of M and L is nnssl's ResEnc-L (OpenMind) in every hyperparameter
#: (nnunetv2_selma.nnssl_format.RESENC_L_KWARGS; tests/test_foundation.py compares them), L with nnssl's
#: 160^3 pretraining patch.
PRESETS: dict[str, SelmaPreset] = {
    p.name: p
    for p in (
        SelmaPreset("cpu", (32, 32, 32), (8, 16, 32, 64), (1, 1, 2, 2), 2,
                    "tiny network for tests and CPU smoke runs"),
        SelmaPreset("M", (128, 128, 128), (32, 64, 128, 256, 320, 320), (1, 3, 4, 6, 6, 6), 2,
                    "ResEnc-M-like, ~10 GB GPU memory for training"),
        SelmaPreset("L", (160, 160, 160), (32, 64, 128, 256, 320, 320), (1, 3, 4, 6, 6, 6), 2,
                    "nnssl's ResEnc-L (OpenMind checkpoints load), ~24 GB GPU memory for training"),
    )
}


def plans_identifier(preset: str) -> str:
    """Plans name of a preset: ``nnUNetSelmaPlans_<preset>`` (the ``-p`` value of nnU-Net commands)."""
    get_preset(preset)
    return f"nnUNetSelmaPlans_{preset}"


def get_preset(name: str) -> SelmaPreset:
    """The preset called ``name``; ``ValueError`` listing the known presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown SELMA plans preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


class SelmaPlanner(ExperimentPlanner):
    """nnU-Net experiment planner that writes the fixed SELMA plans of one preset.

    Use :func:`planner_class` to get the subclass for a preset (``plan_experiment_dataset``
    instantiates planners with nnU-Net's own arguments, so the preset is a class attribute).
    Only a ``3d_fullres`` configuration is planned.
    """

    preset: ClassVar[SelmaPreset] = PRESETS["cpu"]

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = True):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name,
                         plans_name or plans_identifier(self.preset.name), overwrite_target_spacing,
                         suppress_transpose=True)

    def determine_fullres_target_spacing(self) -> np.ndarray:
        return np.ones(3)

    def determine_transpose(self):
        return [0, 1, 2], [0, 1, 2]

    def determine_resampling(self, *args, **kwargs):
        return no_resampling_hack, {}, no_resampling_hack, {}

    def determine_segmentation_softmax_export_fn(self, *args, **kwargs):
        return no_resampling_hack, {}

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self):
        channels = self.dataset_json.get("channel_names", self.dataset_json.get("modality", {}))
        return [NORMALIZATION_SCHEME] * len(channels), [False] * len(channels)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        resampling_data, data_kwargs, resampling_seg, seg_kwargs = self.determine_resampling()
        resampling_probs, probs_kwargs = self.determine_segmentation_softmax_export_fn()
        schemes, use_mask = self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        return {
            "data_identifier": data_identifier,
            "preprocessor_name": self.preprocessor_name,
            "batch_size": self.preset.batch_size,
            "patch_size": list(self.preset.patch_size),
            "median_image_size_in_voxels": [float(i) for i in median_shape],
            "spacing": [1.0, 1.0, 1.0],
            "normalization_schemes": schemes,
            "use_mask_for_norm": use_mask,
            "resampling_fn_data": resampling_data.__name__,
            "resampling_fn_seg": resampling_seg.__name__,
            "resampling_fn_data_kwargs": data_kwargs,
            "resampling_fn_seg_kwargs": seg_kwargs,
            "resampling_fn_probabilities": resampling_probs.__name__,
            "resampling_fn_probabilities_kwargs": probs_kwargs,
            "architecture": self.preset.architecture(),
            "batch_dice": False,
        }

    def plan_experiment(self) -> dict:
        median_shape = np.median(np.vstack(self.dataset_fingerprint["shapes_after_crop"]), 0)
        config = self.get_plans_for_configuration(
            [1.0, 1.0, 1.0], median_shape, self.generate_data_identifier(CONFIGURATION), 0.0, {}
        )
        if any(m < p for m, p in zip(median_shape, self.preset.patch_size)):
            print(f"{self.dataset_name}: median case shape {[int(i) for i in median_shape]} is smaller than the "
                  f"preset patch {list(self.preset.patch_size)} in some axis; nnU-Net pads such cases.")
        preprocessed = join(str(nnUNet_preprocessed), self.dataset_name)
        maybe_mkdir_p(preprocessed)
        shutil.copy(join(self.raw_dataset_folder, "dataset.json"), join(preprocessed, "dataset.json"))
        plans = {
            "dataset_name": self.dataset_name,
            "plans_name": self.plans_identifier,
            "original_median_spacing_after_transp": [
                float(i) for i in np.median(np.vstack(self.dataset_fingerprint["spacings"]), 0)
            ],
            "original_median_shape_after_transp": [int(round(i)) for i in median_shape],
            "image_reader_writer": self.determine_reader_writer().__name__,
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {CONFIGURATION: config},
            "experiment_planner_used": self.__class__.__name__,
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": self.dataset_fingerprint[
                "foreground_intensity_properties_per_channel"
            ],
            "selma_preset": self.preset.name,
        }
        self.plans = plans
        self.save_plans(plans)
        return plans


def planner_class(preset: str) -> type[SelmaPlanner]:
    """The :class:`SelmaPlanner` subclass for ``preset`` (named ``nnUNetPlannerSelma_<preset>``)."""
    return _PLANNERS[get_preset(preset).name]


_PLANNERS: dict[str, type[SelmaPlanner]] = {
    name: type(f"nnUNetPlannerSelma_{name}", (SelmaPlanner,), {"preset": p, "__module__": __name__})
    for name, p in PRESETS.items()
}


def plan_and_preprocess(dataset_ids: list[int], preset: str = "cpu", num_processes: int = 2,
                        verify_dataset_integrity: bool = False, preprocess: bool = True) -> str:
    """Fingerprint, plan with the SELMA preset and preprocess every dataset; return the plans identifier.

    Must run under ``if __name__ == "__main__":`` (or in a console script): preprocessing
    starts worker processes.

    Parameters
    ----------
    dataset_ids : list of int
        nnU-Net dataset IDs, each with ``$nnUNet_raw/DatasetXXX_*/dataset.json``.
    preset : str
        Key of :data:`PRESETS`.
    num_processes : int
        Worker processes for fingerprinting and preprocessing.
    verify_dataset_integrity : bool
        Run nnU-Net's dataset check before fingerprinting.
    preprocess : bool
        Also write the preprocessed ``3d_fullres`` data.

    Returns
    -------
    str
        ``nnUNetSelmaPlans_<preset>`` -- pass it as ``-p`` to ``nnUNetv2_train`` / ``nnUNetv2_predict``.
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiment_dataset,
        preprocess_dataset,
    )

    cls = planner_class(preset)
    identifier = plans_identifier(preset)
    extract_fingerprints(list(dataset_ids), num_processes=num_processes,
                         check_dataset_integrity=verify_dataset_integrity)
    for dataset_id in dataset_ids:
        plan_experiment_dataset(dataset_id, cls)
        if preprocess:
            preprocess_dataset(dataset_id, identifier, configurations=(CONFIGURATION,),
                               num_processes=(num_processes,))
    return identifier

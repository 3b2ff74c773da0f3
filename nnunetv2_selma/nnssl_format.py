"""nnssl's checkpoint format (OpenMind foundation models): its adaptation plan, read and written.

nnssl (MIC-DKFZ/nnssl) saves a pretraining run as ``checkpoint_final.pth``, a dict with
``network_weights`` (the whole U-Net state dict; the decoder holds a reference to the encoder,
so every encoder tensor appears a second time as ``decoder.encoder.*``), ``nnssl_adaptation_plan``
(below), ``trainer_name``, ``init_args``, ``optimizer_state``, ``grad_scaler_state``, ``logging``,
``_best_ema`` and ``current_epoch`` (``AbstractTrainer.save_checkpoint``). The adaptation plan
(``nnssl.adaptation_planning.adaptation_plan.AdaptationPlan.serialize``) holds:

* ``architecture_plans``: ``arch_class_name`` (``"ResEncL"``, ``"NoSkipResEncL"``, ``"PrimusS/B/M/L"``,
  ``"ResidualEncoderUNet"``, ``"PlainConvUNet"``), ``arch_kwargs`` (null for the named presets) and
  ``arch_kwargs_requiring_import``;
* ``pretrain_plan``: nnssl's plans with one configuration (spacing, patch size, normalisation
  schemes...);
* ``pretrain_num_input_channels``, ``recommended_downstream_patchsize``;
* ``key_to_encoder`` / ``key_to_stem`` / ``keys_to_in_proj`` / ``key_to_lpe``: where encoder, stem,
  first convolution and learnable positional embedding sit in ``network_weights``.

This module owns that format for nnunetv2-selma: :func:`check_adaptation_plan` compares a plan's
network with the network of our plans hyperparameter by hyperparameter, :func:`make_adaptation_plan`
writes one for our checkpoints and :func:`export_nnssl_checkpoint` writes our checkpoints in nnssl's format.
Reading and recognising the files is :mod:`nnunetv2_selma.checkpoint_io`'s job;
:mod:`nnunetv2_selma.checkpoints` loads nnssl checkpoints through this module.
"""

from __future__ import annotations

import json
import os
import pydoc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from nnunetv2_selma.checkpoint_io import (
    PLAN_KEY,
    PretrainedCheckpoint,
    atomic_torch_save,
    cpu_state_dict,
    read_checkpoint,
    share_aliases,
    without_heads,
)
from nnunetv2_selma.model_folder import read_plans_configuration

#: where stem, encoder and first convolution sit in dynamic-network-architectures' ResidualEncoderUNet
#: (its class attributes ``key_to_stem``, ``key_to_encoder``, ``keys_to_in_proj``; nnssl writes the same)
KEY_TO_STEM = "encoder.stem"
KEY_TO_ENCODER = "encoder.stages"
KEYS_TO_IN_PROJ = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")

#: nnssl's "ResEncL" (``nnssl.architectures.architecture_registry.get_res_enc_l``): the network of the
#: OpenMind CNN checkpoints, as ResidualEncoderUNet keyword arguments (the rest are DNA's defaults)
RESENC_L_KWARGS: dict[str, Any] = {
    "n_stages": 6,
    "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3]] * 6,
    "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
    "n_blocks_per_stage": [1, 3, 4, 6, 6, 6],
    "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-5, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.modules.activation.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}
RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
#: nnssl architecture names whose encoder is ResEnc-L (NoSkipResEncL differs in its decoder only)
RESENC_L_NAMES = ("ResEncL", "NoSkipResEncL")
PRIMUS_NAMES = ("PrimusS", "PrimusB", "PrimusM", "PrimusL")

#: encoder hyperparameters, in the order they are compared: a difference is an error
_ENCODER_HYPERPARAMETERS = (
    "n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_blocks_per_stage", "conv_bias",
    "norm_op", "norm_op_kwargs", "nonlin", "nonlin_kwargs", "dropout_op", "dropout_op_kwargs", "block",
    "bottleneck_channels", "stem_channels",
)
#: decoder hyperparameters: only noted (the decoder is not transferred from an nnssl checkpoint)
_DECODER_HYPERPARAMETERS = ("n_conv_per_stage_decoder",)
_DNA_DEFAULTS = {"block": "dynamic_network_architectures.building_blocks.residual.BasicBlockD",
                 "bottleneck_channels": None, "stem_channels": None, "dropout_op": None, "dropout_op_kwargs": None}
#: keyword arguments that do not change what the weights compute
_IGNORED_KWARGS = ("inplace",)


class NnsslPlanError(ValueError):
    """An nnssl adaptation plan that nnunetv2-selma cannot use; the message says why and what to do."""


def _resolve(value: Any) -> Any:
    """A class named by a dotted path (``torch.nn.LeakyReLU``) or given as a class -> the class."""
    if isinstance(value, str) and "." in value:
        located = pydoc.locate(value)
        return located if located is not None else value
    return value


def _per_stage(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _per_stage_per_axis(value: Any, n: int) -> list[list[int]]:
    stages = _per_stage(value, n)
    return [[int(v)] * 3 if not isinstance(v, (list, tuple)) else [int(x) for x in v] for v in stages]


def _drop_ignored(kwargs: Any) -> Any:
    if not isinstance(kwargs, Mapping):
        return kwargs
    return {k: (float(v) if isinstance(v, float) else v) for k, v in kwargs.items() if k not in _IGNORED_KWARGS}


def canonical_hyperparameters(arch_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """ResidualEncoderUNet keyword arguments in one comparable form.

    Classes given as dotted paths or class objects become classes (``torch.nn.LeakyReLU`` and
    ``torch.nn.modules.activation.LeakyReLU`` are equal), per-stage scalars become lists, kernel
    sizes and strides become per-axis lists, DNA's defaults fill what is missing and ``inplace``
    (no effect on the weights) is dropped.
    """
    n = int(arch_kwargs["n_stages"])
    out = {**_DNA_DEFAULTS, **dict(arch_kwargs)}
    out["n_stages"] = n
    out["features_per_stage"] = [int(f) for f in _per_stage(out["features_per_stage"], n)]
    out["n_blocks_per_stage"] = [int(b) for b in _per_stage(out["n_blocks_per_stage"], n)]
    out["n_conv_per_stage_decoder"] = [int(c) for c in _per_stage(out["n_conv_per_stage_decoder"], n - 1)]
    out["kernel_sizes"] = _per_stage_per_axis(out["kernel_sizes"], n)
    out["strides"] = _per_stage_per_axis(out["strides"], n)
    out["conv_bias"] = bool(out.get("conv_bias", False))
    for key in ("conv_op", "norm_op", "nonlin", "dropout_op", "block"):
        out[key] = _resolve(out[key])
    for key in ("norm_op_kwargs", "nonlin_kwargs", "dropout_op_kwargs"):
        out[key] = _drop_ignored(out.get(key))
    if out["stem_channels"] is None:
        out["stem_channels"] = out["features_per_stage"][0]
    return out


def _describe(value: Any) -> Any:
    return f"{value.__module__}.{value.__name__}" if isinstance(value, type) else value


def plan_hyperparameters(plan: Mapping[str, Any], where: str = "the checkpoint") -> dict[str, Any]:
    """The ResidualEncoderUNet hyperparameters of an nnssl adaptation plan, canonical.

    Raises
    ------
    NnsslPlanError
        For a Primus (transformer) plan, an architecture other than a residual-encoder U-Net, or a
        plan without ``architecture_plans``.
    """
    arch = plan.get("architecture_plans")
    if not isinstance(arch, Mapping) or "arch_class_name" not in arch:
        raise NnsslPlanError(f"{where}: the nnssl adaptation plan has no 'architecture_plans' / 'arch_class_name' "
                             f"(found keys {sorted(plan)}); it is not a plan written by nnssl")
    name = str(arch["arch_class_name"])
    short = name.rsplit(".", 1)[-1]
    if short in PRIMUS_NAMES or short.startswith("Primus"):
        raise NnsslPlanError(
            f"{where}: a {name} checkpoint is a transformer (Primus: an EVA encoder on 8x8x8 patch tokens with a "
            f"learnable positional embedding sized to the pretraining patch); nnunetv2-selma fine-tunes the "
            f"residual-encoder U-Net of its plans, which has no tensor in common with it. Use an OpenMind ResEnc-L "
            f"checkpoint (arch_class_name 'ResEncL') with plans of preset L, or fine-tune Primus with nnU-Net "
            f"master's nnUNetv2_train_pretrained (PretrainedTrainer_Primusx).")
    if short in RESENC_L_NAMES:
        kwargs = RESENC_L_KWARGS
    elif short == "ResidualEncoderUNet" and isinstance(arch.get("arch_kwargs"), Mapping):
        kwargs = arch["arch_kwargs"]
    else:
        raise NnsslPlanError(
            f"{where}: nnssl architecture {name!r} is not a residual-encoder U-Net (expected 'ResEncL', "
            f"'NoSkipResEncL' or 'ResidualEncoderUNet' with arch_kwargs); nnunetv2-selma's network is "
            f"dynamic-network-architectures' ResidualEncoderUNet, so this checkpoint cannot be loaded")
    try:
        return canonical_hyperparameters(kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise NnsslPlanError(f"{where}: nnssl architecture {name!r} has incomplete arch_kwargs ({e!r})") from None


def compare_hyperparameters(
    checkpoint: Mapping[str, Any], ours: Mapping[str, Any], where: str = "the checkpoint"
) -> list[str]:
    """Compare canonical hyperparameters; raise on the first encoder difference, return decoder notes.

    Raises
    ------
    NnsslPlanError
        Naming the first encoder hyperparameter that differs, with both values.
    """
    for key in _ENCODER_HYPERPARAMETERS:
        if checkpoint.get(key) != ours.get(key):
            raise NnsslPlanError(
                f"{where}: the pretrained network differs from this plans' network in {key}: checkpoint "
                f"{_describe(checkpoint.get(key))!r}, plans {_describe(ours.get(key))!r}. nnssl's ResEnc-L "
                f"(OpenMind) is the network of preset L: plan with nnUNetv2_selma_plan --preset L and train with "
                f"-p nnUNetSelmaPlans_L.")
    return [f"decoder hyperparameter {key} differs (checkpoint {checkpoint.get(key)}, plans {ours.get(key)}); "
            f"irrelevant, the decoder is not transferred" for key in _DECODER_HYPERPARAMETERS
            if checkpoint.get(key) != ours.get(key)]


def check_adaptation_plan(
    plan: Mapping[str, Any], network_class_name: str | None, arch_kwargs: Mapping[str, Any] | None,
    where: str = "the checkpoint",
) -> list[str]:
    """Check an nnssl adaptation plan against the network of our plans, hyperparameter by hyperparameter.

    Parameters
    ----------
    plan : mapping
        ``checkpoint["nnssl_adaptation_plan"]`` (or the published ``adaptation_plan.json``).
    network_class_name, arch_kwargs : str, mapping
        ``configurations[...]["architecture"]["network_class_name"]`` / ``["arch_kwargs"]`` of our plans.
    where : str
        Name of the checkpoint for messages.

    Returns
    -------
    list of str
        Notes on differences that do not matter for stem + encoder loading (decoder, patch size).

    Raises
    ------
    NnsslPlanError
        Primus or another non-ResEnc architecture; our plans not a ResidualEncoderUNet; the first
        encoder hyperparameter that differs (named, with both values).
    """
    theirs = plan_hyperparameters(plan, where)
    if network_class_name is None or arch_kwargs is None:
        return ["no plans given: the adaptation plan was checked by tensor shapes only"]
    if network_class_name.rsplit(".", 1)[-1] != "ResidualEncoderUNet":
        raise NnsslPlanError(f"{where}: the plans' network is {network_class_name}, but nnssl CNN checkpoints hold a "
                             f"ResidualEncoderUNet; plan with nnUNetv2_selma_plan --preset L")
    notes = compare_hyperparameters(theirs, canonical_hyperparameters(arch_kwargs), where)
    return notes


def pretrain_configuration(plan: Mapping[str, Any]) -> tuple[str, dict]:
    """``(name, configuration)`` of the one configuration of the plan's ``pretrain_plan`` (``("", {})`` if none)."""
    configurations = (plan.get("pretrain_plan") or {}).get("configurations") or {}
    if not configurations:
        return "", {}
    name = next(iter(configurations))
    return name, dict(configurations[name] or {})


def pretrain_spacing(plan: Mapping[str, Any]) -> list[float] | None:
    """The spacing the plan's pretraining data was resampled to, or None when it was not resampled.

    nnssl writes spacing None with spacing style ``"noresample"``; exports of nnunetv2-selma before
    it wrote ``[1, 1, 1]`` with that style: both read as None. A plan without a configuration or
    without a spacing also gives None.
    """
    _, config = pretrain_configuration(plan)
    spacing = config.get("spacing")
    if config.get("spacing_style") == "noresample" or spacing is None:
        return None
    return [float(s) for s in spacing]


def is_resenc_l(arch_kwargs: Mapping[str, Any]) -> bool:
    """Whether ResidualEncoderUNet kwargs are nnssl's ResEnc-L in every hyperparameter."""
    ours = canonical_hyperparameters(arch_kwargs)
    ref = canonical_hyperparameters(RESENC_L_KWARGS)
    return all(ours.get(k) == ref.get(k) for k in _ENCODER_HYPERPARAMETERS + _DECODER_HYPERPARAMETERS)


def make_adaptation_plan(
    arch_kwargs: Mapping[str, Any],
    patch_size: Sequence[int],
    num_input_channels: int = 1,
    configuration: str = "3d_fullres",
    normalization_schemes: Sequence[str] = ("ZScoreNormalization",),
    plans_name: str = "nnUNetSelmaPlans",
    dataset_name: str = "SELMA3D_pretraining_store",
) -> dict[str, Any]:
    """An nnssl adaptation plan (``AdaptationPlan.serialize()`` layout) for a network of our plans.

    A network equal to ResEnc-L in every hyperparameter is written as nnssl names it (``"ResEncL"``,
    ``arch_kwargs`` null, like the published OpenMind plans), so nnU-Net master builds it by name;
    any other ResidualEncoderUNet as ``"ResidualEncoderUNet"`` with its full ``arch_kwargs`` (nnssl's
    ``DynamicArchitecturePlans`` fields). The ``pretrain_plan`` has every field nnssl's ``Plan`` /
    ``ConfigurationPlan.from_dict`` require; spacing style ``"noresample"`` (SELMA plans never
    resample) with spacing None, as nnssl's planner writes it (:func:`pretrain_spacing` reads both
    this and the ``[1, 1, 1]`` of earlier exports). Only plain Python types: loadable with
    ``torch.load(weights_only=True)``.
    """
    fields = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_blocks_per_stage",
              "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
              "dropout_op_kwargs", "nonlin", "nonlin_kwargs")
    if is_resenc_l(arch_kwargs):
        architecture = {"arch_class_name": "ResEncL", "arch_kwargs": None, "arch_kwargs_requiring_import": None}
    else:
        canonical = canonical_hyperparameters(arch_kwargs)
        custom = [k for k, default in (("block", _resolve(_DNA_DEFAULTS["block"])), ("bottleneck_channels", None),
                                       ("stem_channels", canonical["features_per_stage"][0]))
                  if canonical[k] != default]
        if custom:
            raise NnsslPlanError(f"the network sets {custom} to other than dynamic-network-architectures' defaults; "
                                 f"nnssl's adaptation plan (DynamicArchitecturePlans) cannot describe them")
        kwargs = {}
        for key in fields:
            value = canonical[key]
            kwargs[key] = _describe(value) if isinstance(value, type) else value
        kwargs["nonlin_kwargs"] = dict(arch_kwargs.get("nonlin_kwargs") or {})
        kwargs["norm_op_kwargs"] = dict(arch_kwargs.get("norm_op_kwargs") or {})
        requiring_import = [k for k in ("conv_op", "norm_op", "dropout_op", "nonlin") if isinstance(kwargs[k], str)]
        architecture = {"arch_class_name": "ResidualEncoderUNet", "arch_kwargs": kwargs,
                        "arch_kwargs_requiring_import": requiring_import}
    patch = [int(p) for p in patch_size]
    return {
        "architecture_plans": architecture,
        "pretrain_plan": {
            "dataset_name": dataset_name,
            "plans_name": plans_name,
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
            "image_reader_writer": "Tiff3DIO",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {configuration: {
                "data_identifier": f"{plans_name}_{configuration}",
                "preprocessor_name": "DefaultPreprocessor",
                "spacing_style": "noresample",
                "normalization_schemes": list(normalization_schemes),
                "use_mask_for_norm": [False] * len(normalization_schemes),
                "resampling_fn_data": "no_resampling_hack",
                "resampling_fn_data_kwargs": {},
                "resampling_fn_mask": "no_resampling_hack",
                "resampling_fn_mask_kwargs": {},
                # nnssl's planner writes None for noresample; a number here makes nnU-Net master's
                # nnUNetv2_preprocess_like_nnssl -am like_pretrained resample the user's data to it
                "spacing": None,
                "patch_size": patch,
            }},
            "experiment_planner_used": "SelmaPlanner",
        },
        "pretrain_num_input_channels": int(num_input_channels),
        "recommended_downstream_patchsize": patch,
        "key_to_encoder": KEY_TO_ENCODER,
        "key_to_stem": KEY_TO_STEM,
        "keys_to_in_proj": list(KEYS_TO_IN_PROJ),
        "key_to_lpe": None,
    }


def check_export_destination(source: str | PathLike, destination: str | PathLike, overwrite: bool = False) -> None:
    """Refuse a destination that would lose a file or cannot be written, before anything is read.

    Raises
    ------
    ValueError
        ``destination`` is the source itself (even with ``overwrite``: the input would be lost), a
        folder, inside a path that is a file, or an existing file without ``overwrite``.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists() and source.exists() and os.path.samefile(source, destination):
        raise ValueError(f"{destination} is the input checkpoint itself; write the export to another file "
                         f"(replacing the input would lose it)")
    if destination.is_dir():
        raise ValueError(f"{destination} is a folder; give the file to write (e.g. "
                         f"{destination / 'checkpoint_nnssl.pth'})")
    blocking = next((p for p in destination.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"{destination}: {blocking} is a file, not a folder; choose an output path in a folder")
    if destination.exists() and not overwrite:
        raise ValueError(f"{destination} already exists; choose a new file or pass --overwrite to replace it")


def export_nnssl_checkpoint(
    source: str | PathLike, destination: str | PathLike, plans: dict | str | PathLike | None = None,
    configuration: str = "3d_fullres", overwrite: bool = False,
) -> dict:
    """Write one of our pretraining checkpoints in nnssl's format, with a correct adaptation plan.

    The output is what nnssl saves (``network_weights`` with the whole network, ``nnssl_adaptation_plan``,
    ``trainer_name``, ``init_args``, ``current_epoch``) plus our ``"selma"`` metadata, in plain types
    only: nnU-Net master's ``nnUNetv2_train_pretrained`` reads it with ``torch.load(weights_only=True)``,
    and :func:`nnunetv2_selma.checkpoints.load_pretrained_weights` reads it back as an nnssl checkpoint.
    Names that share one tensor in the network (``decoder.encoder.*`` and ``encoder.*``) share it in
    the file, as in nnssl's own, also when the source stored them apart. nnssl's entries for resuming
    its own run (``optimizer_state``, ``grad_scaler_state``, ``logging``, ``_best_ema``) are not
    written: the file fine-tunes, it does not continue an nnssl pretraining.

    The checkpoint of an nnU-Net training (a fine-tuned segmentation model) is exported as what it
    is: its own plans, configuration and dataset name in the plan, its trainer's name, and no
    segmentation head (``.seg_layers.``), which belongs to its task.

    Parameters
    ----------
    source : path
        A checkpoint of ``nnUNetv2_selma_pretrain`` (or of the trainer flag's cache), or an nnU-Net
        training's ``checkpoint_final.pth``.
    destination : path
        Output ``.pth`` (written atomically; parent folders created). Never the source.
    plans : plans dict or .json path, optional
        The plans the checkpoint was pretrained with; needed only for checkpoints that do not record
        their architecture (written before nnunetv2-selma 0.1 recorded it, plain state dicts, nnU-Net
        checkpoints without their ``init_args``).
    configuration : str
        Plans configuration (an nnU-Net checkpoint's own is used when it records one).
    overwrite : bool
        Replace an existing ``destination`` (never the source itself).

    Returns
    -------
    dict
        The adaptation plan written.

    Raises
    ------
    ValueError
        The destination is refused (:func:`check_export_destination`); the source is already an nnssl
        checkpoint, records no architecture and no plans were given, is not a ResidualEncoderUNet, or
        its tensors do not fit the architecture it records.
    """
    check_export_destination(source, destination, overwrite)
    checkpoint = read_checkpoint(source)
    if checkpoint.source == "nnssl":
        raise ValueError(f"{source}: already an nnssl checkpoint (it has '{PLAN_KEY}'); nothing to export")
    export = _Export.of(checkpoint, configuration)
    if plans is None and export.finetuned:
        plans = export.own_plans(source)
    if plans is not None:
        export.use_plans(plans)
    reference, channels = export.check_network(source)
    plan = make_adaptation_plan(export.architecture["arch_kwargs"], export.patch_size, channels, export.configuration,
                                export.normalization, plans_name=export.plans_name, dataset_name=export.dataset_name)
    plain_meta = json.loads(json.dumps(export.metadata(), default=str))  # weights_only-safe
    atomic_torch_save({
        "network_weights": share_aliases(cpu_state_dict(export.weights), reference),
        PLAN_KEY: plan,
        "trainer_name": export.trainer_name,
        "init_args": {"plans_name": export.plans_name, "configuration": export.configuration,
                      "method_params": plain_meta.get("method_params")},
        "current_epoch": int(export.epoch),
        "selma": plain_meta,
    }, destination)
    return plan


#: the first convolution of a residual-encoder U-Net: its input channels are the checkpoint's
_STEM_WEIGHT = "encoder.stem.convs.0.conv.weight"


@dataclass
class _Export:
    """What an exported checkpoint says about itself: network, patch, plans, trainer, weights."""

    checkpoint: PretrainedCheckpoint
    configuration: str
    meta: dict
    weights: dict
    architecture: Mapping | None
    patch_size: Sequence[int] | None
    trainer_name: str
    epoch: int
    normalization: list[str] = field(default_factory=lambda: ["ZScoreNormalization"])
    plans_name: str = "nnUNetSelmaPlans"
    dataset_name: str = "SELMA3D_pretraining_store"

    @property
    def finetuned(self) -> bool:
        return self.checkpoint.is_nnunet_training

    @classmethod
    def of(cls, checkpoint: PretrainedCheckpoint, configuration: str) -> _Export:
        meta = dict(checkpoint.metadata)
        export = cls(checkpoint, configuration, meta, checkpoint.weights, meta.get("architecture"),
                     meta.get("patch_size"), f"nnunetv2_selma.{meta.get('method', 'pretraining')}",
                     int(meta.get("iterations_done") or 0), plans_name=meta.get("plans_name") or "nnUNetSelmaPlans")
        if checkpoint.is_nnunet_training:
            export.configuration = str(checkpoint.init_args.get("configuration") or configuration)
            export.trainer_name = checkpoint.trainer_name or "nnUNetTrainer"
            export.epoch = checkpoint.current_epoch or 0
            # the head maps features to this task's classes: it is no part of what another task reuses
            export.weights = without_heads(checkpoint.weights)
        return export

    def own_plans(self, source: str | PathLike) -> dict:
        """The plans an nnU-Net training's checkpoint carries in its ``init_args``."""
        own = self.checkpoint.init_args.get("plans")
        if not isinstance(own, Mapping):
            raise ValueError(f"{source}: the checkpoint of an nnU-Net training (trainer "
                             f"{self.checkpoint.trainer_name or '?'}), not a pretraining, and it holds no plans; give "
                             f"the plans.json of its model folder with --plans to export its encoder and decoder")
        return dict(own)

    def use_plans(self, plans: dict | str | PathLike) -> None:
        manager, config = read_plans_configuration(plans, self.configuration)
        self.architecture, self.patch_size = config.configuration["architecture"], list(config.patch_size)
        self.normalization = list(config.normalization_schemes)[:1] or self.normalization
        self.plans_name = manager.plans.get("plans_name", self.plans_name)
        if self.finetuned:
            self.dataset_name = manager.plans.get("dataset_name") or self.dataset_name

    def check_network(self, source: str | PathLike) -> tuple[torch.nn.Module, int]:
        """Prove the weights fit the recorded network: build it on the meta device (no memory) and
        compare the encoder's shapes. Returns the network and the number of input channels."""
        # nnU-Net's network factory pulls in its whole training stack: only an export needs it
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

        if not self.architecture or not self.patch_size:
            raise ValueError(f"{source}: the checkpoint does not record its network (source "
                             f"{self.checkpoint.source!r}); give the plans it was pretrained with (--plans "
                             f"$nnUNet_preprocessed/DatasetXXX/nnUNetSelmaPlans_<preset>.json)")
        class_name = self.architecture.get("network_class_name", "")
        if class_name.rsplit(".", 1)[-1] != "ResidualEncoderUNet":
            raise ValueError(f"{source}: network {class_name!r}; nnssl's adaptation plan describes "
                             f"ResidualEncoderUNet networks only")
        if _STEM_WEIGHT not in self.weights:
            raise ValueError(f"{source}: no {_STEM_WEIGHT!r}; not a checkpoint of a residual-encoder U-Net")
        channels = int(self.weights[_STEM_WEIGHT].shape[1])
        with torch.device("meta"):
            reference = get_network_from_plans(class_name, self.architecture["arch_kwargs"],
                                               self.architecture.get("_kw_requires_import", []), channels, 1,
                                               allow_init=False, deep_supervision=False)
        for key, value in reference.state_dict().items():
            if key.startswith("encoder.") and (key not in self.weights
                                               or tuple(self.weights[key].shape) != tuple(value.shape)):
                found = tuple(self.weights[key].shape) if key in self.weights else "missing"
                raise ValueError(f"{source}: tensor {key!r} is {found} but the recorded architecture has "
                                 f"{tuple(value.shape)}; the checkpoint does not belong to these plans")
        return reference, channels

    def metadata(self) -> dict:
        """Our ``"selma"`` entry: the pretraining's own, or what the fine-tuned model was."""
        if not self.finetuned:
            return self.meta
        fold = self.checkpoint.init_args.get("fold")
        return {"method": f"fine-tuned nnU-Net {self.trainer_name} on {self.dataset_name} (fold {fold}), "
                          f"segmentation head left out",
                "finetuned": {"dataset_name": self.dataset_name, "trainer_name": self.trainer_name, "fold": fold,
                              "configuration": self.configuration, "epoch": self.epoch},
                "architecture": self.architecture, "patch_size": list(self.patch_size), "plans_name": self.plans_name}

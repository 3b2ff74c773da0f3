"""Pretrained checkpoints: one file format, written by pretraining, read by every fine-tuning path.

The format is nnU-Net's own: ``{"network_weights": state_dict, ...}``, so stock
``nnUNetv2_train -pretrained_weights FILE`` reads our pretraining checkpoints. We add a
``"selma"`` entry with metadata (method, plans, store...). Weights are saved on the CPU and
without the ``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) prefixes, so a checkpoint
saved on a GPU machine, in a DDP run or from a compiled network loads anywhere.

:func:`load_pretrained_weights` is the loader our trainers use instead of nnU-Net's: it also
loads encoder-only checkpoints, adapts the first convolution to another number of input
channels, reads GPU-saved files on a CPU machine, and says which tensors it loaded and why it
skipped the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch

from nnunetv2_selma.checkpoint_io import (
    PretrainedCheckpoint,
    alias_groups,
    atomic_torch_save,
    checkpoint_fingerprint,  # noqa: F401  (pretraining/loop.py imports it from here)
    cpu_state_dict,
    is_head,
    read_checkpoint,
    unwrap_network,
)
from nnunetv2_selma.nnssl_format import (
    KEY_TO_ENCODER,
    KEY_TO_STEM,
    KEYS_TO_IN_PROJ,
    check_adaptation_plan,
    pretrain_configuration,
    pretrain_spacing,
)


def save_pretrained_checkpoint(
    path: str | os.PathLike, network_or_state_dict: torch.nn.Module | Mapping[str, torch.Tensor], metadata: dict
) -> None:
    """Save weights as a checkpoint that stock ``nnUNetv2_train -pretrained_weights`` can read.

    Parameters
    ----------
    path : str or PathLike
        Target file (``.pth``). Written to a temporary file in the same folder and renamed into
        place, so a crash never leaves a half-written checkpoint; parent folders are created.
    network_or_state_dict : torch.nn.Module or mapping of str to Tensor
        The network (DDP / compiled wrappers are unwrapped) or a state dict. An encoder-only
        state dict (keys ``encoder.*``) is allowed; :func:`load_pretrained_weights` accepts it.
    metadata : dict
        Plain, picklable information stored under ``"selma"`` (method, plans name, patch size,
        epochs...).

    Notes
    -----
    Tensors are moved to the CPU and detached; keys lose ``module.``/``_orig_mod.`` prefixes. Names
    that share one tensor in the network are stored once
    (:func:`nnunetv2_selma.checkpoint_io.cpu_state_dict`).
    """
    if isinstance(network_or_state_dict, torch.nn.Module):
        state_dict = unwrap_network(network_or_state_dict).state_dict()
    else:
        state_dict = network_or_state_dict
    atomic_torch_save({"network_weights": cpu_state_dict(state_dict), "selma": dict(metadata)}, path)


def _adapt_input_channels(weight: torch.Tensor, channels: int) -> tuple[torch.Tensor, str]:
    """Map a first-conv weight ``(out, c_in, *k)`` to ``channels`` input channels.

    Repeats the pretrained channels and rescales so that an input whose channels are all equal
    gives the same response as the pretrained network on one channel; several pretrained channels
    onto one are summed for the same reason.
    """
    source = weight.shape[1]
    if channels % source == 0:
        reps = channels // source
        new = weight.repeat(1, reps, *([1] * (weight.ndim - 2))) / reps
        return new, f"repeated {source} pretrained input channel(s) {reps}x and divided by {reps}"
    if channels == 1:
        return weight.sum(dim=1, keepdim=True), f"summed {source} pretrained input channels into 1"
    raise ValueError(f"cannot map {source} pretrained input channels onto {channels}")


def _nnssl_stem_and_encoder(
    checkpoint: PretrainedCheckpoint, module: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The stem and encoder tensors of an nnssl checkpoint under this network's names, and the names of
    the first convolution's weight (``keys_to_in_proj``) there."""
    plan = checkpoint.nnssl_plan or {}
    ours = {"stem": getattr(module, "key_to_stem", KEY_TO_STEM), "encoder": getattr(module, "key_to_encoder",
                                                                                       KEY_TO_ENCODER)}
    theirs = {"stem": plan.get("key_to_stem") or KEY_TO_STEM, "encoder": plan.get("key_to_encoder") or KEY_TO_ENCODER}
    selected: dict[str, torch.Tensor] = {}
    for part in ("stem", "encoder"):
        prefix = theirs[part] + "."
        for key, value in checkpoint.weights.items():
            if key.startswith(prefix):
                selected[ours[part] + "." + key[len(prefix):]] = value
        if not any(k.startswith(ours[part] + ".") for k in selected):
            raise ValueError(f"{checkpoint.path}: the nnssl plan's key_to_{part} {theirs[part]!r} names no tensor of "
                             f"'network_weights' (e.g. {sorted(checkpoint.weights)[:3]}); the file is inconsistent")
    in_proj = [k + ".weight" for k in plan.get("keys_to_in_proj") or KEYS_TO_IN_PROJ]
    in_proj = {ours["stem"] + k[len(theirs["stem"]):] if k.startswith(theirs["stem"]) else k for k in in_proj}
    return selected, in_proj


def load_pretrained_weights(
    network: torch.nn.Module, path: str | os.PathLike, log: Callable[..., object] = print,
    detail: Callable[..., object] | None = None, architecture: Mapping | None = None,
    whole_network: bool = False,
) -> dict:
    """Load pretrained weights into ``network``, checking every tensor and reporting the outcome.

    Rules, in order, for every tensor of the network:

    * segmentation heads (``.seg_layers.``) are skipped: the pretraining head has another number
      of outputs and the task's head must start fresh (unless ``whole_network``);
    * a tensor with the same name and shape is loaded;
    * the first convolution is adapted when only its number of input channels differs (for
      example a 1-channel pretraining used for the 2-channel ``VessAP_vessel`` data);
    * a tensor missing from the checkpoint is skipped if the checkpoint is encoder-only (it holds
      no decoder tensor at all); the decoder keeps its random initialisation;
    * anything else is an error.

    An nnssl checkpoint (OpenMind foundation models, see :mod:`nnunetv2_selma.nnssl_format`) is
    recognised by its ``nnssl_adaptation_plan``. Its plan is first checked against ``architecture``
    hyperparameter by hyperparameter; then only its stem and encoder (``key_to_stem``,
    ``key_to_encoder``) are loaded, the first convolution (``keys_to_in_proj``) repeated per input
    channel and divided by their number, and the decoder keeps its random initialisation. That is what
    nnU-Net master's ``nnUNetv2_train_pretrained`` does, and why: contrastive checkpoints (VoCo,
    SimCLR...) never trained their decoder, and the OpenMind fine-tuning results start it at random.

    Parameters
    ----------
    network : torch.nn.Module
        Target network; DDP and ``torch.compile`` wrappers are unwrapped. Tensors are copied onto
        the network's own device and dtype.
    path : str or PathLike
        Checkpoint (see :func:`read_checkpoint`); it is read with ``map_location="cpu"``,
        so checkpoints saved on a GPU load on a CPU-only machine.
    log : callable
        Called once, with the one-line summary (tensors loaded / adapted / skipped and why).
    detail : callable, optional
        Called with one string per tensor (``loaded``/``adapted``/``skipped`` and the reason), e.g.
        a trainer's log file only; None drops them (the returned report holds them all). A network
        has hundreds of tensors: they belong in a log file, not on the console.
    architecture : mapping, optional
        The ``architecture`` entry of the network's plans configuration (``network_class_name``,
        ``arch_kwargs``), against which an nnssl plan is checked. Without it an nnssl checkpoint is
        checked by tensor shapes only.
    whole_network : bool
        Also load heads and, from an nnssl checkpoint, the decoder, where names and shapes match
        (continuing a pretraining: ``nnUNetv2_selma_pretrain --init``).

    Returns
    -------
    dict
        ``{"loaded": [keys...], "skipped": {key: reason}, "adapted": {key: how}, "source": str,
        "notes": [str]}``; checkpoint tensors the network does not have are listed in ``skipped`` too.

    Raises
    ------
    ValueError
        Naming the first tensor whose shape differs (with both shapes), the first tensor
        missing from a checkpoint that is not encoder-only, the first hyperparameter in which an
        nnssl plan differs from ``architecture``, a Primus (transformer) nnssl checkpoint, or when
        nothing beyond the segmentation heads would load (the checkpoint belongs to another
        architecture).
    """
    transfer = _Transfer(unwrap_network(network), read_checkpoint(path), whole_network)
    if transfer.checkpoint.source == "nnssl":
        transfer.restrict_to_nnssl_encoder(architecture or {})
    transfer.check_overlap()
    for key in transfer.keys:
        transfer.take(key)
    transfer.list_checkpoint_only()
    transfer.module.load_state_dict(transfer.to_load, strict=False)
    transfer.report(log, detail)
    return {"loaded": transfer.loaded, "skipped": transfer.skipped, "adapted": transfer.adapted,
            "source": transfer.checkpoint.source, "notes": transfer.notes}


_ENCODER_ONLY = "not in checkpoint (encoder-only checkpoint): keeps its random initialisation"
_NNSSL_DECODER = ("decoder of an nnssl checkpoint: not transferred, starts at random (as nnU-Net master's nnssl "
                  "fine-tuning)")


class _Transfer:
    """One loading of checkpoint tensors into a network: what to load, adapt or skip, and why."""

    def __init__(self, module: torch.nn.Module, checkpoint: PretrainedCheckpoint, whole_network: bool):
        self.module, self.checkpoint, self.whole_network = module, checkpoint, whole_network
        self.path = checkpoint.path
        self.weights, self.metadata = checkpoint.weights, checkpoint.metadata
        self.target = module.state_dict()
        self.aliases = alias_groups(module)
        self.keys = list(self.target.keys())
        self.notes: list[str] = []
        first = next((k for k in self.keys if self.target[k].ndim >= 3 and not is_head(k)), None)
        # the stem conv has several names (conv.weight, all_modules.0.weight, decoder.encoder....)
        self.first_conv = set(self.aliases.get(first, [])) if first is not None else set()
        self.decoder_reason = _ENCODER_ONLY
        self.to_load: dict[str, torch.Tensor] = {}
        self.loaded: list[str] = []
        self.skipped: dict[str, str] = {}
        self.adapted: dict[str, str] = {}

    def restrict_to_nnssl_encoder(self, architecture: Mapping) -> None:
        """Check an nnssl plan against ``architecture`` and keep its stem and encoder only (unless the
        whole network is wanted): its decoder may never have been trained (contrastive methods)."""
        plan, trainer = self.checkpoint.nnssl_plan, self.checkpoint.trainer_name
        self.notes += check_adaptation_plan(plan, architecture.get("network_class_name"),
                                            architecture.get("arch_kwargs"), where=str(self.path))
        _, config = pretrain_configuration(plan)
        if not self.whole_network:
            self.weights, in_proj = _nnssl_stem_and_encoder(self.checkpoint, self.module)
            self.first_conv |= {a for k in in_proj for a in self.aliases.get(k, [])}
            self.decoder_reason = _NNSSL_DECODER
        spacing = pretrain_spacing(plan)
        self.metadata = {"method": f"nnssl {trainer or '?'}, {plan['architecture_plans']['arch_class_name']}, "
                                   f"pretraining patch {config.get('patch_size')} at "
                                   + (f"spacing {spacing}" if spacing else "the data's own spacing (not resampled)")
                                   + ", stem + encoder" + (" + decoder" if self.whole_network else "")}

    def check_overlap(self) -> None:
        """Refuse a checkpoint of which nothing beyond the heads would load (another architecture)."""
        if any(not is_head(k) and self._source_key(k) is not None for k in self.keys):
            return
        raise ValueError(
            f"{self.path}: nothing beyond the segmentation heads would load into this network: none of its "
            f"{len(self.keys)} tensor names is in the checkpoint ({len(self.weights)} tensors, e.g. "
            f"{sorted(self.weights)[:3]}); the checkpoint belongs to another architecture."
        )

    def _source_key(self, key: str) -> str | None:
        return key if key in self.weights else next((a for a in self.aliases.get(key, []) if a in self.weights), None)

    def _has_decoder(self) -> bool:
        return any(k.startswith("decoder.") and not k.startswith("decoder.encoder.") and not is_head(k)
                   for k in self.weights)

    def take(self, key: str) -> None:
        """Load, adapt or skip the network tensor ``key`` (the rules of :func:`load_pretrained_weights`)."""
        if is_head(key) and not self.whole_network:
            self.skipped[key] = "segmentation head: never transferred, trained from scratch"
            return
        source_key = self._source_key(key)
        if source_key is None:
            self._missing(key)
            return
        value, wanted = self.weights[source_key], self.target[key]
        if tuple(value.shape) != tuple(wanted.shape):
            if is_head(key):
                self.skipped[key] = (f"head of another shape {tuple(value.shape)} in the checkpoint: keeps its "
                                     f"initialisation")
                return
            value = self._adapt(key, value)
        self.to_load[key] = value.to(dtype=wanted.dtype)
        self.loaded.append(key)

    def _missing(self, key: str) -> None:
        if is_head(key):
            self.skipped[key] = "head not in checkpoint: keeps its random initialisation"
        elif key.startswith("decoder.") and not self._has_decoder():
            self.skipped[key] = self.decoder_reason
        else:
            raise ValueError(
                f"{self.path}: the checkpoint has no tensor {key!r} (shape {tuple(self.target[key].shape)} in this "
                f"network); it was made for another architecture. Pretrain with the same plans as the fine-tuning "
                f"(nnUNetv2_selma_plan --preset ...)."
            )

    def _adapt(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """The first convolution with another number of input channels, adapted; any other shape difference
        is an error."""
        wanted = self.target[key]
        same_but_channels = (key in self.first_conv and value.ndim == wanted.ndim
                             and value.shape[0] == wanted.shape[0] and value.shape[2:] == wanted.shape[2:])
        if not same_but_channels:
            raise ValueError(
                f"{self.path}: tensor {key!r} has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(wanted.shape)} in the network; the checkpoint was made for another "
                f"architecture or plans (pretrain and fine-tune with the same nnUNetv2_selma_plan preset)."
            )
        try:
            adapted, how = _adapt_input_channels(value, wanted.shape[1])
        except ValueError as e:
            raise ValueError(f"{self.path}: first convolution {key!r}: {e} (checkpoint {tuple(value.shape)}, "
                             f"network {tuple(wanted.shape)})") from None
        self.adapted[key] = how
        return adapted

    def list_checkpoint_only(self) -> None:
        network_keys = set(self.keys)
        for key in self.weights:
            if key not in network_keys:
                self.skipped[key] = "in the checkpoint only: this network has no such tensor"

    def report(self, log: Callable[..., object], detail: Callable[..., object] | None) -> None:
        """One summary line to ``log``; one line per tensor to ``detail``."""
        name = self.metadata.get("method", "")
        if detail is not None:
            detail(f"Loading pretrained weights from {self.path}" + (f" (pretraining method: {name})" if name else ""))
            for note in self.notes:
                detail(f"  note: {note}")
            for key in self.loaded:
                note = f"  [adapted: {self.adapted[key]}]" if key in self.adapted else ""
                detail(f"  loaded  {key} {tuple(self.target[key].shape)}{note}")
            for key, reason in self.skipped.items():
                detail(f"  skipped {key}: {reason}")
        why: dict[str, int] = {}
        for reason in self.skipped.values():
            label = _skip_label(reason)
            why[label] = why.get(label, 0) + 1
        reasons = ", ".join(f"{n} {k}" for k, n in why.items() if n)
        log(f"Pretrained weights from {self.path}" + (f" ({name})" if name else "") + f": {len(self.loaded)} tensors "
            f"loaded, {len(self.adapted)} adapted, {len(self.skipped)} skipped" + (f" ({reasons})" if reasons else ""))


def _skip_label(reason: str) -> str:
    if reason.startswith("segmentation head"):
        return "segmentation head"
    if reason.startswith("not in checkpoint"):
        return "decoder tensors not in the encoder-only checkpoint"
    if reason.startswith("decoder of an nnssl"):
        return "decoder tensors (nnssl: decoder starts at random)"
    if reason.startswith("head"):
        return "heads kept at their initialisation"
    return "in the checkpoint only"

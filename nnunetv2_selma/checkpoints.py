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
import pickle
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_selma.atomic import apply_default_mode

#: substrings of the keys that are never transferred (segmentation / reconstruction heads)
HEAD_KEYS = (".seg_layers.",)
#: prefixes that wrappers add to parameter names
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap_network(network: torch.nn.Module) -> torch.nn.Module:
    """Return the plain module inside DDP and ``torch.compile`` wrappers (any nesting)."""
    while True:
        if isinstance(network, DistributedDataParallel):
            network = network.module
        elif isinstance(network, OptimizedModule):
            network = network._orig_mod
        else:
            return network


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``_orig_mod.`` prefixes from every key (in any order, repeated)."""
    out = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    stripped = True
        out[key] = value
    return out


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
    that share one tensor in the network are stored once (:func:`cpu_state_dict`).
    """
    if isinstance(network_or_state_dict, torch.nn.Module):
        state_dict = unwrap_network(network_or_state_dict).state_dict()
    else:
        state_dict = network_or_state_dict
    atomic_torch_save({"network_weights": cpu_state_dict(state_dict), "selma": dict(metadata)}, path)


def cpu_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU tensors, wrapper prefixes removed, with the network's sharing kept.

    dynamic-network-architectures' decoder holds a reference to the encoder and each convolution is
    reachable under two names, so a U-Net state dict names most tensors two to four times.
    ``torch.save`` writes a storage once however many entries use it; copying entry by entry
    (``.clone()``, or ``.cpu()`` of each CUDA entry) would store every name separately, 3.7 times
    the parameters for ResEnc-L. Entries that view the same memory therefore get one CPU tensor.
    CPU tensors are not copied: save the result before the network trains on.
    """
    out: dict[str, torch.Tensor] = {}
    moved: dict[tuple, torch.Tensor] = {}
    for key, value in strip_wrapper_prefixes(state_dict).items():
        value = value.detach()
        view = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                value.stride(), value.dtype)
        if view not in moved:
            moved[view] = value.cpu()
        out[key] = moved[view]
    return out


def share_aliases(weights: Mapping[str, torch.Tensor], network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``weights`` with the names of one network tensor pointing at one tensor where their values are equal.

    Checkpoints written before :func:`cpu_state_dict` hold a separate copy per name; re-saving them
    through this function stores each network tensor once. ``network`` may live on the meta device
    (only which names share a tensor is read). Names whose values differ are left apart.
    """
    out = dict(weights)
    seen: set[str] = set()
    for keys in _alias_groups(network).values():
        present = [k for k in keys if k in out and k not in seen]
        seen.update(present)
        for key in present[1:]:
            first, value = out[present[0]], out[key]
            if value is not first and value.shape == first.shape and value.dtype == first.dtype \
                    and torch.equal(value, first):
                out[key] = first
    return out


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder, renamed into place.

    A crash never leaves a half-written file at ``path`` (readers see the old file or the new
    one); the temporary file is removed on failure. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        apply_default_mode(tmp)  # mkstemp made it 0600; the checkpoint is shared like nnU-Net's own
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


#: entries of the pretraining loop's checkpoint_latest.pth (its resume state, not a pretrained checkpoint)
_PRETRAIN_RESUME_KEYS = ("network", "optimizer", "sampler", "schedule")
#: what torch.load raises for a truncated, corrupted or foreign file (zip reader, pickle, short read)
_UNREADABLE = (RuntimeError, OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError)


@dataclass
class PretrainedCheckpoint:
    """What a checkpoint file holds, whichever tool wrote it.

    Attributes
    ----------
    path : Path
    weights : dict of str to Tensor
        CPU tensors, wrapper prefixes removed (nnssl / nnU-Net / ours: the whole network, decoder included).
    metadata : dict
        Our ``"selma"`` entry (``{}`` for other files).
    nnssl_plan : dict or None
        The ``nnssl_adaptation_plan`` of an nnssl checkpoint, else None.
    source : str
        ``"selma"`` (ours), ``"nnssl"``, ``"nnunet"`` (an nnU-Net training) or ``"state_dict"``.
    trainer_name : str
        nnssl's / nnU-Net's ``trainer_name`` entry when present.
    init_args : dict
        nnssl's / nnU-Net's ``init_args`` entry (an nnU-Net training's plans, configuration, fold and
        dataset.json), or ``{}``.
    current_epoch : int or None
        nnssl's / nnU-Net's ``current_epoch`` entry when present.
    """

    path: Path
    weights: dict
    metadata: dict
    nnssl_plan: dict | None
    source: str
    trainer_name: str = ""
    init_args: dict = field(default_factory=dict)
    current_epoch: int | None = None

    @property
    def is_nnunet_training(self) -> bool:
        """Whether the file is the checkpoint of an nnU-Net training (``nnUNetv2_train``: a fine-tuned
        segmentation model), recognised by the entries nnU-Net's trainer writes."""
        return self.source == "nnunet" and bool(self.trainer_name or self.init_args)


def _torch_load(path: Path) -> object:
    try:
        # weights_only first: loading a checkpoint should not run arbitrary code
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # nnU-Net's own checkpoints hold plans / init args that the safe loader refuses; they
        # come from a training of the user's, so fall back like nnU-Net does
        pass
    except _UNREADABLE as e:
        raise ValueError(_unreadable(path, e)) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except _UNREADABLE as e:
        raise ValueError(_unreadable(path, e)) from None


def _unreadable(path: Path, error: BaseException) -> str:
    reason = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return (f"{path}: unreadable checkpoint ({type(error).__name__}: {reason}); the file is truncated, corrupted or "
            f"not a torch checkpoint ({path.stat().st_size} bytes). Download or copy it again and compare its size.")


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
    """A content digest of a checkpoint file (hex, 20 chars): the same bytes anywhere give the same key."""
    import hashlib

    h = hashlib.blake2b(digest_size=10)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> PretrainedCheckpoint:
    """Read a checkpoint onto the CPU and say what wrote it (ours, nnssl, nnU-Net or a plain state dict).

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    ValueError
        If it is truncated or not a torch file, holds no recognisable weights, or is an nnssl
        checkpoint without its ``nnssl_adaptation_plan``.
    """
    from nnunetv2_selma.nnssl_format import PLAN_KEY, is_nnssl_checkpoint

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the checkpoint file in it (e.g. {path / 'checkpoint_final.pth'})")
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist")
    checkpoint = _torch_load(path)
    if isinstance(checkpoint, Mapping) and all(k in checkpoint for k in _PRETRAIN_RESUME_KEYS):
        raise ValueError(
            f"{path}: the resume state of an nnUNetv2_selma_pretrain run (network, optimizer and sampler, written "
            f"every --checkpoint-every iterations), not a pretrained checkpoint. Give "
            f"{path.parent / 'checkpoint_final.pth'}, written when the run finishes; if the run stopped early, "
            f"finish it first (nnUNetv2_selma_pretrain with the same arguments and --c).")
    if isinstance(checkpoint, Mapping) and "network_weights" in checkpoint:
        weights = checkpoint["network_weights"]
        if not isinstance(weights, Mapping):
            raise ValueError(f"{path}: 'network_weights' is a {type(weights).__name__}, expected a state dict")
        plan = None
        if "selma" in checkpoint and PLAN_KEY not in checkpoint:
            source = "selma"
        elif is_nnssl_checkpoint(checkpoint):  # ours exported to nnssl's format count as nnssl: the plan is checked
            plan = checkpoint.get(PLAN_KEY)
            if not isinstance(plan, Mapping):
                raise ValueError(
                    f"{path}: an nnssl checkpoint (trainer {checkpoint.get('trainer_name')!r}) without "
                    f"'{PLAN_KEY}'; without it nothing says which network the weights belong to. Use the "
                    f"checkpoint_final.pth of an nnssl release (it embeds the plan) or add the plan with nnssl's "
                    f"nnssl/utilities/add_adaptation_plan.py.")
            plan = dict(plan)
            source = "nnssl"
        else:
            source = "nnunet"
        init_args = checkpoint.get("init_args")
        epoch = checkpoint.get("current_epoch")
        return PretrainedCheckpoint(path, strip_wrapper_prefixes(weights), dict(checkpoint.get("selma") or {}),
                                    plan, source, str(checkpoint.get("trainer_name") or ""),
                                    dict(init_args) if isinstance(init_args, Mapping) else {},
                                    int(epoch) if isinstance(epoch, int) else None)
    if isinstance(checkpoint, Mapping) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return PretrainedCheckpoint(path, strip_wrapper_prefixes(checkpoint), {}, None, "state_dict")
    found = sorted(checkpoint.keys()) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ValueError(
        f"{path}: expected a checkpoint with 'network_weights' (nnU-Net / nnssl / nnunetv2-selma) or a plain "
        f"state dict, found {found}"
    )


def read_checkpoint_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read the weights of a checkpoint onto the CPU, whatever device saved them.

    Accepts our pretraining checkpoints, nnU-Net's ``checkpoint_final.pth`` / ``checkpoint_best.pth``
    (``"network_weights"``), nnssl's checkpoints and plain state dicts (``torch.save(net.state_dict())``).

    Returns
    -------
    weights : dict of str to Tensor
        CPU tensors with wrapper prefixes removed.
    metadata : dict
        The ``"selma"`` entry, or ``{}``.

    Raises
    ------
    FileNotFoundError, ValueError
        See :func:`read_checkpoint`.
    """
    checkpoint = read_checkpoint(path)
    return checkpoint.weights, checkpoint.metadata


def _is_head(key: str) -> bool:
    return any(s in "." + key for s in HEAD_KEYS)


def _alias_groups(module: torch.nn.Module) -> dict[str, list[str]]:
    """Keys that name the same tensor (dynamic-network-architectures' decoder holds a reference
    to the encoder, so ``decoder.encoder.X`` and ``encoder.X`` are one parameter)."""
    # by object identity, not data_ptr: every tensor of a meta-device network has data_ptr 0
    by_tensor: dict[int, list[str]] = {}
    for key, value in module.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(value), []).append(key)
    return {key: keys for keys in by_tensor.values() for key in keys}


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
    from nnunetv2_selma.nnssl_format import KEY_TO_ENCODER, KEY_TO_STEM, KEYS_TO_IN_PROJ

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
    module = unwrap_network(network)
    checkpoint = read_checkpoint(path)
    weights, metadata = checkpoint.weights, checkpoint.metadata
    target = module.state_dict()
    aliases = _alias_groups(module)
    keys = list(target.keys())
    notes: list[str] = []

    def is_head(key: str) -> bool:
        return _is_head(key) and not whole_network

    first = next((k for k in keys if target[k].ndim >= 3 and not _is_head(k)), None)
    # the stem conv has several names (conv.weight, all_modules.0.weight, decoder.encoder....)
    first_conv = set(aliases.get(first, [])) if first is not None else set()
    decoder_reason = "not in checkpoint (encoder-only checkpoint): keeps its random initialisation"
    if checkpoint.source == "nnssl":
        from nnunetv2_selma.nnssl_format import check_adaptation_plan, pretrain_configuration, pretrain_spacing

        arch = architecture or {}
        notes += check_adaptation_plan(checkpoint.nnssl_plan, arch.get("network_class_name"), arch.get("arch_kwargs"),
                                       where=str(path))
        _, config = pretrain_configuration(checkpoint.nnssl_plan)
        if not whole_network:
            weights, in_proj = _nnssl_stem_and_encoder(checkpoint, module)
            first_conv |= {a for k in in_proj for a in aliases.get(k, [])}
            decoder_reason = ("decoder of an nnssl checkpoint: not transferred, starts at random (as nnU-Net "
                              "master's nnssl fine-tuning)")
        name = checkpoint.nnssl_plan["architecture_plans"]["arch_class_name"]
        spacing = pretrain_spacing(checkpoint.nnssl_plan)
        metadata = {"method": f"nnssl {checkpoint.trainer_name or '?'}, {name}, pretraining patch "
                              f"{config.get('patch_size')} at "
                              + (f"spacing {spacing}" if spacing else "the data's own spacing (not resampled)")
                              + ", stem + encoder" + (" + decoder" if whole_network else "")}
    checkpoint_has_decoder = any(
        k.startswith("decoder.") and not k.startswith("decoder.encoder.") and not _is_head(k) for k in weights
    )

    shared = [k for k in keys if not _is_head(k) and (k in weights or any(a in weights for a in aliases.get(k, [])))]
    if not shared:
        raise ValueError(
            f"{path}: nothing beyond the segmentation heads would load into this network: none of its "
            f"{len(keys)} tensor names is in the checkpoint ({len(weights)} tensors, e.g. "
            f"{sorted(weights)[:3]}); the checkpoint belongs to another architecture."
        )

    to_load: dict[str, torch.Tensor] = {}
    loaded: list[str] = []
    skipped: dict[str, str] = {}
    adapted: dict[str, str] = {}
    for key in keys:
        if is_head(key):
            skipped[key] = "segmentation head: never transferred, trained from scratch"
            continue
        source_key = key if key in weights else next((a for a in aliases.get(key, []) if a in weights), None)
        if source_key is None:
            if _is_head(key):
                skipped[key] = "head not in checkpoint: keeps its random initialisation"
                continue
            if key.startswith("decoder.") and not checkpoint_has_decoder:
                skipped[key] = decoder_reason
                continue
            raise ValueError(
                f"{path}: the checkpoint has no tensor {key!r} (shape {tuple(target[key].shape)} in this network); "
                f"it was made for another architecture. Pretrain with the same plans as the fine-tuning "
                f"(nnUNetv2_selma_plan --preset ...)."
            )
        value = weights[source_key]
        if tuple(value.shape) != tuple(target[key].shape):
            if _is_head(key):
                skipped[key] = f"head of another shape {tuple(value.shape)} in the checkpoint: keeps its initialisation"
                continue
            same_but_channels = (
                key in first_conv
                and value.ndim == target[key].ndim
                and value.shape[0] == target[key].shape[0]
                and value.shape[2:] == target[key].shape[2:]
            )
            if not same_but_channels:
                raise ValueError(
                    f"{path}: tensor {key!r} has shape {tuple(value.shape)} in the checkpoint but "
                    f"{tuple(target[key].shape)} in the network; the checkpoint was made for another "
                    f"architecture or plans (pretrain and fine-tune with the same nnUNetv2_selma_plan preset)."
                )
            try:
                value, how = _adapt_input_channels(value, target[key].shape[1])
            except ValueError as e:
                raise ValueError(f"{path}: first convolution {key!r}: {e} (checkpoint {tuple(value.shape)}, "
                                 f"network {tuple(target[key].shape)})") from None
            adapted[key] = how
        to_load[key] = value.to(dtype=target[key].dtype)
        loaded.append(key)

    network_keys = set(keys)
    for key in weights:
        if key not in network_keys:
            skipped[key] = "in the checkpoint only: this network has no such tensor"

    module.load_state_dict(to_load, strict=False)

    name = metadata.get("method", "")
    if detail is not None:
        detail(f"Loading pretrained weights from {path}" + (f" (pretraining method: {name})" if name else ""))
        for note in notes:
            detail(f"  note: {note}")
        for key in loaded:
            note = f"  [adapted: {adapted[key]}]" if key in adapted else ""
            detail(f"  loaded  {key} {tuple(target[key].shape)}{note}")
        for key, reason in skipped.items():
            detail(f"  skipped {key}: {reason}")
    why: dict[str, int] = {}
    for reason in skipped.values():
        label = ("segmentation head" if reason.startswith("segmentation head") else
                 "decoder tensors not in the encoder-only checkpoint" if reason.startswith("not in checkpoint") else
                 "decoder tensors (nnssl: decoder starts at random)" if reason.startswith("decoder of an nnssl") else
                 "heads kept at their initialisation" if reason.startswith("head") else
                 "in the checkpoint only")
        why[label] = why.get(label, 0) + 1
    reasons = ", ".join(f"{n} {k}" for k, n in why.items() if n)
    log(f"Pretrained weights from {path}" + (f" ({name})" if name else "") + f": {len(loaded)} tensors loaded, "
        f"{len(adapted)} adapted, {len(skipped)} skipped" + (f" ({reasons})" if reasons else ""))
    return {"loaded": loaded, "skipped": skipped, "adapted": adapted, "source": checkpoint.source, "notes": notes}

"""Checkpoint files on the ground floor: read them, recognise who wrote them, write them safely and small.

Both checkpoint formats of the package build on this module: :mod:`nnunetv2_selma.checkpoints` (ours,
which is nnU-Net's ``{"network_weights": ...}`` plus a ``"selma"`` entry, and the weight loader) and
:mod:`nnunetv2_selma.nnssl_format` (nnssl's adaptation plan and the export). Neither of them is
needed to open a file and say what it holds, so that part lives here and imports nothing of ours.

Size: dynamic-network-architectures' decoder holds a reference to the encoder and each convolution
is reachable under two names, so a U-Net state dict names most tensors two to four times (3.7 times
the parameters for ResEnc-L if every name were written separately). :func:`cpu_state_dict` keeps one
tensor per shared view, and copies a view that covers only part of a larger storage, because
``torch.save`` writes a tensor's whole storage.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunetv2_selma.atomic import atomic_path

#: substrings of the keys that are never transferred (segmentation / reconstruction heads)
HEAD_KEYS = (".seg_layers.",)
#: prefixes that wrappers add to parameter names
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: the entry of an nnssl checkpoint that holds the adaptation plan
PLAN_KEY = "nnssl_adaptation_plan"
#: entries nnssl and nnU-Net both write besides ``network_weights``; nnU-Net adds ``NNUNET_ONLY_KEY``
NNSSL_TRAINER_KEYS = ("trainer_name", "init_args", "current_epoch")
NNUNET_ONLY_KEY = "inference_allowed_mirroring_axes"

#: entries of the pretraining loop's checkpoint_latest.pth (its resume state, not a pretrained checkpoint)
_PRETRAIN_RESUME_KEYS = ("network", "optimizer", "sampler", "schedule")
#: what torch.load raises for a truncated, corrupted or foreign file (zip reader, pickle, short read)
_UNREADABLE = (RuntimeError, OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError)


# -- networks and state dicts ----------------------------------------------------------------------

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


def is_head(key: str) -> bool:
    """Whether a state-dict key belongs to a segmentation head (never transferred between tasks)."""
    return any(s in "." + key for s in HEAD_KEYS)


def without_heads(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` without the segmentation-head tensors."""
    return {k: v for k, v in weights.items() if not is_head(k)}


def alias_groups(module: torch.nn.Module) -> dict[str, list[str]]:
    """Each key -> all keys that name the same tensor (``decoder.encoder.X`` and ``encoder.X`` are one
    parameter, because dynamic-network-architectures' decoder holds a reference to the encoder)."""
    # by object identity, not data_ptr: every tensor of a meta-device network has data_ptr 0
    by_tensor: dict[int, list[str]] = {}
    for key, value in module.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(value), []).append(key)
    return {key: keys for keys in by_tensor.values() for key in keys}


def _view_key(value: torch.Tensor) -> tuple:
    return (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
            value.stride(), value.dtype)


def _covers_storage(value: torch.Tensor) -> bool:
    return value.numel() * value.element_size() == value.untyped_storage().nbytes()


def cpu_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU tensors, wrapper prefixes removed, each shared tensor stored once.

    ``torch.save`` writes a storage once however many entries use it, but it writes the whole storage
    of every entry. So entries that view the same memory get one tensor (copying entry by entry would
    store every name separately), and a view that covers only part of its storage, with no entry
    covering all of it, is copied to a tensor of its own size. Other CPU tensors are not copied:
    save the result before the network trains on.
    """
    entries = {key: value.detach() for key, value in strip_wrapper_prefixes(state_dict).items()}
    whole = {v.untyped_storage().data_ptr() for v in entries.values() if _covers_storage(v)}
    out: dict[str, torch.Tensor] = {}
    moved: dict[tuple, torch.Tensor] = {}
    for key, value in entries.items():
        view = _view_key(value)
        if view not in moved:
            partial = value.untyped_storage().data_ptr() not in whole
            moved[view] = value.cpu().clone(memory_format=torch.contiguous_format) if partial else value.cpu()
        out[key] = moved[view]
    return out


def share_aliases(weights: Mapping[str, torch.Tensor], network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``weights`` with the names of one network tensor pointing at one tensor where their values are equal.

    Files that hold a separate copy per name (written entry by entry) are stored small again when
    re-saved through this function. ``network`` may live on the meta device (only which names share a
    tensor is read). Names whose values differ are left apart.
    """
    out = dict(weights)
    seen: set[str] = set()
    for keys in alias_groups(network).values():
        present = [k for k in keys if k in out and k not in seen]
        seen.update(present)
        for key in present[1:]:
            first, value = out[present[0]], out[key]
            if value is not first and value.shape == first.shape and value.dtype == first.dtype \
                    and torch.equal(value, first):
                out[key] = first
    return out


# -- writing ------------------------------------------------------------------------------------------

def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder, renamed into place.

    A crash never leaves a half-written file at ``path`` (readers see the old file or the new
    one); the temporary file is removed on failure. Parent folders are created. The temporary is
    created by ``open()`` (not ``mkstemp``), so the file gets the umask's mode and colleagues sharing
    the folder can read it, as nnU-Net's own checkpoints.
    """
    with atomic_path(path, unique=True) as tmp:
        torch.save(obj, tmp)


# -- reading ------------------------------------------------------------------------------------------

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


def is_nnssl_checkpoint(checkpoint: Mapping) -> bool:
    """Whether a loaded checkpoint dict was written by nnssl (or in its format)."""
    # an nnssl file that lost its plan still has a trainer's entries, but not nnU-Net's mirroring axes
    return PLAN_KEY in checkpoint or (
        "network_weights" in checkpoint and "selma" not in checkpoint and NNUNET_ONLY_KEY not in checkpoint
        and all(k in checkpoint for k in NNSSL_TRAINER_KEYS)
    )


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
    h = hashlib.blake2b(digest_size=10)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _check_path(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the checkpoint file in it (e.g. {path / 'checkpoint_final.pth'})")
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist")


def _refuse_resume_state(path: Path, checkpoint: object) -> None:
    if isinstance(checkpoint, Mapping) and all(k in checkpoint for k in _PRETRAIN_RESUME_KEYS):
        raise ValueError(
            f"{path}: the resume state of an nnUNetv2_selma_pretrain run (network, optimizer and sampler, written "
            f"every --checkpoint-every iterations), not a pretrained checkpoint. Give "
            f"{path.parent / 'checkpoint_final.pth'}, written when the run finishes; if the run stopped early, "
            f"finish it first (nnUNetv2_selma_pretrain with the same arguments and --c).")


def _source_and_plan(path: Path, checkpoint: Mapping) -> tuple[str, dict | None]:
    """Who wrote a ``network_weights`` checkpoint, and its nnssl plan (checked present) for nnssl files."""
    if "selma" in checkpoint and PLAN_KEY not in checkpoint:
        return "selma", None
    if not is_nnssl_checkpoint(checkpoint):
        return "nnunet", None
    # ours exported to nnssl's format count as nnssl: the plan is checked
    plan = checkpoint.get(PLAN_KEY)
    if not isinstance(plan, Mapping):
        raise ValueError(
            f"{path}: an nnssl checkpoint (trainer {checkpoint.get('trainer_name')!r}) without "
            f"'{PLAN_KEY}'; without it nothing says which network the weights belong to. Use the "
            f"checkpoint_final.pth of an nnssl release (it embeds the plan) or add the plan with nnssl's "
            f"nnssl/utilities/add_adaptation_plan.py.")
    return "nnssl", dict(plan)


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
    path = Path(path)
    _check_path(path)
    checkpoint = _torch_load(path)
    _refuse_resume_state(path, checkpoint)
    if isinstance(checkpoint, Mapping) and "network_weights" in checkpoint:
        weights = checkpoint["network_weights"]
        if not isinstance(weights, Mapping):
            raise ValueError(f"{path}: 'network_weights' is a {type(weights).__name__}, expected a state dict")
        source, plan = _source_and_plan(path, checkpoint)
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

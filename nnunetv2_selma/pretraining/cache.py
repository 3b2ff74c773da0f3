"""Pretrain once, reuse everywhere: a cache of pretraining checkpoints.

A checkpoint is keyed by what determines it -- the architecture (network class, its keyword
arguments, patch size), the store's contents (``PretrainingStore.fingerprint``), the method and
its parameters, the result-relevant schedule and, when the pretraining starts from a checkpoint
(``init``), that file's content fingerprint -- and *not* by the dataset or fold. Every fold
of every SELMA structure dataset planned with the same preset therefore shares one pretraining.

Layout: ``<cache_root>/<key>/`` holds the pretraining run (``checkpoint_final.pth``, log,
progress plot, ``cache_key.json`` with what the key was made of). The default root is
``$nnUNet_results/nnUNetv2_selma_pretraining`` (override with ``nnUNet_selma_pretraining_cache``).

Concurrency: two folds starting together must not both pretrain. The first takes an exclusive
``fcntl`` lock on ``<key>.lock`` (released by the OS if the process dies), the other waits and
then finds the finished checkpoint. The checkpoint is renamed into place only when complete, so
its existence means it is usable; an interrupted run is resumed from its latest checkpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nnunetv2_selma.atomic import write_atomic
from nnunetv2_selma.checkpoint_io import checkpoint_fingerprint
from nnunetv2_selma.model_folder import read_plans_configuration
from nnunetv2_selma.pretraining.loop import FINAL, LATEST, PretrainingSchedule, pretrain
from nnunetv2_selma.pretraining.methods import PretrainingMethod
from nnunetv2_selma.store.reader import open_store

CACHE_ENV = "nnUNet_selma_pretraining_cache"


def architecture_description(plans: dict | str | Path, configuration: str = "3d_fullres") -> dict[str, Any]:
    """What of the plans determines the pretrained network: class, kwargs, patch size."""
    _, config = read_plans_configuration(plans, configuration)
    return {
        "network_class_name": config.network_arch_class_name,
        "arch_kwargs": config.network_arch_init_kwargs,
        "arch_kwargs_requires_import": list(config.network_arch_init_kwargs_req_import),
        "patch_size": [int(p) for p in config.patch_size],
    }


def cache_key_parts(
    plans: dict | str | Path,
    configuration: str,
    store_fingerprint: str,
    method: PretrainingMethod,
    schedule: PretrainingSchedule,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """The JSON-serialisable description the cache key hashes.

    ``init`` (a checkpoint the pretraining starts from) enters as its content fingerprint, so the same
    file anywhere gives the same key and another file another key; without it the key is unchanged.
    """
    parts = {
        "architecture": architecture_description(plans, configuration),
        "store": store_fingerprint,
        "method": method.describe(),
        "schedule": schedule.key_dict(),
    }
    if init is not None:
        parts["init"] = checkpoint_fingerprint(init)
    return parts


def pretraining_cache_key(
    plans: dict | str | Path,
    configuration: str,
    store_fingerprint: str,
    method: PretrainingMethod,
    schedule: PretrainingSchedule,
    init: str | Path | None = None,
) -> str:
    """Hex key (20 chars of a SHA-256) of a pretraining's architecture, store, method, schedule and the
    checkpoint it starts from (``init``, if any)."""
    return _key_of(cache_key_parts(plans, configuration, store_fingerprint, method, schedule, init))


def _key_of(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def default_cache_root() -> Path:
    """``$nnUNet_selma_pretraining_cache`` or ``$nnUNet_results/nnUNetv2_selma_pretraining``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    results = os.environ.get("nnUNet_results")
    if not results:
        raise RuntimeError(f"neither {CACHE_ENV} nor nnUNet_results is set; set one to cache pretraining checkpoints")
    return Path(results) / "nnUNetv2_selma_pretraining"


def get_or_pretrain(
    store: Any,
    plans: dict | str | Path,
    method: PretrainingMethod,
    schedule: PretrainingSchedule,
    configuration: str = "3d_fullres",
    device: str | torch.device = "cuda",
    cache_root: str | Path | None = None,
    log: Callable[[str], Any] = print,
    show_progress: bool = True,
    init: str | Path | None = None,
) -> Path:
    """Return the cached pretraining checkpoint for this setting, pretraining first if needed.

    Parameters
    ----------
    store : PretrainingStore (or its path)
    plans, configuration : the fine-tuning plans (the same network is pretrained)
    method, schedule : what to pretrain with
    device : device of the pretraining run (single process)
    cache_root : default :func:`default_cache_root`
    log : receives one line saying whether the cache was reused or filled
    init : checkpoint to start the pretraining from (ours or nnssl's); part of the key

    Returns
    -------
    Path of ``<cache_root>/<key>/checkpoint_final.pth``.
    """
    store = open_store(store)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    parts = cache_key_parts(plans, configuration, store.fingerprint, method, schedule, init)
    key = _key_of(parts)  # the same key as pretraining_cache_key, without parsing the plans again
    folder = root / key
    final = folder / FINAL
    if final.is_file():
        log(f"reusing cached pretraining checkpoint {final} (key {key})")
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process is pretraining key {key}; waiting for {root / f'{key}.lock'}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if final.is_file():
                log(f"reusing cached pretraining checkpoint {final} (key {key}), made while waiting")
                return final
            folder.mkdir(parents=True, exist_ok=True)
            record = {"key": key, **parts}
            write_atomic(folder / "cache_key.json", lambda f: json.dump(record, f, indent=2, default=str))
            resume = (folder / LATEST).is_file()
            log(f"pretraining into cache {folder} (key {key})" + (", resuming an interrupted run" if resume else ""))
            pretrain(store, plans, folder, method=method, schedule=schedule, configuration=configuration,
                     device=device, continue_training=resume, show_progress=show_progress,
                     metadata={"cache_key": key}, init=init)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final

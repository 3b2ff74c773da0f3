"""Self-supervised pretraining: the streaming volume store reader, samplers, SSL methods, the loop.

The pretraining names (``pretrain``, ``PretrainingSchedule``, ``get_method``...) are imported
lazily on first access, so importing the store (e.g. in ingest workers) does not import torch.
"""

from importlib import import_module

from nnunetv2_selma.pretraining.store import PretrainingStore, StoreVolume, normalize_patch

#: lazily exported name -> submodule that defines it
_LAZY = {
    "pretrain": "loop",
    "PretrainingSchedule": "loop",
    "MaskedImageModeling": "methods",
    "DenoisingReconstruction": "methods",
    "PretrainingMethod": "methods",
    "METHODS": "methods",
    "get_method": "methods",
    "random_block_mask": "masking",
    "EncoderMaskHooks": "masking",
    "PretrainingBatches": "data",
    "get_or_pretrain": "cache",
    "pretraining_cache_key": "cache",
    "benchmark_pretraining": "benchmark",
}

__all__ = ["PretrainingStore", "StoreVolume", "normalize_patch", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Self-supervised pretraining: samplers, SSL methods, the loop. Patches come from the pretraining store
(:mod:`nnunetv2_selma.store`, through its reader only).

The pretraining names (``pretrain``, ``PretrainingSchedule``, ``get_method``...) are imported
lazily on first access, so importing this package does not import torch.
"""

from importlib import import_module

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

__all__ = [*_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

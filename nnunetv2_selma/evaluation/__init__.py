"""SELMA3D evaluation with the leaderboard's semantics (2024, 2025, 2026 editions).

``metrics`` holds the metric functions over binary 3D arrays (re-exported here),
``leaderboard`` what each edition scored and how teams were ranked, ``folders`` the
folder-level scoring behind ``nnUNetv2_selma_evaluate`` and ``nnUNetv2_selma_rank``.
"""

from nnunetv2_selma.evaluation.metrics import (
    betti_errors,
    betti_numbers,
    cldice,
    cldice_terms,
    dice,
    hd95,
    panoptic_quality,
)

__all__ = ["betti_errors", "betti_numbers", "cldice", "cldice_terms", "dice", "hd95", "panoptic_quality"]

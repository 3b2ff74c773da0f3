"""Moved to :mod:`nnunetv2_selma.volumes`. Kept only while the committed ``benchmarks/bench_predict_large.py``
(being edited in parallel; its working copy already imports ``nnunetv2_selma.volumes``) imports
``open_volume`` from here: delete this module once that edit is committed."""

from nnunetv2_selma.volumes import open_volume

__all__ = ["open_volume"]

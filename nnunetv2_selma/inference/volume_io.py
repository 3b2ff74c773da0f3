"""Moved to :mod:`nnunetv2_selma.volumes`. Kept only while ``benchmarks/bench_predict_large.py`` and
``tests/test_whole_volume.py``, being edited in parallel, still import ``open_volume`` from here:
switch them to ``nnunetv2_selma.volumes`` and delete this module."""

from nnunetv2_selma.volumes import open_volume

__all__ = ["open_volume"]

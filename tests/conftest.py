"""Test-wide set-up: nnU-Net's folders point into one temporary root per test session.

nnU-Net reads ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` when ``nnunetv2.paths``
is first imported, so they are set here, before any test module imports nnU-Net. Each test
module uses its own range of dataset IDs (see ``DATASET_IDS``) so modules never collide.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# dataset id ranges per test module: conversion 500-519, integration 520-539, ssl 540-559,
# whole-volume inference 560-579, submission 580-599, demo smoke 600-619
_ROOT = Path(tempfile.mkdtemp(prefix="selma_nnunet_"))
for _name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    (_ROOT / _name).mkdir(parents=True, exist_ok=True)
    os.environ[_name] = str(_ROOT / _name)
os.environ.setdefault("nnUNet_n_proc_DA", "2")
os.environ.setdefault("nnUNet_def_n_proc", "2")
os.environ.setdefault("nnUNet_compile", "false")

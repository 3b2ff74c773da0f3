"""Test-wide set-up: nnU-Net's folders point into one temporary root per test session.

The test folders mirror the package (``tests/inference`` tests ``nnunetv2_selma/inference`` ...);
tests of ground-floor modules (``checkpoints``, ``nnssl_format``, ``structures``, ``demo``) sit here.
This folder and its sub-folders are importable, so a test imports ``model_factory`` (a real, tiny
model folder) or another test module's data helpers by name. Shared fixtures: ``tiny_store``.

nnU-Net reads ``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` when ``nnunetv2.paths``
is first imported, so they are set here, before any test module imports nnU-Net. Each test
module uses its own range of dataset IDs (see ``DATASET_IDS``) so modules never collide.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for _folder in (_TESTS, *sorted(p for p in _TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

# dataset id ranges per test module: conversion 500-519, integration 520-539, ssl 540-559,
# whole-volume inference 560-579, submission 580-599, demo smoke 600-619, semi-supervised 620-639
_ROOT = Path(tempfile.mkdtemp(prefix="selma_nnunet_"))
for _name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    (_ROOT / _name).mkdir(parents=True, exist_ok=True)
    os.environ[_name] = str(_ROOT / _name)
os.environ.setdefault("nnUNet_n_proc_DA", "2")
os.environ.setdefault("nnUNet_def_n_proc", "2")
os.environ.setdefault("nnUNet_compile", "false")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    """A pretraining store of two generated unannotated volumes (c-Fos and nuclei, 48 x 96 x 96), ingested by
    the real ``ingest_store``; read-only for the tests that share it (copy it to change it)."""
    from nnunetv2_selma.store.ingest import ingest_store
    from nnunetv2_selma.synthetic.download import write_unannotated_volume

    root = tmp_path_factory.mktemp("tiny_store")
    for i, structure in enumerate(("cfos", "nucleus")):
        write_unannotated_volume(root / "download" / f"unannotated_{structure}" / f"sample{i}", (48, 96, 96),
                                 structure, seed=i, picture=False)
    report = ingest_store(root / "download", root / "store", progress=False)
    assert report.ok, report.failed
    return root / "store"

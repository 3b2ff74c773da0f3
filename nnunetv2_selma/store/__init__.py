"""The pretraining store: unannotated volumes in blocks and chunks that training reads patch by patch.

* :mod:`~nnunetv2_selma.store.format`: manifest, volume paths, :func:`verify_volume`, :func:`load_manifest`;
* :mod:`~nnunetv2_selma.store.ingest`: the writer (discovery, slab producer, orchestration) behind
  ``nnUNetv2_selma_ingest``;
* :mod:`~nnunetv2_selma.store.reader`: :class:`PretrainingStore` and :func:`open_store`, what pretraining reads.

Writer and reader import the format, never each other. Importing this package imports the reader and
the format only (numpy; no torch, no blosc2 until a volume is opened).
"""

from nnunetv2_selma.store.format import MANIFEST_NAME, load_manifest, verify_volume, volume_paths
from nnunetv2_selma.store.reader import PretrainingStore, StoreVolume, open_store

__all__ = ["MANIFEST_NAME", "PretrainingStore", "StoreVolume", "load_manifest", "open_store", "verify_volume",
           "volume_paths"]

"""Volumes on the ground floor: one reader and one writer interface for every volume kind, exact
streaming statistics and the low-resolution tissue mask.

* :mod:`~nnunetv2_selma.volumes.readers`: :func:`open_volume` -> :class:`VolumeSource` (``shape``,
  ``dtype``, ``geometry``, ``read(region)``, ``read_planes(z0, z1, out)``) for TIFF-slice folders,
  3D TIFF, NIfTI, MHA/NRRD, ``.b2nd`` and OME-Zarr, and the one slice-series listing
  (:func:`~nnunetv2_selma.volumes.readers.list_slice_files`);
* :mod:`~nnunetv2_selma.volumes.writers`: :func:`create_mask_writer` -> :class:`MaskWriter`;
* :mod:`~nnunetv2_selma.volumes.images`: whole 3D images in memory (:func:`read_image`, :func:`write_image`)
  for patches, labels and test cases;
* :mod:`~nnunetv2_selma.volumes.moments`: :class:`ExactHistogram` (exact moments and percentiles of
  <= 16-bit integer images) and :class:`NumpyFloat32Sum` (numpy's float32 sum, fed in pieces);
* :mod:`~nnunetv2_selma.volumes.tissue`: :func:`low_resolution_tissue_mask` and the tissue statistics.

Everything above (store, inference, submission) imports these; nothing here imports them.
"""

from nnunetv2_selma.volumes.moments import ExactHistogram, NumpyFloat32Sum
from nnunetv2_selma.volumes.readers import (
    SUPPORTED_INPUTS,
    MultiChannelVolumeError,
    VolumeSource,
    open_volume,
    volume_kind,
)
from nnunetv2_selma.volumes.writers import SUPPORTED_OUTPUTS, MaskWriter, create_mask_writer

__all__ = ["SUPPORTED_INPUTS", "SUPPORTED_OUTPUTS", "ExactHistogram", "MaskWriter", "MultiChannelVolumeError",
           "NumpyFloat32Sum", "VolumeSource", "create_mask_writer", "open_volume", "volume_kind"]

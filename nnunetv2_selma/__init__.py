"""nnunetv2-selma: nnU-Net v2 extension for self-supervised pretraining and segmentation of
3D light-sheet microscopy (SELMA3D)."""

__version__ = "0.1.0"

"""The one intensity normalisation of nnunetv2-selma (design decision 2).

Every tensor a network of this project sees -- a pretraining patch, a fine-tuning case, a
challenge input, a block of a whole brain -- is normalised the same way: nnU-Net's own
``ZScoreNormalization`` over *the image the user hands in*, with no mask::

    x_norm = (float32(x) - mean) / max(std, 1e-8)

Why this one:

* It is nnU-Net's default for non-CT data and needs no custom class inside nnunetv2 (custom
  normalisers are only looked up there), so ``nnUNetv2_preprocess`` and ``nnUNetPredictor`` do
  exactly this for fine-tuning cases and challenge inputs.
* Light-sheet intensities vary by sample, stain and microscope; per-image statistics absorb
  that, where fixed dataset-wide constants (``CTNormalization``) would not transfer to the
  unseen structures of the challenge's test set.

Where the statistics come from:

* fine-tuning case / challenge input: the case itself (nnU-Net computes them);
* pretraining patch: the patch itself (a sampled patch plays the role of a case; its size is
  that of the SELMA3D fine-tuning patches);
* whole-volume inference: the whole volume, gathered by a streaming pass
  (``inference.volume_statistics.gather_volume_statistics``), which is what nnU-Net would compute if it
  could hold the volume.
"""

from __future__ import annotations

import numpy as np

#: name of the nnU-Net normalisation class written into SELMA plans
NORMALIZATION_SCHEME = "ZScoreNormalization"

_EPS = 1e-8


def normalize_image(image: np.ndarray, mean: float | None = None, std: float | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Normalise ``image`` as nnU-Net's ``ZScoreNormalization`` (no mask) does: the one normalisation.

    Parameters
    ----------
    image : ndarray of any shape and real dtype (uint16, int16, float...)
        Negative values are kept (int16 light-sheet data).
    mean, std : float, optional
        Statistics to use (a whole volume's, streamed); by default the image's own, computed as nnU-Net
        does (float32), which makes the result bit-identical to
        ``ZScoreNormalization(use_mask_for_norm=False).run(image)`` (fine-tuning case, challenge input,
        pretraining patch). ``std`` below 1e-8 is replaced by 1e-8 (a constant image maps to 0).
    out : float32 ndarray of ``image``'s shape, optional
        Written in place (e.g. a view into a larger block array), so no extra float32 copy is made.

    Returns
    -------
    ndarray of float32, same shape as ``image`` (``out`` when given).
    """
    if out is None:
        out = np.asarray(image).astype(np.float32, copy=True)
    else:
        out[...] = image
    if mean is None or std is None:
        own_mean, own_std = out.mean(), out.std()  # float32, as nnU-Net computes them
        mean = own_mean if mean is None else mean
        std = own_std if std is None else std
    out -= np.float32(mean)
    out /= np.float32(max(float(std), _EPS))
    return out


def image_statistics(image: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of ``image`` exactly as nnU-Net computes them (float32)."""
    image = np.asarray(image).astype(np.float32, copy=False)
    return float(image.mean()), float(image.std())

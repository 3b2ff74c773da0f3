"""SELMA3D leaderboard metrics over binary 3D masks.

Every function takes a prediction and a reference of the same 3D shape. Any numeric or boolean
array is accepted; foreground is ``value > 0`` (the leaderboard binarised its inputs the same
way). Voxel spacing is isotropic 1 unless a function says otherwise (SELMA3D ships no spacing).

Which edition uses what (see :mod:`nnunetv2_selma.evaluation.leaderboard`):

* 2024: Dice, Betti-0/Betti-1 errors, clDice.
* 2025: Dice, Betti errors, clDice, HD95.
* 2026: Dice, panoptic quality with Dice-based SQ (panoptica's ``pq_dsc``), clDice without
  smoothing (panoptica's centerline Dice); both NaN in their edge cases, as on the leaderboard.

The definitions of Dice, Betti numbers, Betti errors and clDice are the 2024 official ones
(reproduced in ``SELMA3D.md``, section "Evaluation"); the later editions reuse them.
"""

from __future__ import annotations

import numpy as np

#: smoothing constant of the 2024 clDice formula (part of the official definition)
CLDICE_SMOOTH = 1e-6
#: IoU a predicted and a reference component need to be matched for PQ (2026 rules)
PQ_IOU_THRESHOLD = 0.3


def as_binary_mask(array: np.ndarray, name: str = "mask") -> np.ndarray:
    """``array > 0`` as a C-contiguous boolean 3D array.

    Parameters
    ----------
    array : ndarray, 3D, any numeric or boolean dtype
    name : what to call the array in an error message

    Raises
    ------
    ValueError if the array is not 3D or holds NaN/infinite values (``NaN > 0`` is False, so a
    NaN-valued prediction would otherwise score as all background).
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name}: found an array of shape {array.shape}; expected a 3D array (z, y, x)")
    if array.dtype == bool:
        return np.ascontiguousarray(array)
    check_finite(array, name)
    return np.ascontiguousarray(array > 0)


def check_finite(array: np.ndarray, name: str = "mask") -> None:
    """Raise ValueError naming ``name`` when a floating-point ``array`` holds NaN or infinite values."""
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        bad = array.size - int(np.isfinite(array).sum())
        raise ValueError(f"{name}: holds {bad} NaN/infinite value(s) of {array.size} ({array.dtype}); expected a "
                         "finite 0/1 mask. Regenerate it; a NaN is neither foreground nor background")


def binary_pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks through :func:`as_binary_mask`; ValueError if not 3D or shapes differ."""
    pred = as_binary_mask(pred, "prediction")
    ref = as_binary_mask(ref, "reference")
    if pred.shape != ref.shape:
        raise ValueError(
            f"prediction has shape {pred.shape} but reference has shape {ref.shape}; expected equal shapes"
        )
    return pred, ref


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|P ∩ G| / (|P| + |G|)`` (2024 definition, reused by 2025 and 2026).

    Parameters
    ----------
    pred, ref : ndarray, 3D, same shape; foreground is ``> 0``

    Returns
    -------
    float in [0, 1]; 1.0 when both masks are empty (the leaderboard's rule), 0.0 when exactly
    one is empty.
    """
    pred, ref = binary_pair(pred, ref)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


def betti_numbers(mask: np.ndarray) -> tuple[int, int, int]:
    """Betti numbers ``(b0, b1, b2)`` of a binary 3D mask (2024 definition, reused by 2025).

    The mask is padded with one voxel of background on every side, then

    * b0 = number of 26-connected foreground components,
    * b2 = number of 6-connected background components minus 1 (enclosed cavities),
    * chi = Euler number with 26-connectivity (``skimage.measure.euler_number``, connectivity=3),
    * b1 = b0 + b2 - chi (tunnels / handles; a torus has b1 = 1).

    26-connected foreground and 6-connected background are the dual pair that makes
    chi = b0 - b1 + b2 hold on a voxel grid.

    Parameters
    ----------
    mask : ndarray, 3D; foreground is ``> 0``

    Returns
    -------
    (b0, b1, b2) : ints; (0, 0, 0) for an empty mask.
    """
    import cc3d
    from skimage.measure import euler_number

    padded = np.pad(as_binary_mask(mask), 1, mode="constant", constant_values=False)
    if not padded.any():
        return 0, 0, 0
    _, b0 = cc3d.connected_components(padded, connectivity=26, return_N=True)
    _, n_background = cc3d.connected_components(~padded, connectivity=6, return_N=True)
    b2 = int(n_background) - 1
    chi = int(euler_number(padded, connectivity=3))
    b1 = int(b0) + b2 - chi
    return int(b0), int(b1), int(b2)


def betti_errors(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int]:
    """Betti errors ``(|b0(P) - b0(G)|, |b1(P) - b1(G)|)`` (2024 definition, reused by 2025).

    Parameters
    ----------
    pred, ref : ndarray, 3D, same shape; foreground is ``> 0``

    Returns
    -------
    (betti_error_0, betti_error_1) : non-negative ints; both 0 when both masks are empty. An
    empty prediction against a reference with k components has Betti-0 error k.
    """
    pred, ref = binary_pair(pred, ref)
    b0_p, b1_p, _ = betti_numbers(pred)
    b0_g, b1_g, _ = betti_numbers(ref)
    return abs(b0_p - b0_g), abs(b1_p - b1_g)


def skeleton(mask: np.ndarray) -> np.ndarray:
    """3D skeleton of a binary mask (``skimage.morphology.skeletonize``), boolean, same shape."""
    from skimage.morphology import skeletonize

    mask = as_binary_mask(mask)
    if not mask.any():
        return np.zeros_like(mask)
    return skeletonize(mask).astype(bool, copy=False)


def cldice_terms(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """The two skeleton overlaps of the 2024 clDice, ``(tprec, tsens)``.

    With S(.) the 3D skeleton (:func:`skeleton`)::

        tprec = |P ∩ S(G)| / |S(G)|      (0 when S(G) is empty)
        tsens = |G ∩ S(P)| / |S(P)|      (0 when S(P) is empty)

    Parameters
    ----------
    pred, ref : ndarray, 3D, same shape; foreground is ``> 0``

    Returns
    -------
    (tprec, tsens) : floats in [0, 1]
    """
    pred, ref = binary_pair(pred, ref)
    skel_ref = skeleton(ref)
    skel_pred = skeleton(pred)
    n_ref = int(skel_ref.sum())
    n_pred = int(skel_pred.sum())
    tprec = int(np.count_nonzero(pred & skel_ref)) / n_ref if n_ref else 0.0
    tsens = int(np.count_nonzero(ref & skel_pred)) / n_pred if n_pred else 0.0
    return tprec, tsens


def cldice_from_terms(tprec: float, tsens: float) -> float:
    """``(2 tprec tsens + 1e-6) / (tprec + tsens + 1e-6)``, the 2024 clDice formula."""
    return (2.0 * tprec * tsens + CLDICE_SMOOTH) / (tprec + tsens + CLDICE_SMOOTH)


def cldice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Centerline Dice, the 2024 official formula (reused by 2025 and 2026).

    ``clDice = (2 tprec tsens + 1e-6) / (tprec + tsens + 1e-6)`` with the skeleton overlaps of
    :func:`cldice_terms` (3D skeletons by ``skimage.morphology.skeletonize``).

    Parameters
    ----------
    pred, ref : ndarray, 3D, same shape; foreground is ``> 0``

    Returns
    -------
    float in [0, 1]. Edge cases of this formula, kept because the leaderboard had them:
    both empty gives 1.0, and so does ANY pair whose two skeleton overlaps are both zero
    (an empty prediction against a non-empty reference, or disjoint masks), since then the
    formula is 1e-6 / 1e-6. Callers that want to warn use :func:`cldice_terms` and check for
    ``tprec == tsens == 0``.
    """
    return cldice_from_terms(*cldice_terms(pred, ref))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with a 6-neighbour in the background (image border counts as background)."""
    from scipy.ndimage import binary_erosion, generate_binary_structure

    return mask & ~binary_erosion(mask, structure=generate_binary_structure(3, 1), border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> float:
    """95th percentile Hausdorff distance between the mask surfaces (2025 definition).

    Surfaces are the foreground voxels with a 6-connected background neighbour (the image
    border counts as background). The distances from every predicted surface voxel to the
    nearest reference surface voxel and from every reference surface voxel to the nearest
    predicted one are pooled, and their 95th percentile is returned (the ``medpy`` ``hd95``
    convention, which Grand Challenge evaluations commonly use).

    Parameters
    ----------
    pred, ref : ndarray, 3D, same shape; foreground is ``> 0``
    spacing : voxel size along (z, y, x); SELMA3D has none, so 1.

    Returns
    -------
    float >= 0 in the units of ``spacing``. Edge cases (a choice; the published rules do not
    say): both empty gives 0.0 (perfect agreement); exactly one empty gives the image diagonal
    ``|shape * spacing|``, the largest distance possible in the image, and the caller should
    warn (the evaluation command does, naming the case). A NaN would be dropped from the mean over cases and
    let an empty prediction escape its penalty; 0 would reward it.
    """
    from scipy.spatial import cKDTree

    pred, ref = binary_pair(pred, ref)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if not (has_pred and has_ref):
        return float(np.linalg.norm(np.asarray(pred.shape) * spacing_arr))
    # nearest-surface distances with a k-d tree over surface voxels: exact Euclidean, and far
    # cheaper than full-volume distance transforms for thin structures
    pts_pred = np.argwhere(_surface(pred)) * spacing_arr
    pts_ref = np.argwhere(_surface(ref)) * spacing_arr
    d_pred_to_ref, _ = cKDTree(pts_ref).query(pts_pred, k=1)
    d_ref_to_pred, _ = cKDTree(pts_pred).query(pts_ref, k=1)
    return float(np.percentile(np.concatenate([d_pred_to_ref, d_ref_to_pred]), 95))


def _panoptica_evaluator(iou_threshold: float):
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        Metric,
        NaiveThresholdMatching,
        Panoptica_Evaluator,
    )
    from panoptica.utils.citation_reminder import disable_citation_reminder

    disable_citation_reminder()  # it prints a banner into every worker's output otherwise
    # the organisers' 2026 configuration: cc3d components (cca_backend=None picks cc3d in 3D),
    # matching on IoU >= threshold (NaiveThresholdMatching's default metric, not strict), DSC per pair
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(cca_backend=None),
        instance_matcher=NaiveThresholdMatching(matching_metric=Metric.IOU, matching_threshold=iou_threshold),
        instance_metrics=[Metric.DSC],
        log_times=False,
        verbose=False,
    )


def panoptic_quality(pred: np.ndarray, ref: np.ndarray, iou_threshold: float = PQ_IOU_THRESHOLD) -> float:
    """Panoptic quality with Dice-based segmentation quality, panoptica's ``pq_dsc`` (2026 definition).

    Binary masks have no instance labels, so instances are approximated by connected
    components (panoptica's ``ConnectedComponentsInstanceApproximator``, cc3d, 26-connected
    in 3D). Components are matched one-to-one when their IoU is at least ``iou_threshold``
    (``NaiveThresholdMatching``, 0.3 in the 2026 code; IoU exactly 0.3 matches). Then::

        PQ = SQ * RQ,  SQ = mean Dice of matched pairs,  RQ = TP / (TP + FP/2 + FN/2)

    SQ is the mean Dice, not the mean IoU of the textbook PQ: the organisers report ``pq_dsc``.

    Parameters
    ----------
    pred, ref : ndarray, 3D, same shape; foreground is ``> 0``
    iou_threshold : matching threshold on IoU

    Returns
    -------
    float in [0, 1], or NaN when both masks are empty (as panoptica and the leaderboard give);
    exactly one empty gives 0.0.
    """
    pred, ref = binary_pair(pred, ref)
    if not (pred.any() or ref.any()):
        return float("nan")
    results = _panoptica_evaluator(iou_threshold).evaluate(pred.astype(np.uint8), ref.astype(np.uint8))
    (result,) = results.values()
    return float(result.pq_dsc)


def centerline_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Centerline Dice without smoothing, as panoptica computes it (2026 definition).

    With S(.) the 3D skeleton (:func:`skeleton`)::

        tprec = |P ∩ S(G)| / |S(G)|,  tsens = |G ∩ S(P)| / |S(P)|,
        clDice = 2 tprec tsens / (tprec + tsens)

    Unlike the 2024 formula (:func:`cldice`) there is no 1e-6 term, so the edge cases are NaN.

    Parameters
    ----------
    pred, ref : ndarray, 3D, same shape; foreground is ``> 0``

    Returns
    -------
    float in [0, 1], or NaN when either skeleton is empty (an empty mask, or an object whose
    skeleton vanishes, such as a 2-voxel-wide bar) or when both overlaps are 0 (disjoint masks).
    """
    pred, ref = binary_pair(pred, ref)
    skel_ref, skel_pred = skeleton(ref), skeleton(pred)
    n_ref, n_pred = int(skel_ref.sum()), int(skel_pred.sum())
    if n_ref == 0 or n_pred == 0:
        return float("nan")
    tprec = int(np.count_nonzero(pred & skel_ref)) / n_ref
    tsens = int(np.count_nonzero(ref & skel_pred)) / n_pred
    if tprec + tsens == 0:
        return float("nan")
    return 2.0 * tprec * tsens / (tprec + tsens)

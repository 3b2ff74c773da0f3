"""Semi-supervised fine-tuning: nnU-Net's labelled batch plus a mean-teacher loss on store patches.

``nnUNetv2_train D 3d_fullres F -tr nnUNetTrainerSelmaSemi -p nnUNetSelmaPlans_M`` trains as
:class:`~nnunetv2_selma.training.trainers.nnUNetTrainerSelma` does (nnU-Net's batch, augmentation and
Dice + CE loss with deep supervision) and, in the same iteration, on a batch of unannotated patches
from the pretraining store (the tissue-aware sampler, restricted to the unannotated folders of the
dataset's structure): an exponential moving average of the network (the *teacher*) segments a weak
view of each patch (the patch itself), the network (the *student*) a strong view (intensity scale and
shift, gamma, noise, blur, random flips undone on its output), and the student is pulled towards the
teacher's softmax where the teacher is confident (mean squared difference of probabilities on voxels
whose teacher confidence reaches ``semi_confidence``). The weight of that term rises from 0 to
``semi_weight`` over the first ``semi_rampup`` of the iterations (a sigmoid ramp), so the teacher has
learnt something from the labels before it teaches.

Why during fine-tuning and not only before: the unannotated volumes show the network the imaging
conditions (other brains, microscopes, stains) its few labelled patches do not, and the teacher's
confident predictions there carry the labels' meaning into them; pretraining alone learnt features
that fine-tuning from one or two patches did not keep (``benchmarks/RESULTS.md``).

The store is found as :class:`~nnunetv2_selma.training.ssl_trainers.nnUNetTrainerSelmaMAE` finds it
(``nnUNet_selma_store``, else the plans' ``selma_pretraining_store``). The unannotated batch of
iteration ``i`` on rank ``r`` is a pure function of ``(semi_seed, r, i)``, and the teacher is saved in
every checkpoint (``selma_teacher_weights``), so ``--c`` continues with the same teacher and patches.
With DDP every rank updates its teacher from the same synchronised student: the teachers stay equal.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from nnunetv2.utilities.helpers import dummy_context
from scipy import ndimage
from torch import autocast

from nnunetv2_selma.checkpoint_io import atomic_torch_save, unwrap_network
from nnunetv2_selma.pretraining.data import sample_batch
from nnunetv2_selma.store.reader import open_store
from nnunetv2_selma.structures import STRUCTURES, SUBSETS
from nnunetv2_selma.training.ssl_trainers import nnUNetTrainerSelmaMAE, pretraining_store
from nnunetv2_selma.training.trainers import nnUNetTrainerSelma

__all__ = [
    "TEACHER_KEY",
    "TEACHER_UPDATES_KEY",
    "nnUNetTrainerSelmaSemi",
    "nnUNetTrainerSelmaMAESemi",
    "nnUNetTrainerSelmaSemiPLStyleCopies",
    "structure_folders",
    "mean_teacher_loss",
    "pseudo_label_loss",
    "brightest_patches",
    "amplitude_mix",
    "ema_update",
    "object_scale",
    "zoom_about_centre",
]
#: where ``semi_align`` takes its share from, besides a stated number (:class:`nnUNetTrainerSelmaSemi`)
ALIGN_SOURCES = ("labelled", "rescaled")

#: checkpoint entry counting the teacher's updates (one per training iteration)
TEACHER_UPDATES_KEY = "selma_teacher_updates"

#: checkpoint entry holding the teacher's weights
TEACHER_KEY = "selma_teacher_weights"


def structure_folders(dataset_name: str) -> list[str] | None:
    """The store's structure names (unannotated folders) of an nnU-Net dataset: ``Dataset721_SELMA3D_Nuclei``
    -> ``["nucleus"]``; None when the name names no known structure (then every store volume is used)."""
    tail = dataset_name.split("_", 1)[1].lower() if "_" in dataset_name else dataset_name.lower()
    for subset in SUBSETS.values():
        if tail.endswith(subset.dataset_structure.lower()):
            folders = STRUCTURES[subset.structure].unannotated_folders
            return list(folders) if folders else None
    return None


def mean_teacher_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      confidence: float) -> tuple[torch.Tensor, float]:
    """Mean squared difference of softmax probabilities on the voxels where the teacher is confident.

    Parameters
    ----------
    student_logits, teacher_logits : (B, C, z, y, x), same shape; the teacher's carry no gradient.
    confidence : a voxel counts when the teacher's largest probability reaches it.

    Returns
    -------
    (loss, fraction of voxels that counted). The loss is averaged over all voxels (masked ones add 0), so
    its scale does not jump when the confident fraction changes; it is 0 when no voxel is confident.
    """
    p_student = torch.softmax(student_logits.float(), 1)
    p_teacher = torch.softmax(teacher_logits.float(), 1)
    mask = (p_teacher.max(1, keepdim=True).values >= confidence).float()
    loss = (((p_student - p_teacher) ** 2).sum(1, keepdim=True) * mask).mean()
    return loss, float(mask.mean())


SHARE_CAPS = ("background", "left_out")  # what the teacher's foreground past the share cap becomes


def share_capped_labels(p_teacher: torch.Tensor, foreground_share: float, band: float = 0.5,
                        past_cap: str = "background") -> tuple[torch.Tensor, torch.Tensor]:
    """Binary hard labels of a batch by the rank of the teacher's foreground probability, so the pseudo-labels
    cannot hold much more foreground than the labelled cases do, whatever the teacher's bias in a new domain.

    Foreground: the ``foreground_share * (1 - band)`` of the voxels with the highest foreground probability
    that the teacher also calls foreground (at least 0.5); background: every voxel below the
    ``foreground_share * (1 + band)`` highest; the voxels between are left out. A teacher that outlines
    look-alikes as objects in an unseen domain (three times the true foreground on plaques) has most of them
    called background; one that misses objects has its doubtful voxels left out, not called background. It
    never forces foreground: a batch without objects gets none.

    ``past_cap="left_out"`` makes it a cap from above only: a voxel below the ``foreground_share * (1 + band)`` highest
    is background only where the teacher also calls it so (below 0.5); the teacher's foreground past the cap is
    left out, not called background. So a share that underestimates the unseen domain's (one or two labelled
    cases hold a third of its nuclei) cannot teach objects away; the price is that look-alikes past the cap are
    no longer taught as background either.

    Returns (labels (B, z, y, x) int64, mask (B, z, y, x) float: 1 where a voxel counts).
    """
    if p_teacher.shape[1] != 2:
        raise ValueError(f"share_capped_labels: binary segmentation only; the teacher gives {p_teacher.shape[1]} "
                         "classes")
    if past_cap not in SHARE_CAPS:
        raise ValueError(f"share_capped_labels: past_cap must be one of {SHARE_CAPS}, got {past_cap!r}")
    p_fg = p_teacher[:, 1]
    flat = p_fg.flatten()
    n = flat.numel()

    def kth_highest(share: float) -> torch.Tensor:
        return torch.topk(flat, min(n, max(1, int(round(n * share))))).values[-1]

    foreground = (p_fg >= kth_highest(foreground_share * (1 - band))) & (p_fg >= 0.5)
    background = p_fg < kth_highest(foreground_share * (1 + band))
    if past_cap == "left_out":
        background &= p_fg < 0.5
    return foreground.long(), (foreground | background).float()


def align_to_share(p_teacher: torch.Tensor, share: float, max_factor: float = 30.0) -> torch.Tensor:
    """The teacher's binary probabilities reweighted so their batch mean is ``share`` (the labelled cases'
    foreground share): distribution alignment (ReMixMatch's), solved exactly on the batch.

    Every voxel's foreground odds are multiplied by one factor, found by bisection so the batch's mean
    foreground probability becomes ``share``; the factor is held within ``[1 / max_factor, max_factor]`` so a
    batch without objects is not filled with foreground (its background stays below 0.03 at 0.001).

    Why: in an unseen imaging domain the one- or two-patch nuclei models call a seventh to a third of the true
    foreground and are confidently background on the rest, and confident pseudo-labels teach that miss back.
    One factor keeps the teacher's order: its most probable misses become foreground labels, its doubtful
    voxels are left out, and what it is surest is background stays background.

    Returns the aligned probabilities, shaped as ``p_teacher`` (B, 2, ...).
    """
    if p_teacher.shape[1] != 2:
        raise ValueError(f"align_to_share: binary segmentation only; the teacher gives {p_teacher.shape[1]} classes")
    odds = p_teacher[:, 1].double() / p_teacher[:, 0].double().clamp_min(1e-12)

    def aligned(log_factor: float) -> torch.Tensor:
        scaled = odds * np.exp(log_factor)
        return scaled / (1 + scaled)

    low, high = -np.log(max_factor), np.log(max_factor)
    for _ in range(40):  # the mean rises with the factor: bisection to a factor within 1e-11 of the solution
        middle = (low + high) / 2
        low, high = (middle, high) if float(aligned(middle).mean()) < share else (low, middle)
    fg = aligned((low + high) / 2).to(p_teacher.dtype)
    return torch.stack([1 - fg, fg], 1)


#: Gaussian scales (voxels) :func:`object_scale` searches: blob radii of about 1.7 to 10 voxels
OBJECT_SCALES = tuple(float(s) for s in np.arange(1.0, 6.01, 0.25))


def object_scale(image: np.ndarray, scales=OBJECT_SCALES, quantile: float = 99.5, max_side: int = 64) -> float:
    """The size of the bright round objects in ``image`` (z, y, x), label-free: the Gaussian scale at which the
    scale-normalised Laplacian of Gaussian (``-s^2 LoG_s``, Lindeberg's blob measure) responds most strongly,
    its ``quantile`` over the voxels taken as the response. A uniform ball of radius ``r`` answers most at
    ``s = r / sqrt(3)``. The answer does not depend on the image's intensity scale or offset; images larger
    than ``max_side`` along an axis are measured on their central ``max_side`` (time).

    Used by ``semi_align = "rescaled"``: where object size changes between imaging domains at the same object
    density, the foreground share changes as the cube of the size, and one scale per image set measures it.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"object_scale: expected a 3D image (z, y, x); got shape {x.shape}")
    x = x[tuple(slice(max(0, (n - max_side) // 2), max(0, (n - max_side) // 2) + max_side) for n in x.shape)]
    x = (x - x.mean()) / (x.std() + 1e-6)
    response = [np.percentile(-(s ** 2) * ndimage.gaussian_laplace(x, s, mode="reflect"), quantile) for s in scales]
    return float(scales[int(np.argmax(response))])


def pseudo_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, confidence: float,
                      foreground_share: float | None = None, past_cap: str = "background",
                      align_share: float | None = None) -> tuple[torch.Tensor, float]:
    """The teacher's confident hard labels as targets (FixMatch's rule), scored as nnU-Net scores its labels:
    cross-entropy averaged over the confident voxels plus 1 - soft Dice of the foreground classes over them.
    With ``foreground_share`` (binary only) the labels and the voxels that count come from
    :func:`share_capped_labels` (``past_cap`` passed on) instead of the confidence. With ``align_share`` (binary
    only) the teacher's probabilities are first aligned to that foreground share (:func:`align_to_share`).

    Why beside :func:`mean_teacher_loss`: on store patches nearly every voxel is confidently background, so a
    squared difference averaged over all voxels is about 0.001 after a few epochs and teaches almost nothing
    about the rare foreground; the Dice term does not shrink with the foreground's share of the patch.

    Returns (loss, fraction of voxels that counted); the loss is 0 when no voxel is confident.
    """
    p_teacher = torch.softmax(teacher_logits.float(), 1)
    if align_share is not None:
        p_teacher = align_to_share(p_teacher, align_share)
    if foreground_share is None:
        top, labels = p_teacher.max(1)
        mask = (top >= confidence).float()
    else:
        labels, mask = share_capped_labels(p_teacher, foreground_share, past_cap=past_cap)
    n = mask.sum()
    if n == 0:
        return student_logits.sum() * 0.0, 0.0
    logits = student_logits.float()
    ce = (torch.nn.functional.cross_entropy(logits, labels, reduction="none") * mask).sum() / n
    p_student = torch.softmax(logits, 1)[:, 1:]
    onehot = torch.nn.functional.one_hot(labels, logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    m = mask[:, None]
    dims = (0, *range(2, logits.ndim))
    intersection = (p_student * onehot * m).sum(dims)
    dice = (2 * intersection + 1e-5) / ((p_student * m).sum(dims) + (onehot * m).sum(dims) + 1e-5)
    return ce + (1 - dice.mean()), float(mask.mean())


def brightest_patches(patches: np.ndarray, keep: int, quantile: float = 99.5) -> np.ndarray:
    """The ``keep`` patches of ``patches`` (N, C, z, y, x; each z-scored on its own) whose ``quantile``-th
    percentile is highest, in their drawn order: a patch holding bright objects has a long upper tail, a
    patch of plain tissue or background does not. All patches when ``keep >= N``.

    Why: a tissue-aware store patch is nearly all background for sparse structures (c-Fos cells, nuclei at
    low density), so the teacher's confident labels on it say "background" on 99.8% of the voxels and teach
    little about the objects of a new imaging domain; drawing several candidates and keeping the brightest
    puts objects (and their bright look-alikes) into every unannotated batch without looking at any label.
    """
    if keep >= len(patches):
        return patches
    scores = np.percentile(patches.reshape(len(patches), -1), quantile, axis=1)
    chosen = np.sort(np.argsort(-scores, kind="stable")[:keep])
    return patches[chosen]


def amplitude_mix(images: torch.Tensor, styles: torch.Tensor, weights: torch.Tensor,
                  band: float | None = None) -> torch.Tensor:
    """Patches with the phase of ``images`` and the amplitude spectrum ``(1 - w) |F(image)| + w |F(style)|``
    (amplitude mixing, as in Fourier domain adaptation); ``images`` and ``styles`` (B, C, z, y, x), ``weights``
    (B,) in [0, 1]; weight 0 returns the image. ``band`` (cycles per voxel) limits the mixing to low
    frequencies: at frequency ``f`` the weight is ``w exp(-f^2 / (2 band^2))``, so background, illumination and
    texture move and the objects' edges stay; None mixes the whole spectrum.

    Why: blur, noise floor, autofluorescence texture and stripes of an imaging domain live mostly in the
    amplitude spectrum, where the objects are lives mostly in the phase; so a labelled patch restyled towards a
    store patch of a never-labelled domain keeps its labels and shows the network that domain's conditions.
    """
    dims = tuple(range(2, images.ndim))
    f_image = torch.fft.fftn(images.float(), dim=dims)
    f_style = torch.fft.fftn(styles.float(), dim=dims)
    w = weights.float().view(-1, *([1] * (images.ndim - 1)))
    if band is not None:
        grids = torch.meshgrid(*(torch.fft.fftfreq(images.shape[d], device=images.device) for d in dims),
                               indexing="ij")
        w = w * torch.exp(-sum(g ** 2 for g in grids) / (2 * band ** 2))
    amplitude = (1 - w) * f_image.abs() + w * f_style.abs()
    mixed = torch.fft.ifftn(torch.polar(amplitude, f_image.angle()), dim=dims).real
    return mixed.to(images.dtype)


#: the size ratios ``semi_style_zoom`` is held within (a store measured on another kind of object stays bounded)
ZOOM_LIMITS = (0.5, 2.0)


def zoom_about_centre(x: torch.Tensor, factor: float, labels: bool = False) -> torch.Tensor:
    """``x`` (C, z, y, x) resampled so everything in it is ``factor`` times larger, about its centre, in the same
    shape: the middle cut out where it grows, reflected out to the border where it shrinks. Images trilinear,
    ``labels`` nearest (their values stay label values). ``factor`` within :data:`ZOOM_LIMITS`."""
    if not ZOOM_LIMITS[0] <= factor <= ZOOM_LIMITS[1]:
        raise ValueError(f"zoom_about_centre: factor must be within {ZOOM_LIMITS}, got {factor}")
    shape = x.shape[1:]
    size = [max(2, int(round(n * factor))) for n in shape]
    mode = {"mode": "nearest"} if labels else {"mode": "trilinear", "align_corners": False}
    y = torch.nn.functional.interpolate(x[None].float(), size=size, **mode)[0]
    y = y[(slice(None), *(slice(max(0, (m - n) // 2), max(0, (m - n) // 2) + n) for m, n in zip(size, shape)))]
    pads = []
    for m, n in reversed(list(zip(y.shape[1:], shape))):  # F.pad names the last dimension first
        pads += [(n - m) // 2, n - m - (n - m) // 2]
    if any(pads):
        y = torch.nn.functional.pad(y[None], pads, mode="reflect")[0]
    return y.to(x.dtype)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher = decay * teacher + (1 - decay) * student, tensor by tensor (integer buffers are copied)."""
    student_state = student.state_dict()
    for name, t in teacher.state_dict().items():
        s = student_state[name].detach()
        if t.dtype.is_floating_point:
            t.mul_(decay).add_(s, alpha=1.0 - decay)
        else:
            t.copy_(s)


def sigmoid_rampup(step: int, length: int) -> float:
    """0 -> 1 as ``exp(-5 (1 - t)^2)`` over ``length`` steps (Laine & Aila's ramp), 1 after."""
    if length <= 0 or step >= length:
        return 1.0
    t = max(0.0, step) / length
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def strong_view(images: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """The student's view of normalised patches ``images`` (B, C, z, y, x): per patch a contrast scale
    (0.7-1.3) and shift (+-0.2), gamma (0.7-1.5 on the rescaled intensities), Gaussian noise (std 0-0.2),
    Gaussian blur (sigma 0.5-1.2, half the patches) and random flips. Returns the view and each patch's
    flipped axes (tensor dims), to undo on the student's output."""
    from scipy import ndimage

    out = np.empty(images.shape, np.float32)
    flips = []
    src = images.detach().cpu().numpy()
    for b in range(src.shape[0]):
        x = src[b] * rng.uniform(0.7, 1.3) + rng.uniform(-0.2, 0.2)
        lo, hi = float(x.min()), float(x.max())
        if hi > lo:
            x = ((x - lo) / (hi - lo)) ** rng.uniform(0.7, 1.5) * (hi - lo) + lo
        x = x + rng.normal(0.0, rng.uniform(0.0, 0.2), x.shape)
        if rng.random() < 0.5:
            s = rng.uniform(0.5, 1.2)
            x = np.stack([ndimage.gaussian_filter(c, s) for c in x])
        axes = tuple(int(a) + 2 for a in range(x.ndim - 1) if rng.random() < 0.5)
        flips.append(axes)
        out[b] = x
    return flip_each(torch.from_numpy(out).to(images.device), flips), flips


def flip_each(batch: torch.Tensor, flips: list[tuple[int, ...]]) -> torch.Tensor:
    """Flip each sample of ``batch`` along its own axes (tensor dims of the batch); flipping twice undoes it."""
    return torch.stack([torch.flip(b[None], a)[0] if a else b for b, a in zip(batch, flips)])


class nnUNetTrainerSelmaSemi(nnUNetTrainerSelma):
    """Fine-tuning with a mean-teacher consistency loss on unannotated store patches (see the module docstring).

    Class attributes
    ----------------
    semi_weight : largest weight of the consistency term (reached after the ramp); 0: no unannotated loss and
        no teacher pass, the store patches serve only as styles for ``semi_style_mix``
    semi_rampup : fraction of all iterations over which the weight rises from 0
    semi_ema : teacher decay per iteration (teacher = ema * teacher + (1 - ema) * student)
    semi_confidence : a voxel counts when the teacher's largest probability reaches it
    semi_loss : ``consistency`` (:func:`mean_teacher_loss`) or ``pseudo_labels`` (:func:`pseudo_label_loss`)
    semi_batch_size : unannotated patches per iteration (None: the plans' batch size)
    semi_candidates : store patches drawn per unannotated patch kept; above 1 the brightest are kept
        (:func:`brightest_patches`), so the batch holds objects and not only background
    semi_style_mix : probability that a labelled patch is restyled towards a store patch of the same iteration
        (:func:`amplitude_mix`, a random share of its amplitude spectrum); 0 leaves nnU-Net's batch as it is
    semi_style_band : the restyling's frequency band (cycles per voxel, :func:`amplitude_mix`); None: all
    semi_style_copies : the restyled patches join the batch as copies beside their originals (with the same
        labels) instead of replacing them, so the labelled patches are always also seen as they are
    semi_style_zoom : with ``semi_style_copies``, each copy also resized towards the store's object size: by
        ``ratio ** w`` (``w`` its restyling weight, ``ratio`` the store's :func:`object_scale` over the labelled
        images', measured once as for ``"rescaled"``, held within :data:`ZOOM_LIMITS`), images and labels alike
        (:func:`zoom_about_centre`); for new volumes whose objects look larger or smaller than the labelled ones
    semi_share_cap : None: pseudo-labels by confidence; ``"background"`` or ``"left_out"``: by rank under the
        labelled cases' foreground share (:func:`share_capped_labels`), the teacher's foreground past the cap
        called background or left out (its ``past_cap``); ``pseudo_labels`` and binary datasets only
    semi_align : None, ``"labelled"``, ``"rescaled"`` or a share in (0, 1): the teacher's probabilities aligned
        to a foreground share before the confident pseudo-labels are taken (:func:`align_to_share`): the labelled
        cases' share; that share times the cube of the store's object size over the labelled images' object size
        (:meth:`_rescaled_share`, label-free on the store: objects as many per voxel, of another size); or the
        one stated (a known cell density). ``pseudo_labels`` and binary datasets only, not with ``semi_share_cap``
    semi_scale_patches : store patches whose object size ``"rescaled"`` measures (drawn once, from their own
        stream, so ``--c`` finds the same share)
    semi_full_cases : above this many labelled training cases the unannotated weight and the restyling
        probability fall as ``semi_full_cases / cases`` (:meth:`_label_share`): the more labels, the less the
        unannotated volumes can add and the more their errors cost; None: full weight at any label count
    semi_seed : seed of the unannotated stream
    """

    semi_weight: float = 1.0
    semi_rampup: float = 0.3
    semi_ema: float = 0.99
    semi_confidence: float = 0.8
    semi_loss: str = "consistency"
    semi_batch_size: int | None = None
    semi_candidates: int = 1
    semi_style_mix: float = 0.0
    semi_style_band: float | None = None
    semi_style_copies: bool = False
    semi_style_zoom: bool = False
    semi_full_cases: int | None = None
    semi_share_cap: str | None = None
    semi_align: str | float | None = None
    semi_scale_patches: int = 64
    semi_seed: int = 0

    # per-run state, set on the instance when training starts (no __init__: nnU-Net records the signature of
    # __init__ in every checkpoint and replays it)
    teacher: torch.nn.Module | None = None
    _teacher_weights_to_load: dict | None = None
    _semi_store = None
    _semi_structures: list[str] | None = None
    _iteration_in_epoch: int = 0
    _teacher_updates: int = 0
    _teacher_updates_to_load: int | None = None
    _semi_log: list[tuple[float, float]] = []  # replaced per epoch by on_train_epoch_start, never appended to here
    _restyled: tuple[int, int] = (0, 0)  # (restyled, all) labelled patches of the epoch
    _share: float = 1.0  # the unannotated share of this run (:meth:`_label_share`)
    _foreground_share: float | None = None  # the labelled cases' foreground share, with semi_share_cap or semi_align
    _zoom_ratio: float = 1.0  # store object scale / labelled object scale, with semi_style_zoom
    _scales: tuple[float, float, float] | None = None  # :meth:`_object_scales`, measured once per run

    @property
    def _learns_from_store(self) -> bool:
        """Whether the store patches carry a loss (``semi_weight > 0``); with 0 they are style sources only
        (``semi_style_mix``)."""
        return self.semi_weight > 0

    # -- set-up ---------------------------------------------------------------------------------
    def on_train_start(self):
        # configuration first, before nnU-Net starts its data loaders (the label manager comes from the plans)
        if self.semi_share_cap is not None and self.semi_share_cap not in SHARE_CAPS:
            raise ValueError(f"{type(self).__name__}: semi_share_cap must be None or one of {SHARE_CAPS} (what "
                             f"the teacher's foreground past the cap becomes), got {self.semi_share_cap!r}")
        if self.semi_align is not None and self.semi_align not in ALIGN_SOURCES and not (
                isinstance(self.semi_align, float) and 0 < self.semi_align < 1):
            raise ValueError(f"{type(self).__name__}: semi_align must be None, one of {ALIGN_SOURCES} or a foreground "
                             f"share between 0 and 1, got {self.semi_align!r}")
        if self.semi_share_cap is not None and self.semi_align is not None:
            raise ValueError(f"{type(self).__name__}: semi_share_cap and semi_align both set; the cap takes "
                             "pseudo-labels by rank, the alignment by confidence: choose one")
        if self.semi_style_zoom and not self.semi_style_copies:
            raise ValueError(f"{type(self).__name__}: semi_style_zoom resizes the restyled copies; it needs "
                             "semi_style_copies")
        binary_pseudo_labels = self.semi_loss == "pseudo_labels" and len(self.label_manager.foreground_labels) == 1
        for name, value in (("semi_share_cap", self.semi_share_cap), ("semi_align", self.semi_align)):
            if value is not None and not binary_pseudo_labels:
                raise ValueError(f"{type(self).__name__}: {name} needs semi_loss 'pseudo_labels' and one "
                                 f"foreground label; got {self.semi_loss!r} and labels "
                                 f"{self.label_manager.foreground_labels}")
        super().on_train_start()
        if self.num_input_channels != 1:
            raise ValueError(f"{type(self).__name__}: the store holds one-channel volumes but dataset "
                             f"{self.plans_manager.dataset_name} has {self.num_input_channels} input channels; "
                             "use nnUNetTrainerSelma for multi-channel datasets")
        store_path = pretraining_store(self)
        self._semi_store = open_store(store_path)
        self._semi_structures = structure_folders(self.plans_manager.dataset_name)
        try:
            self._semi_store.eligible(self._semi_structures)
        except ValueError:
            self.print_to_log_file(f"the store {store_path} holds no volume of {self._semi_structures}: "
                                   "sampling every volume instead")
            self._semi_structures = None
        student = unwrap_network(self.network)
        self.teacher = copy.deepcopy(student)
        if self._teacher_weights_to_load is not None:
            self.teacher.load_state_dict(self._teacher_weights_to_load)
            self._teacher_updates = int(self._teacher_updates_to_load or 0)
            self.print_to_log_file(f"teacher restored from the checkpoint ({self._teacher_updates} updates), "
                                   f"unannotated stream at iteration {self._step()}")
            self._teacher_weights_to_load = None
        self.teacher.decoder.deep_supervision = False
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._share, cases = self._label_share()
        if self.semi_share_cap is not None:
            self._foreground_share = self._labelled_foreground_share()
            above = " (from above only: the teacher's foreground past the cap is left out)" \
                if self.semi_share_cap == "left_out" else ""
            self.print_to_log_file(f"pseudo-labels capped by rank at the labelled cases' foreground share "
                                   f"{self._foreground_share:.5f}{above}")
        if self.semi_align is not None:
            detail = ""
            if self.semi_align == "labelled":
                self._foreground_share, source = self._labelled_foreground_share(), "labelled cases'"
            elif self.semi_align == "rescaled":
                (self._foreground_share, detail), source = self._rescaled_share(), "rescaled"
            else:
                self._foreground_share, source = float(self.semi_align), "stated"
            self.print_to_log_file(f"teacher probabilities aligned to the {source} foreground share "
                                   f"{self._foreground_share:.5f}{detail} before the pseudo-labels are taken")
        if self.semi_style_zoom:
            _, labelled, store = self._object_scales()
            self._zoom_ratio = float(np.clip(store / labelled, *ZOOM_LIMITS))
            self.print_to_log_file(f"restyled copies zoomed towards the store's object size: up to "
                                   f"{self._zoom_ratio:.3f} (store object scale {store:.2f} / labelled "
                                   f"{labelled:.2f}, held within {ZOOM_LIMITS})")
        share = f" x {self._share:.3f} ({cases} labelled cases, full up to {self.semi_full_cases})" \
            if self.semi_full_cases is not None else ""
        self.print_to_log_file(
            f"semi-supervised: store {store_path}, structures {self._semi_structures or 'all'}, "
            f"{self._semi_batch()} unannotated patches per iteration{self._candidates_note()}, "
            f"weight {self.semi_weight}{share} ramped over "
            f"{self._rampup_steps()} iterations, teacher EMA {self.semi_ema}, confidence {self.semi_confidence}")

    def _label_share(self) -> tuple[float, int]:
        """(share, labelled training cases): 1 up to ``semi_full_cases`` cases, then ``semi_full_cases / cases``."""
        cases = len(self.do_split()[0])
        if self.semi_full_cases is None or cases <= self.semi_full_cases:
            return 1.0, cases
        return self.semi_full_cases / cases, cases

    def _labelled_foreground_share(self) -> float:
        """The share of foreground voxels in the preprocessed segmentations of the training cases."""
        return self._labelled_statistics(with_scale=False)[0]

    def _labelled_statistics(self, with_scale: bool) -> tuple[float, float | None]:
        """(foreground share of the training cases' preprocessed segmentations, median :func:`object_scale` of their
        first image channel, or None without ``with_scale``): one read of each case."""
        dataset = self.dataset_class(self.preprocessed_dataset_folder, self.do_split()[0])
        foreground = voxels = 0
        scales = []
        for identifier in dataset.identifiers:
            data, seg = dataset.load_case(identifier)[:2]
            seg = np.asarray(seg[:])
            foreground, voxels = foreground + int((seg > 0).sum()), voxels + seg.size
            if with_scale:
                scales.append(object_scale(np.asarray(data[0])))
        return foreground / max(1, voxels), (float(np.median(scales)) if with_scale else None)

    def _rescaled_share(self) -> tuple[float, str]:
        """(share, how it was found, for the log) for ``semi_align = "rescaled"``: the labelled cases' foreground
        share times ``(store scale / labelled scale) ** 3``, each scale the median :func:`object_scale` of the
        preprocessed training images and of ``semi_scale_patches`` store patches of this run's structures (the
        patches the teacher sees, drawn from a stream of their own). No label of the store is read; the
        assumption is that the new volumes hold as many objects per voxel as the labelled ones, in another size."""
        share, labelled, store = self._object_scales()
        rescaled = float(np.clip(share * (store / labelled) ** 3, 1e-4, 0.5))
        return rescaled, (f" (the labelled cases' {share:.5f} x (store object scale {store:.2f} / labelled "
                          f"{labelled:.2f})^3, held within [0.0001, 0.5])")

    def _object_scales(self) -> tuple[float, float, float]:
        """(labelled foreground share, labelled object scale, store object scale): the median :func:`object_scale`
        of the preprocessed training images and of ``semi_scale_patches`` store patches of this run's structures,
        drawn from a stream of their own (so ``--c`` measures the same); computed once per run."""
        if self._scales is None:
            share, labelled = self._labelled_statistics(with_scale=True)
            rng = np.random.default_rng([self.semi_seed, 7])
            size = self.configuration_manager.patch_size  # one patch at a time: the same draws, one in memory
            store = float(np.median([object_scale(sample_batch(self._semi_store, size, 1, rng,
                                                               self._semi_structures, augment=False)[0, 0])
                                     for _ in range(self.semi_scale_patches)]))
            self._scales = (share, labelled, store)
        return self._scales

    def _capped_share(self) -> float | None:
        return self._foreground_share if self.semi_share_cap is not None else None

    def _aligned_share(self) -> float | None:
        return self._foreground_share if self.semi_align is not None else None

    def _semi_batch(self) -> int:
        return self.semi_batch_size or self.configuration_manager.batch_size

    def _candidates_note(self) -> str:
        drawn = self._semi_batch() * self.semi_candidates
        return f" (the brightest of {drawn} drawn)" if self.semi_candidates > 1 else ""

    def _rampup_steps(self) -> int:
        return int(round(self.semi_rampup * self.num_epochs * self.num_iterations_per_epoch))

    def _unannotated_weight(self, step: int) -> float:
        """The unannotated loss's weight at iteration ``step``: ramped, times this run's unannotated share."""
        return self.semi_weight * self._share * sigmoid_rampup(step, self._rampup_steps())

    def _step(self) -> int:
        # the global iteration: a pure function of where training stands, so --c resumes the same stream
        return self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._iteration_in_epoch = 0
        self._semi_log = []
        self._restyled = (0, 0)

    # -- one iteration --------------------------------------------------------------------------
    def _unannotated(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None, list]:
        """(weak, strong, flips) of this iteration's store patches; with ``semi_weight = 0`` (style sources only)
        no strong view is made (None, no flips). The stream is a pure function of ``step`` (and rank)."""
        rng = np.random.default_rng([self.semi_seed, self.local_rank, step])
        patches = sample_batch(self._semi_store, self.configuration_manager.patch_size,
                               self._semi_batch() * max(1, self.semi_candidates), rng, self._semi_structures,
                               augment=False)
        patches = brightest_patches(patches, self._semi_batch())
        weak = torch.from_numpy(patches).to(self.device, non_blocking=True)
        if not self._learns_from_store:
            return weak, None, []
        strong, flips = strong_view(weak, rng)
        return weak, strong, flips

    def _restyle(self, data: torch.Tensor, target, styles: torch.Tensor, step: int):
        """(data, target) with each labelled patch, with probability ``semi_style_mix``, given a random share of
        a store patch's amplitude spectrum (:func:`amplitude_mix`; its labels stay valid because its phase is
        kept): in place, or with ``semi_style_copies`` as a copy appended with its labels."""
        rng = np.random.default_rng([self.semi_seed, self.local_rank, step, 1])
        n = data.shape[0]
        weights = rng.uniform(0.0, 1.0, n) * (rng.random(n) < self.semi_style_mix * self._share)
        self._restyled = (self._restyled[0] + int((weights > 0).sum()), self._restyled[1] + n)
        if not weights.any():
            return data, target
        order = torch.as_tensor(np.arange(n) % styles.shape[0], device=styles.device)
        mixed = amplitude_mix(data, styles[order], torch.as_tensor(weights, dtype=torch.float32, device=data.device),
                              self.semi_style_band)
        if not self.semi_style_copies:
            return mixed, target
        chosen = torch.as_tensor(np.flatnonzero(weights > 0), device=data.device)
        copies = mixed[chosen]
        levels = [t[chosen] for t in (target if isinstance(target, list) else [target])]
        if self.semi_style_zoom:  # each copy towards the store's object size by its own restyling weight
            factors = [self._zoom_ratio ** w for w in weights[weights > 0]]
            copies = torch.stack([zoom_about_centre(c, f) for c, f in zip(copies, factors)])
            levels = [torch.stack([zoom_about_centre(t, f, labels=True) for t, f in zip(level, factors)])
                      for level in levels]
        targets = [torch.cat([t, c]) for t, c in zip(target if isinstance(target, list) else [target], levels)]
        return torch.cat([data, copies]), targets if isinstance(target, list) else targets[0]

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) \
            else target.to(self.device, non_blocking=True)
        step = self._step()
        weak, strong, flips = self._unannotated(step)
        if self.semi_style_mix > 0:
            data, target = self._restyle(data, target, weak, step)
        n = data.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            # one forward for both batches: DDP expects one forward per backward, instance norm is per sample
            output = self.network(torch.cat([data, strong]) if self._learns_from_store else data)
            outputs = output if isinstance(output, (list, tuple)) else [output]
            supervised = self.loss([o[:n] for o in outputs] if isinstance(output, (list, tuple)) else output[:n],
                                   target)
            consistency, confident, loss = torch.zeros((), device=self.device), 0.0, supervised
            if self._learns_from_store:
                with torch.no_grad():
                    teacher_logits = self.teacher(weak)
                student = flip_each(outputs[0][n:], flips)
                if self.semi_loss == "pseudo_labels":
                    consistency, confident = pseudo_label_loss(
                        student, teacher_logits, self.semi_confidence, self._capped_share(),
                        self.semi_share_cap or "background", self._aligned_share())
                else:
                    consistency, confident = mean_teacher_loss(student, teacher_logits, self.semi_confidence)
                loss = supervised + self._unannotated_weight(step) * consistency
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        self._update_teacher()
        self._iteration_in_epoch += 1
        self._semi_log.append((float(consistency.detach()), confident))
        # nnU-Net's logged training loss stays the supervised one (comparable with the other trainers)
        return {"loss": supervised.detach().cpu().numpy()}

    def _update_teacher(self) -> None:
        ema_update(self.teacher, unwrap_network(self.network), self.semi_ema)
        self._teacher_updates += 1

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        if self._semi_log:
            c, f = np.mean(self._semi_log, axis=0)
            band = f" below {self.semi_style_band} cycles/voxel" if self.semi_style_band is not None else ""
            restyled = f", {self._restyled[0]} of {self._restyled[1]} labelled patches restyled{band}" \
                if self.semi_style_mix > 0 else ""
            weight = self._unannotated_weight(self._step())
            loss = f"consistency {c:.4f} on {100 * f:.1f}% confident voxels, weight {weight:.3f}" \
                if self._learns_from_store else "no unannotated loss (store patches as styles only)"
            self.print_to_log_file(loss + restyled)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if self.local_rank != 0 or self.disable_checkpointing or self.teacher is None:
            return
        checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
        checkpoint[TEACHER_KEY] = self.teacher.state_dict()
        checkpoint[TEACHER_UPDATES_KEY] = self._teacher_updates
        atomic_torch_save(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        checkpoint = filename_or_checkpoint
        if isinstance(checkpoint, str):
            # read here for the teacher; nnU-Net 2.8.1's load_checkpoint only accepts a file name, so it reads again
            checkpoint = torch.load(checkpoint, map_location=self.device, weights_only=False)
        self._teacher_weights_to_load = checkpoint.get(TEACHER_KEY)
        self._teacher_updates_to_load = checkpoint.get(TEACHER_UPDATES_KEY)
        super().load_checkpoint(filename_or_checkpoint)


class nnUNetTrainerSelmaSemiPLStyleCopies(nnUNetTrainerSelmaSemi):
    """The teacher's confident pseudo-labels on store patches (``semi_loss = "pseudo_labels"``) plus copies of half
    the labelled patches restyled towards store patches (``semi_style_mix`` 0.5, ``semi_style_copies``), both
    falling above four labelled cases (``semi_full_cases``).

    When: one or two labelled patches, and the volumes to segment were imaged elsewhere (another microscope,
    clearing or lab) so a model trained on the labels misses most of their objects. On the benchmark's change of
    lab (``bench_unannotated_benefit.py --domain-shift``) it is the arm that gains; where the new volumes come from
    the same spread of conditions as the labelled ones it follows scratch's own error and gains nothing on
    average (``benchmarks/RESULTS.md``)."""

    semi_loss = "pseudo_labels"
    semi_style_mix = 0.5
    semi_style_copies = True
    semi_full_cases = 4


class nnUNetTrainerSelmaMAESemi(nnUNetTrainerSelmaMAE, nnUNetTrainerSelmaSemi):
    """Masked-image-modelling pretraining (as :class:`nnUNetTrainerSelmaMAE`), then semi-supervised fine-tuning
    (as :class:`nnUNetTrainerSelmaSemi`) on the same store."""

"""Semi-supervised fine-tuning (nnUNetTrainerSelmaSemi): the mean-teacher pieces, a real ``nnUNetv2_train`` run
on the tiny store, kill-and-resume with ``--c``, and teachers kept equal across DDP ranks (gloo, CPU)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunetv2_selma.training.semi_trainers import (
    TEACHER_KEY,
    TEACHER_UPDATES_KEY,
    align_to_share,
    amplitude_mix,
    brightest_patches,
    ema_update,
    flip_each,
    mean_teacher_loss,
    nnUNetTrainerSelmaSemiPLStyleCopies,
    pseudo_label_loss,
    share_capped_labels,
    sigmoid_rampup,
    strong_view,
    structure_folders,
    zoom_about_centre,
)
from nnunetv2_selma.training.study_variants import nnUNetTrainerSelmaStyleZoomCopies

DATASET_ID = 620
DATASET_NAME = f"Dataset{DATASET_ID}_SELMA3D_Nuclei"
PLANS_ID = "nnUNetSelmaPlans_cpu"
BIN = Path(sys.executable).parent


def _env(store: Path, **extra: str) -> dict:
    from nnunetv2_selma.nnunet_ext import shim_folder

    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "nnUNet_selma_pretrained")}
    env.update({"OMP_NUM_THREADS": "1", "nnUNet_extTrainer": str(shim_folder()), "nnUNet_selma_store": str(store),
                "nnUNet_n_proc_DA": "0"}, **extra)
    return env


def test_structure_folders_of_dataset_names():
    assert structure_folders("Dataset721_SELMA3D_Nuclei") == ["nucleus"]
    assert structure_folders("Dataset703_SELMA3D_cFos") == ["cfos"]
    assert structure_folders("Dataset704_SELMA3D_Plaques") == ["ab_plaque"]
    assert structure_folders("Dataset999_MyOwnData") is None


def test_mean_teacher_loss_counts_confident_voxels_only():
    teacher = torch.zeros(1, 2, 4, 4, 4)
    teacher[:, 1, :2] = 5.0  # confident foreground in the first half, 50/50 in the second
    same = mean_teacher_loss(teacher.clone(), teacher, 0.8)
    assert same[0].item() == 0.0 and same[1] == pytest.approx(0.5)
    student = torch.zeros(1, 2, 4, 4, 4)  # 50/50 everywhere: wrong where the teacher is sure
    loss, frac = mean_teacher_loss(student, teacher, 0.8)
    assert loss.item() > 0 and frac == pytest.approx(0.5)
    # the unsure half adds nothing: changing the student there leaves the loss unchanged
    other = student.clone()
    other[:, 0, 2:] = 3.0
    assert mean_teacher_loss(other, teacher, 0.8)[0].item() == pytest.approx(loss.item())
    assert mean_teacher_loss(student, teacher, 0.999)[0].item() == 0.0


def test_pseudo_label_loss_trains_towards_confident_labels_only():
    teacher = torch.zeros(1, 2, 4, 4, 4)
    teacher[:, 1, :1] = 5.0  # a thin confident foreground slab, confident background elsewhere but one unsure slab
    teacher[:, 0, 1:3] = 5.0
    agree = pseudo_label_loss(teacher * 4, teacher, 0.8)
    assert agree[1] == pytest.approx(0.75) and agree[0].item() < 0.01
    student = torch.zeros(1, 2, 4, 4, 4, requires_grad=True)
    loss, _ = pseudo_label_loss(student, teacher, 0.8)
    loss.backward()
    # the unsure slab gets no gradient; the foreground slab is pulled towards class 1
    assert student.grad[:, :, 3].abs().max() == 0 and (student.grad[:, 1, :1] < 0).all()
    # the Dice term keeps the rare foreground's weight: its gradient per voxel exceeds a background voxel's
    assert student.grad[:, 1, :1].abs().mean() > student.grad[:, 1, 1:3].abs().mean()
    assert pseudo_label_loss(student, teacher, 0.9999)[0].item() == 0.0


def test_brightest_patches_keeps_the_patches_with_objects_in_drawn_order():
    rng = np.random.default_rng(0)
    patches = rng.normal(0, 1, (6, 1, 8, 8, 8)).astype(np.float32)
    for b in (1, 4):  # a few bright voxels (an object) in patches 1 and 4
        patches[b, 0, 2:4, 2:4, 2:4] = 12.0
    kept = brightest_patches(patches, 2)
    assert np.array_equal(kept, patches[[1, 4]])
    assert brightest_patches(patches, 6) is patches


def test_amplitude_mix_keeps_the_phase_and_takes_the_style_amplitude():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.normal(0, 1, (2, 1, 6, 8, 8)).astype(np.float32))
    styles = torch.from_numpy(rng.normal(0, 3, (2, 1, 6, 8, 8)).astype(np.float32))
    same = amplitude_mix(images, styles, torch.tensor([0.0, 0.0]))
    assert torch.allclose(same, images, atol=1e-5)
    mixed = amplitude_mix(images, styles, torch.tensor([1.0, 0.5]))
    f_mixed, f_image, f_style = (torch.fft.fftn(x, dim=(2, 3, 4)) for x in (mixed, images, styles))
    # weight 1: the style's amplitude with the image's phase (where the amplitude is not ~0)
    assert torch.allclose(f_mixed[0].abs(), f_style[0].abs(), rtol=1e-3, atol=1e-3)
    keep = f_image[0].abs() > 1e-2
    assert torch.allclose(torch.cos(f_mixed[0].angle() - f_image[0].angle())[keep], torch.ones(()), atol=1e-3)
    assert torch.allclose(f_mixed[1].abs(), 0.5 * (f_image[1].abs() + f_style[1].abs()), rtol=1e-3, atol=1e-3)


def test_amplitude_mix_with_a_band_moves_low_frequencies_only():
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.normal(0, 1, (1, 1, 16, 16, 16)).astype(np.float32))
    styles = torch.from_numpy(rng.normal(0, 3, (1, 1, 16, 16, 16)).astype(np.float32))
    mixed = amplitude_mix(images, styles, torch.tensor([1.0]), band=0.05)
    f_mixed, f_image, f_style = (torch.fft.fftn(x, dim=(2, 3, 4))[0, 0] for x in (mixed, images, styles))
    # the mean (zero frequency) takes the style's amplitude, the Nyquist corner keeps the image's
    assert f_mixed[0, 0, 0].abs() == pytest.approx(f_style[0, 0, 0].abs().item(), rel=1e-3)
    assert f_mixed[8, 8, 8].abs() == pytest.approx(f_image[8, 8, 8].abs().item(), rel=1e-3)
    # the whole-spectrum mix of the same weight moves the high frequencies too
    whole = torch.fft.fftn(amplitude_mix(images, styles, torch.tensor([1.0])), dim=(2, 3, 4))[0, 0]
    assert whole[8, 8, 8].abs() == pytest.approx(f_style[8, 8, 8].abs().item(), rel=1e-3)


def test_restyled_copies_join_the_batch_with_their_labels():
    trainer = object.__new__(nnUNetTrainerSelmaSemiPLStyleCopies)  # the restyling reads only these attributes
    trainer.local_rank, trainer._share, trainer._restyled, trainer.semi_style_mix = 0, 1.0, (0, 0), 1.0
    rng = np.random.default_rng(3)
    data = torch.from_numpy(rng.normal(0, 1, (2, 1, 8, 8, 8)).astype(np.float32))
    styles = torch.from_numpy(rng.normal(0, 3, (2, 1, 8, 8, 8)).astype(np.float32))
    target = [torch.arange(2.0).view(2, 1, 1, 1, 1).expand(2, 1, 8, 8, 8),
              torch.arange(2.0).view(2, 1, 1, 1, 1).expand(2, 1, 4, 4, 4)]
    out, out_target = trainer._restyle(data, target, styles, step=5)
    assert out.shape[0] == 4 and torch.equal(out[:2], data) and not torch.allclose(out[2:], data)
    assert [t.shape[0] for t in out_target] == [4, 4] and torch.equal(out_target[0][2:], target[0])
    assert trainer._restyled == (2, 2)
    trainer.semi_style_copies = False  # the in-place restyling keeps the batch size and the labels
    out, same = trainer._restyle(data, target, styles, step=5)
    assert out.shape[0] == 2 and same is target and not torch.allclose(out, data)


def test_zoom_about_centre_resizes_objects_and_keeps_the_shape():
    grid = np.stack(np.meshgrid(*[np.arange(48) - 23.5] * 3, indexing="ij"))
    ball = torch.from_numpy((np.sqrt((grid ** 2).sum(0)) <= 5).astype(np.float32))[None]
    for factor in (1.5, 0.7):
        label = zoom_about_centre(ball, factor, labels=True)
        image = zoom_about_centre(ball, factor)
        assert label.shape == image.shape == ball.shape and set(label.unique().tolist()) <= {0.0, 1.0}
        # the ball's volume goes as the cube of the factor (a small centred ball is neither cut nor reflected)
        assert float(label.sum()) == pytest.approx(float(ball.sum()) * factor ** 3, rel=0.15)
        assert float(image.sum()) == pytest.approx(float(ball.sum()) * factor ** 3, rel=0.15)
    assert torch.equal(zoom_about_centre(ball, 1.0, labels=True), ball)
    with pytest.raises(ValueError, match="factor"):
        zoom_about_centre(ball, 3.0)


def test_restyled_copies_can_be_zoomed_with_their_labels():
    trainer = object.__new__(nnUNetTrainerSelmaStyleZoomCopies)
    trainer.local_rank, trainer._share, trainer._restyled, trainer.semi_style_mix = 0, 1.0, (0, 0), 1.0
    trainer._zoom_ratio = 2.0
    rng = np.random.default_rng(3)
    data = torch.from_numpy(rng.normal(0, 1, (2, 1, 8, 8, 8)).astype(np.float32))
    styles = torch.from_numpy(rng.normal(0, 3, (2, 1, 8, 8, 8)).astype(np.float32))
    cube = torch.zeros(2, 1, 8, 8, 8)
    cube[:, :, 3:5, 3:5, 3:5] = 1
    target = [cube, cube[:, :, ::2, ::2, ::2]]
    out, out_target = trainer._restyle(data, target, styles, step=5)
    assert out.shape == (4, 1, 8, 8, 8) and torch.equal(out[:2], data)
    assert [tuple(t.shape) for t in out_target] == [(4, 1, 8, 8, 8), (4, 1, 4, 4, 4)]
    # the originals keep their labels; the copies' objects grew (by 2 ** w, w their restyling weight)
    grown = out_target[0][2:].sum((1, 2, 3, 4))
    assert torch.equal(out_target[0][:2], cube) and bool((grown >= 8).all()) and bool((grown > 8).any())


def test_align_to_share_turns_a_teachers_most_probable_misses_into_labels():
    # a teacher that calls 2% of the voxels confidently foreground and gives 10% probability 0.3 (the dim misses)
    p_fg = torch.full((1, 1000), 0.001)
    p_fg[0, :20], p_fg[0, 20:120] = 0.95, 0.3
    p = torch.stack([1 - p_fg, p_fg], 1)
    aligned = align_to_share(p, 0.12)
    assert aligned.shape == p.shape and torch.allclose(aligned.sum(1), torch.ones(1, 1000))
    assert float(aligned[0, 1].mean()) == pytest.approx(0.12, abs=1e-5)
    # one factor on the odds everywhere: the order is kept, the misses pass the 0.8 confidence
    assert (aligned[0, 1, 20:120] > 0.8).all() and (aligned[0, 1, 120:] < 0.05).all()
    assert torch.equal(torch.argsort(aligned[0, 1], stable=True), torch.argsort(p_fg[0], stable=True))
    # pseudo-labels: the misses do not count without the alignment (0.7 background), they do with it
    logits = torch.log(p)
    _, confident = pseudo_label_loss(logits, logits, 0.8)
    _, confident_aligned = pseudo_label_loss(logits, logits, 0.8, align_share=0.12)
    assert confident == pytest.approx(0.9) and confident_aligned == pytest.approx(1.0)
    # a batch without objects is not filled: the factor is held at 30
    empty = torch.stack([torch.full((1, 1000), 0.999), torch.full((1, 1000), 0.001)], 1)
    assert align_to_share(empty, 0.12)[0, 1].max() < 0.03
    # a share the teacher already holds leaves it as it is
    assert torch.allclose(align_to_share(p, float(p_fg.mean())), p, atol=1e-6)
    with pytest.raises(ValueError, match="binary segmentation only"):
        align_to_share(torch.ones(1, 3, 4) / 3, 0.1)


def test_object_scale_grows_with_the_balls_and_ignores_intensity_scale():
    from nnunetv2_selma.training.semi_trainers import object_scale

    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:48, :48, :48]
    scales = []
    for radius in (3.0, 4.5, 7.0):
        image = rng.normal(100, 5, (48, 48, 48))
        for c in rng.uniform(8, 40, (6, 3)):  # six balls, each as bright
            image[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= radius ** 2] += 200
        scales.append(object_scale(image))
        # a uniform ball answers most at radius / sqrt(3); radius 3 reads 2.25 against 1.73 (the quantile
        # reaches the small balls' rims), the larger ones within one step of the search
        assert abs(scales[-1] - radius / np.sqrt(3)) <= 0.55
        assert object_scale(3 * image + 40) == scales[-1]
    assert scales == sorted(scales) and scales[0] < scales[-1]
    with pytest.raises(ValueError, match="expected a 3D image"):
        object_scale(np.zeros((8, 8)))


def test_share_capped_labels_cap_a_biased_teacher_and_never_force_foreground():
    n, order = 1000, torch.linspace(1e-3, 0, 1000)  # voxel i has the i-th highest foreground probability

    def teacher(p_fg: torch.Tensor) -> torch.Tensor:
        return torch.stack([1 - p_fg, p_fg])[None]  # (1, 2 classes, n voxels)

    # calls 15% of the voxels foreground where the labelled share is 5%: 2.5% kept, the rest above 7.5% background
    labels, mask = share_capped_labels(teacher((torch.arange(n) < 150) * 0.9 + 0.05 + order), 0.05)
    assert labels.sum() == 25 and labels[0, :25].all()
    assert mask[0, 25:75].sum() == 0 and mask[0, 75:].all() and labels[0, 75:].sum() == 0
    # from above only: the teacher's foreground past the cap (75 to 150) is left out, not called background
    labels, mask = share_capped_labels(teacher((torch.arange(n) < 150) * 0.9 + 0.05 + order), 0.05, past_cap="left_out")
    assert labels.sum() == 25 and labels[0, :25].all() and mask[0, 25:150].sum() == 0 and mask[0, 150:].all()
    # misses objects (1% above 0.5): its doubtful voxels are left out, not called background
    labels, mask = share_capped_labels(teacher((torch.arange(n) < 10) * 0.6 + 0.3 * (1 - torch.arange(n) / n)), 0.05)
    assert labels.sum() == 10 and mask[0, 10:75].sum() == 0 and mask[0, 75:].all()
    # nothing above 0.5: no foreground forced
    labels, mask = share_capped_labels(teacher(0.4 * (1 - torch.arange(n) / n)), 0.05)
    assert labels.sum() == 0 and mask[0, :75].sum() == 0 and mask[0, 75:].all()
    with pytest.raises(ValueError, match="binary segmentation only"):
        share_capped_labels(torch.ones(1, 3, 4), 0.05)
    with pytest.raises(ValueError, match="past_cap must be one of"):
        share_capped_labels(teacher(0.4 * (1 - torch.arange(n) / n)), 0.05, past_cap="above")


def test_rampup_and_ema():
    assert sigmoid_rampup(0, 10) == pytest.approx(np.exp(-5)) and sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0 and sigmoid_rampup(2, 10) < sigmoid_rampup(6, 10)
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = teacher.weight.detach().clone()
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * before + 0.1 * student.weight)


def test_strong_view_flips_are_undone_by_flipping_back():
    images = torch.arange(2 * 1 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 1, 4, 5, 6)
    rng = np.random.default_rng(3)
    view, flips = strong_view(images, rng)
    assert view.shape == images.shape and len(flips) == 2
    for b, axes in enumerate(flips):
        back = torch.flip(view[b:b + 1], axes) if axes else view[b:b + 1]
        # intensity changes keep the order of voxels roughly; the flipped-back view correlates with the input
        r = np.corrcoef(back.numpy().ravel(), images[b].numpy().ravel())[0, 1]
        assert r > 0.8


@pytest.fixture(scope="module")
def semi_dataset(tiny_store) -> Path:
    """A tiny nuclei dataset (generated patches) planned with the cpu preset; one fold trains on 2 cases."""
    import SimpleITK

    from nnunetv2_selma.synthetic.volumes import render_patch

    raw = Path(os.environ["nnUNet_raw"]) / DATASET_NAME
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(5):
        channels, mask = render_patch("nuclei", (32, 40, 40), rng)
        image = SimpleITK.GetImageFromArray(channels[0])
        SimpleITK.WriteImage(image, str(raw / "imagesTr" / f"case{i:03d}_0000.nii.gz"))
        SimpleITK.WriteImage(SimpleITK.GetImageFromArray(mask.astype(np.uint8)),
                             str(raw / "labelsTr" / f"case{i:03d}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "LSM"}, "labels": {"background": 0, "nuclei": 1}, "numTraining": 5,
        "file_ending": ".nii.gz"}))
    res = subprocess.run([str(BIN / "nnUNetv2_selma_plan"), "-d", str(DATASET_ID), "--preset", "cpu", "-np", "1"],
                         env=_env(tiny_store), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    pre = Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME
    splits = [{"train": ["case000", "case001"], "val": ["case002"]} for _ in range(3)]
    (pre / "splits_final.json").write_text(json.dumps(splits))
    return pre


def _model(results: Path, trainer: str, fold: int) -> Path:
    return results / DATASET_NAME / f"{trainer}__{PLANS_ID}__3d_fullres" / f"fold_{fold}"


# nnUNetTrainerSelmaSemiPLStyle's replacing restyle runs in its subclass StyleLow here (CI time)
@pytest.mark.parametrize("trainer", ["nnUNetTrainerSelmaSemi_1epoch_2it", "nnUNetTrainerSelmaSemiPLBright_1epoch_2it",
                                     "nnUNetTrainerSelmaSemiPLStyleLow_1epoch_2it",
                                     "nnUNetTrainerSelmaSemiPLStyleCopies_1epoch_2it",
                                     "nnUNetTrainerSelmaStyleCopies_1epoch_2it",
                                     "nnUNetTrainerSelmaStyleZoomCopies_1epoch_2it",
                                     "nnUNetTrainerSelmaSemiPLCappedAbove_1epoch_2it",
                                     "nnUNetTrainerSelmaSemiPLStyleCopiesAligned_1epoch_2it",
                                     "nnUNetTrainerSelmaSemiPLStyleCopiesRescaled_1epoch_2it"])
def test_semi_trainer_trains_through_nnunetv2_train_and_saves_its_teacher(semi_dataset, tiny_store, tmp_path,
                                                                           trainer):
    res = subprocess.run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", trainer,
                          "-p", PLANS_ID, "-device", "cpu"], env=_env(tiny_store, nnUNet_results=str(tmp_path)),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "semi-supervised: store" in res.stdout and "structures ['nucleus']" in res.stdout
    # semi_weight 0 (nnUNetTrainerSelmaStyleCopies): no unannotated loss, the store only lends styles
    style_only = trainer.startswith("nnUNetTrainerSelmaStyle")
    assert ("consistency" in res.stdout) != style_only
    assert ("no unannotated loss (store patches as styles only)" in res.stdout) == style_only
    # the labelled cases' foreground share, from the preprocessed segmentations of the fold's two cases
    assert ("capped by rank at the labelled cases' foreground share 0.0" in res.stdout) == ("Capped" in trainer)
    assert ("(from above only: the teacher's foreground past the cap is left out)" in res.stdout) == \
        ("CappedAbove" in trainer)
    assert ("aligned to the labelled cases' foreground share 0.0" in res.stdout) == ("Aligned" in trainer)
    # rescaled: the labelled share times the cube of the store's object scale over the labelled images'
    rescaled = re.search(r"aligned to the rescaled foreground share ([0-9.]+) \(the labelled cases' ([0-9.]+) x "
                         r"\(store object scale ([0-9.]+) / labelled ([0-9.]+)\)\^3", res.stdout)
    assert (rescaled is not None) == ("Rescaled" in trainer)
    if rescaled:
        share, labelled, store, own = (float(v) for v in rescaled.groups())
        assert 0 < labelled < 1 and 1.0 <= min(store, own)
        assert share == pytest.approx(min(0.5, max(1e-4, labelled * (store / own) ** 3)), rel=0.02, abs=1e-5)
    assert ("restyled copies zoomed towards the store's object size: up to" in res.stdout) == ("Zoom" in trainer)
    assert ("the brightest of 8 drawn" in res.stdout) == ("Bright" in trainer)
    assert ("labelled patches restyled" in res.stdout) == ("Style" in trainer)
    assert ("restyled below 0.08 cycles/voxel" in res.stdout) == ("StyleLow" in trainer)
    assert ("weight 1.0 x 0.500 (2 labelled cases, full up to 1)" in res.stdout) == ("StyleLow" in trainer)
    ckpt = torch.load(_model(tmp_path, trainer, 0) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    teacher, student = ckpt[TEACHER_KEY], ckpt["network_weights"]
    assert ckpt[TEACHER_UPDATES_KEY] == 2 and teacher.keys() == student.keys()
    # the teacher moved towards the student but is not it (EMA 0.99 over 2 steps)
    name = next(k for k, v in student.items() if v.dtype.is_floating_point and v.ndim > 1)
    assert not torch.equal(teacher[name], student[name])
    # the model predicts as any nnU-Net model (the student's weights)
    assert (_model(tmp_path, trainer, 0) / "validation" / "case002.nii.gz").is_file()


def _unstarted_trainer(semi_dataset: Path):
    """A plain nnUNetTrainerSelmaSemi on the test dataset, built but not started (for the refused configurations)."""
    from nnunetv2_selma.training.semi_trainers import nnUNetTrainerSelmaSemi

    plans = {**json.loads((semi_dataset / f"{PLANS_ID}.json").read_text()), "continue_training": False}
    dataset_json = json.loads((semi_dataset / "dataset.json").read_text())
    return nnUNetTrainerSelmaSemi(plans, "3d_fullres", 0, dataset_json, device=torch.device("cpu"))


ALIGN_REFUSED = r"semi_align must be None, one of \('labelled', 'rescaled'\) or a foreground share"


@pytest.mark.parametrize("cap, align, loss, message", [
    (True, None, "pseudo_labels", "semi_share_cap must be None or one of"),
    ("above_only", None, "pseudo_labels", "semi_share_cap must be None or one of"),
    ("left_out", None, "consistency", "semi_share_cap needs semi_loss 'pseudo_labels'"),
    (None, "labelled", "consistency", "semi_align needs semi_loss 'pseudo_labels'"),
    (None, True, "pseudo_labels", ALIGN_REFUSED),
    (None, 1.5, "pseudo_labels", ALIGN_REFUSED),
    (None, "store", "pseudo_labels", ALIGN_REFUSED),
    ("background", 0.1, "pseudo_labels", "semi_share_cap and semi_align both set")])
def test_share_cap_configuration_is_refused_before_training_starts(semi_dataset, cap, align, loss, message):
    trainer = _unstarted_trainer(semi_dataset)
    trainer.semi_share_cap, trainer.semi_align, trainer.semi_loss = cap, align, loss
    with pytest.raises(ValueError, match=message):
        trainer.on_train_start()
    assert not trainer.was_initialized  # refused before nnU-Net built its network and data loaders


def test_zoom_without_copies_is_refused_before_training_starts(semi_dataset):
    trainer = _unstarted_trainer(semi_dataset)
    trainer.semi_style_zoom, trainer.semi_style_mix = True, 0.5
    with pytest.raises(ValueError, match="semi_style_zoom resizes the restyled copies; it needs semi_style_copies"):
        trainer.on_train_start()
    assert not trainer.was_initialized


def test_kill_and_resume_continues_teacher_and_stream(semi_dataset, tiny_store, tmp_path):
    trainer = "nnUNetTrainerSelmaSemi_2epochs_3it"
    cmd = [str(BIN / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "1", "-tr", trainer, "-p", PLANS_ID,
           "-device", "cpu"]
    # uninterrupted reference
    full = tmp_path / "full"
    res = subprocess.run(cmd, env=_env(tiny_store, nnUNet_results=str(full)), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    reference = torch.load(_model(full, trainer, 1) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # interrupted: killed once epoch 0's checkpoint is written, while the process still runs
    killed = tmp_path / "killed"
    latest = _model(killed, trainer, 1) / "checkpoint_latest.pth"
    proc = subprocess.Popen(cmd, env=_env(tiny_store, nnUNet_results=str(killed)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 500
    while not latest.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # let the atomic rename of the teacher-carrying checkpoint finish
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(latest, map_location="cpu", weights_only=False)
    assert saved["current_epoch"] == 1 and saved[TEACHER_UPDATES_KEY] == 3
    assert not (_model(killed, trainer, 1) / "checkpoint_final.pth").exists()
    res = subprocess.run(cmd + ["--c"], env=_env(tiny_store, nnUNet_results=str(killed)), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "teacher restored from the checkpoint (3 updates), unannotated stream at iteration 3" in res.stdout
    resumed = torch.load(_model(killed, trainer, 1) / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    # same number of teacher updates and epochs as the uninterrupted run; the resumed teacher continued from
    # the saved one (close to it after 3 more EMA steps), it was not copied afresh from the student
    assert resumed[TEACHER_UPDATES_KEY] == reference[TEACHER_UPDATES_KEY] == 6
    assert resumed["current_epoch"] == reference["current_epoch"] == 2
    name = next(k for k, v in saved[TEACHER_KEY].items() if v.dtype.is_floating_point and v.ndim > 1)
    t_saved, t_resumed = saved[TEACHER_KEY][name], resumed[TEACHER_KEY][name]
    s_resumed = resumed["network_weights"][name]
    assert (t_resumed - t_saved).norm() < (s_resumed - t_saved).norm()


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import copy

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    ddp = DistributedDataParallel(student)
    teacher = copy.deepcopy(student)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    rng = np.random.default_rng([7, rank])  # each rank its own unannotated patches
    for _ in range(3):
        weak = torch.from_numpy(rng.normal(size=(2, 1, 8, 8, 8)).astype(np.float32))
        strong, flips = strong_view(weak, rng)
        pred = ddp(strong)
        pred = flip_each(pred, flips)
        with torch.no_grad():
            target = teacher(weak)
        loss, _ = mean_teacher_loss(pred, target, 0.0)
        opt.zero_grad()
        (loss + pred.mean() * 0.1).backward()
        opt.step()
        ema_update(teacher, student, 0.9)
    torch.save({k: v.clone() for k, v in teacher.state_dict().items()}, f"{out}_{rank}.pt")
    dist.destroy_process_group()


def test_ddp_ranks_keep_equal_teachers(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "teacher")), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"teacher_{r}.pt") for r in (0, 1))
    torch.manual_seed(0)
    initial = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    for k in a:
        assert torch.equal(a[k], b[k]), k  # different data per rank, yet the same teacher
    assert not torch.equal(a["0.weight"], initial.state_dict()["0.weight"])

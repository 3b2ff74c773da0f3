"""predict_large --tissue-mask: labels inside the (dilated) tissue are unchanged; objects outside it are removed,
objects touching it kept whole (auto); a volume that is tissue everywhere keeps every label; a given mask is
checked (shape, NaN, all zero) and used voxel by voxel."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from model_factory import make_model_folder  # noqa: E402
from scipy import ndimage

from nnunetv2_selma.cli.predict_large import main as predict_large_command
from nnunetv2_selma.inference.tissue_mask import TISSUE_MARGIN_BLOCKS, auto_tissue_mask
from nnunetv2_selma.inference.whole_volume import predict_large
from nnunetv2_selma.volumes import open_volume

SHAPE = (16, 64, 128)
ALL = tuple(slice(0, s) for s in SHAPE)


def _sample() -> tuple[np.ndarray, np.ndarray]:
    """A tissue ellipsoid in dim medium, with bright single-voxel speckles (dust, reflections) outside:
    the kind of background a network fine-tuned inside tissue turns into false positives. (Ingest's block
    means sample every 4th voxel, 8 per 8^3 block: a 3000 speckle on the sub-grid would make its block
    tissue; at 600 one speckle per block stays under the threshold.)"""
    rng = np.random.default_rng(6)
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    tissue = ((z - 8) / 10) ** 2 + ((y - 32) / 28) ** 2 + ((x - 40) / 32) ** 2 <= 1
    volume = np.where(tissue, rng.gamma(4.0, 75.0, SHAPE), rng.gamma(2.0, 5.0, SHAPE))
    speckles = (rng.random(SHAPE) < 0.004) & ~tissue
    volume[speckles] = 600
    return volume.astype(np.uint16), tissue


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tissue")
    model = make_model_folder(Path(os.environ["nnUNet_results"]), "Dataset576_SELMAtissue", patch_size=(16, 32, 32))
    volume, tissue = _sample()
    source = root / "input.tif"
    tifffile.imwrite(source, volume)
    outputs = {}
    for name, setting in (("none", "none"), ("auto", "auto")):
        out = predict_large(source, root / f"{name}.b2nd", model, tile_step_size=1.0, progress=False,
                            tissue_mask=setting)
        outputs[name] = open_volume(out).read(ALL)
    return {"root": root, "model": model, "source": source, "volume": volume, "tissue": tissue, **outputs}


def whole_objects_touching(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The reference: ``labels`` where their 26-connected object (any label > 0) has a voxel in ``kept``."""
    components, _ = ndimage.label(labels > 0, ndimage.generate_binary_structure(3, 3))
    touching = np.unique(components[kept & (components > 0)])
    return np.where(np.isin(components, touching), labels, 0)


def test_auto_tissue_mask_removes_objects_outside_and_keeps_objects_touching_it_whole(runs):
    none, auto, tissue = runs["none"], runs["auto"], runs["tissue"]
    kept = auto_tissue_mask([open_volume(runs["source"])]).region(ALL)
    far = ndimage.distance_transform_edt(~tissue) > 27  # two mask voxels (8^3) and more away from any tissue
    assert kept[tissue].all() and not kept[far].any(), "the dark outside is removed, the tissue kept"
    np.testing.assert_array_equal(auto[tissue], none[tissue])  # inside the tissue: unchanged
    # exactly: the unmasked labels' objects that touch the dilated mask, whole; the others removed
    np.testing.assert_array_equal(auto, whole_objects_touching(none, kept))
    removed = (none > 0) & (auto == 0)
    assert removed.sum() > 0 and not (removed & kept).any(), "objects entirely outside the tissue are removed"
    assert (auto[~kept] > 0).any(), "(this untrained model's big object crosses the mask's edge: kept whole)"
    record = json.loads((runs["root"] / "auto.b2nd.predict_large.json").read_text())
    info = record["tissue_mask"]
    assert info["setting"] == "auto" and info["margin_blocks"] == TISSUE_MARGIN_BLOCKS == 1
    assert info["factors"] == [8, 8, 8] and info["margin_voxels"] == [8, 8, 8] and 0 < info["fraction"] < 1
    assert info["object_rule"].startswith("kept whole") and info["voxels_removed"] == int(removed.sum())
    assert info["objects_kept_across_edge"] >= 1 and info["voxels_kept_outside"] == int((auto[~kept] > 0).sum())
    assert info["rule"][0]["value"] is not None and info["outcome"].startswith("removed")


def _tissue_everywhere(shape=(64, 128, 128), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A crop inside the brain: autofluorescent tissue (~400, noisy) everywhere, 16 bright spheres (900-2000)."""
    rng = np.random.default_rng(seed)
    volume = rng.normal(400, 40, shape)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    spheres = np.zeros(shape, bool)
    for intensity in np.linspace(900, 2000, 16):
        c = rng.uniform([6, 10, 10], [shape[0] - 6, shape[1] - 10, shape[2] - 10])
        sphere = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= rng.uniform(3, 6) ** 2
        volume[sphere], spheres = intensity, spheres | sphere
    return np.clip(volume, 0, None).astype(np.uint16), spheres


def test_tissue_everywhere_keeps_every_label(runs, tmp_path, caplog):
    volume, spheres = _tissue_everywhere()
    source = tmp_path / "inside.tif"
    tifffile.imwrite(source, volume)
    mask = auto_tissue_mask([open_volume(source)])
    assert mask.keeps_everything and mask.info["fraction"] == 1.0
    assert mask.info["rule"][0]["value"] is None and mask.info["outcome"].startswith("kept everything: no clear")
    whole = tuple(slice(0, s) for s in volume.shape)
    outputs = {}
    with caplog.at_level(logging.INFO):
        for setting in ("none", "auto"):
            out = predict_large(source, tmp_path / f"{setting}.b2nd", runs["model"], tile_step_size=1.0,
                                progress=False, tissue_mask=setting, block_size=(64, 128, 128))
            outputs[setting] = open_volume(out).read(whole)
    np.testing.assert_array_equal(outputs["auto"], outputs["none"])
    assert "kept everything" in caplog.text
    record = json.loads((tmp_path / "auto.b2nd.predict_large.json").read_text())["tissue_mask"]
    assert record["setting"] == "auto" and record["fraction"] == 1.0 and "kept everything" in record["outcome"]


def test_tissue_mask_path_full_and_low_resolution(runs):
    full = runs["root"] / "tissue.tif"
    tifffile.imwrite(full, runs["tissue"].astype(np.uint8))
    out = predict_large(runs["source"], runs["root"] / "path.nii.gz", runs["model"], tile_step_size=1.0,
                        progress=False, tissue_mask=full)
    np.testing.assert_array_equal(open_volume(out).read(ALL), runs["none"] * runs["tissue"])
    # a low-resolution mask (here 4x smaller per axis) is scaled by nearest neighbour
    low = np.zeros((4, 16, 32), np.uint8)
    low[:, :, :16] = 1
    tifffile.imwrite(runs["root"] / "low.tif", low)
    out = predict_large(runs["source"], runs["root"] / "low.b2nd", runs["model"], tile_step_size=1.0,
                        progress=False, tissue_mask=runs["root"] / "low.tif")
    expected = runs["none"].copy()
    expected[:, :, 64:] = 0
    np.testing.assert_array_equal(open_volume(out).read(ALL), expected)


def test_tissue_mask_larger_than_input_is_refused(runs, tmp_path):
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, np.ones((16, 64, 130), np.uint8))
    with pytest.raises(ValueError, match=r"big.tif: tissue mask of shape \(16, 64, 130\); expected the input's"):
        predict_large(runs["source"], tmp_path / "out.b2nd", runs["model"], progress=False, tissue_mask=big)
    assert list(tmp_path.iterdir()) == [big]


def _predict_with_mask(runs, tmp_path, mask: np.ndarray, name: str = "mask.tif"):
    path = tmp_path / name
    tifffile.imwrite(path, mask)
    return path, lambda: predict_large(runs["source"], tmp_path / "out.b2nd", runs["model"], tile_step_size=1.0,
                                       progress=False, tissue_mask=path)


def test_all_zero_mask_warns_and_records_fraction_zero(runs, tmp_path, caplog):
    path, run = _predict_with_mask(runs, tmp_path, np.zeros(SHAPE, np.uint8))
    with caplog.at_level(logging.WARNING):
        out = run()
    assert not open_volume(out).read(ALL).any()
    assert f"{path}: the tissue mask is 0 everywhere" in caplog.text
    info = json.loads((tmp_path / "out.b2nd.predict_large.json").read_text())["tissue_mask"]
    assert info["fraction"] == 0.0 and "0 everywhere" in info["warning"]


def test_full_mask_records_its_fraction(runs, tmp_path):
    _, run = _predict_with_mask(runs, tmp_path, runs["tissue"].astype(np.uint8))
    run()
    info = json.loads((tmp_path / "out.b2nd.predict_large.json").read_text())["tissue_mask"]
    assert info["fraction"] == pytest.approx(runs["tissue"].mean())


@pytest.mark.parametrize("shape", [(15, 64, 128), (16, 64, 96), (6, 32, 32)])
def test_mask_of_no_whole_factor_is_refused(runs, tmp_path, shape):
    path, run = _predict_with_mask(runs, tmp_path, np.ones(shape, np.uint8))
    with pytest.raises(ValueError, match=rf"mask.tif: tissue mask of shape \({shape[0]}, {shape[1]}, {shape[2]}\); "
                                         r"expected the input's shape \(16, 64, 128\) or a low-resolution one that "
                                         r"divides it by a whole number"):
        run()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_mask_with_nan_is_refused(runs, tmp_path):
    mask = np.ones(SHAPE, np.float32)
    mask[3, 5, 7] = np.nan
    path, run = _predict_with_mask(runs, tmp_path, mask)
    with pytest.raises(ValueError, match=r"mask.tif.*: tissue mask with NaN voxels"):
        run()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("setting", ["Auto", "missing_mask.tif"])
def test_unknown_setting_names_the_accepted_words(runs, tmp_path, capsys, setting):
    assert predict_large_command(["-i", str(runs["source"]), "-o", str(tmp_path / "o.b2nd"), "-m", str(runs["model"]),
                                  "--tissue-mask", setting, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"--tissue-mask {setting}: not auto, not none, and no such file or folder; expected auto, none or " \
           f"the path of a mask volume" in err
    assert list(tmp_path.iterdir()) == []

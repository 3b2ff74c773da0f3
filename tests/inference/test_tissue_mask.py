"""predict_large --tissue-mask: labels outside the (dilated) tissue are 0, labels inside are unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from model_factory import make_model_folder  # noqa: E402
from scipy import ndimage

from nnunetv2_selma.inference.tissue import TISSUE_MARGIN_BLOCKS, auto_tissue_mask
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


def test_auto_tissue_mask_zeroes_outside_and_keeps_inside(runs):
    none, auto, tissue = runs["none"], runs["auto"], runs["tissue"]
    far = ndimage.distance_transform_edt(~tissue) > 27  # two mask voxels (8^3) and more away from any tissue
    assert none[far].mean() > 0.05, "without a mask the test model should predict false positives outside"
    assert not auto[far].any(), "labels far outside the tissue must be 0"
    np.testing.assert_array_equal(auto[tissue], none[tissue])  # inside the tissue: unchanged
    # exactly: the labels of the unmasked run times the dilated mask, zero outside it
    kept = auto_tissue_mask([open_volume(runs["source"])]).region(ALL)
    np.testing.assert_array_equal(auto, none * kept)
    assert kept[tissue].all() and not kept[far].any()
    record = json.loads((runs["root"] / "auto.b2nd.predict_large.json").read_text())
    info = record["tissue_mask"]
    assert info["setting"] == "auto" and info["margin_blocks"] == TISSUE_MARGIN_BLOCKS == 1
    assert info["factors"] == [8, 8, 8] and info["margin_voxels"] == [8, 8, 8] and 0 < info["fraction"] < 1


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

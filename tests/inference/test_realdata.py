"""predict_large on real light-sheet data: the two-channel cellfinder mouse-brain TIFF slices.

A cropped region (16 planes, the first 256 x 256 voxels of each: the edge of the sample, so the
tissue mask has background to remove) is re-saved slice by slice, pixel values unchanged, and
segmented by ``nnUNetv2_selma_predict_large --tissue-mask auto --objects`` with a tiny untrained
two-channel model (tile step 1 to keep it short), then once more without the tissue mask to
compare. Skipped where ``../shared/realdata`` is not present.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from model_factory import make_model_folder  # noqa: E402
from scipy import ndimage

from nnunetv2_selma.cli.predict_large import main as predict_large_command
from nnunetv2_selma.inference.tissue_mask import auto_tissue_mask
from nnunetv2_selma.inference.whole_volume import predict_large
from nnunetv2_selma.volumes import open_volume

REALDATA = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "cellfinder_mouse_brain"
CHANNELS = ("C00", "C01")
PLANES = range(5, 21)
CROP = (slice(0, 256), slice(0, 256))
SHAPE = (len(PLANES), 256, 256)
ALL = tuple(slice(0, s) for s in SHAPE)

pytestmark = pytest.mark.skipif(not all((REALDATA / c).is_dir() for c in CHANNELS),
                                reason=f"{REALDATA}: real data not present (see ../shared/realdata/README.md)")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("realdata")
    inputs = []
    for channel in CHANNELS:
        folder = root / channel
        folder.mkdir()
        for z in PLANES:
            name = f"Z{z:04d}.tif"
            tifffile.imwrite(folder / name, tifffile.imread(REALDATA / channel / name)[CROP], compression="zlib")
        inputs.append(folder)
    model = make_model_folder(Path(os.environ["nnUNet_results"]), "Dataset577_SELMArealdata", num_channels=2,
                              patch_size=(16, 64, 64))
    out = root / "labels"
    # the command itself (its console script calls this main), in this process: one torch import, not two
    assert predict_large_command(["-i", *map(str, inputs), "-o", str(out), "-m", str(model), "-step_size", "1.0",
                                  "--tissue-mask", "auto", "--objects", "--quiet"]) == 0
    unmasked = predict_large(inputs, root / "unmasked.b2nd", model, tile_step_size=1.0, progress=False)
    return {"root": root, "inputs": inputs, "out": out, "unmasked": open_volume(unmasked).read(ALL)}


def test_output_is_the_inputs_shape_and_slices(run):
    source = open_volume(run["out"])
    assert source.kind == "slices" and tuple(source.shape) == SHAPE and source.dtype == np.uint8
    assert sorted(p.name for p in run["out"].iterdir()) == [f"Z{z:04d}.tif" for z in PLANES]


def test_tissue_mask_removes_labels_outside_the_sample_only(run):
    labels = open_volume(run["out"]).read(ALL)
    kept = auto_tissue_mask([open_volume(p) for p in run["inputs"]]).region(ALL)
    assert 0.05 < 1 - kept.mean() < 0.95, "the crop should hold background and tissue"
    assert run["unmasked"][~kept].any(), "without the mask the model should predict labels outside the sample"
    np.testing.assert_array_equal(labels[kept], run["unmasked"][kept])
    # outside the mask: only the parts of objects that touch it (kept whole), nothing else
    components, _ = ndimage.label(run["unmasked"] > 0, ndimage.generate_binary_structure(3, 3))
    touching = np.isin(components, np.unique(components[kept & (components > 0)]))
    np.testing.assert_array_equal(labels, np.where(touching, run["unmasked"], 0))
    record = json.loads((run["root"] / "labels.predict_large.json").read_text())
    assert record["tissue_mask"]["setting"] == "auto" and record["statistics"]["source"] == "measured"


def test_objects_table_agrees_with_summary_and_labels(run):
    objects = run["root"] / "labels.objects"
    summary = json.loads((objects / "summary.json").read_text())
    with open(objects / "objects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = open_volume(run["out"]).read(ALL)
    assert summary["count"] == len(rows) > 0
    assert summary["total_voxels"] == sum(int(r["voxels"]) for r in rows) == int((labels > 0).sum())
    images = [open_volume(p).read(ALL) for p in run["inputs"]]
    for r in rows:  # intensities of both channels, within the object's bounding box and the data's range
        assert 0 <= float(r["centroid_z"]) < SHAPE[0] and 0 <= float(r["centroid_y"]) < SHAPE[1]
        for c, image in enumerate(images):
            assert float(r[f"mean_intensity_{c}"]) <= float(r[f"max_intensity_{c}"]) <= image.max()
    assert (objects / "density.tif").is_file()


def test_tissue_mask_of_the_whole_volume_removes_the_dark_corner_only():
    """All 26 planes, both channels: the dark corner is outside, the bright tissue inside; ingest's mask of each
    channel (the same rule) removes the corner too."""
    from nnunetv2_selma.volumes.tissue import low_resolution_tissue_mask

    sources = [open_volume(REALDATA / c) for c in CHANNELS]
    whole = tuple(slice(0, s) for s in sources[0].shape)
    mask = auto_tissue_mask(sources)
    kept = mask.region(whole)
    image = sources[0].read(whole)
    means = ndimage.uniform_filter(image.astype(np.float32), (1, 16, 16))  # local brightness, 16 x 16 in plane
    assert not kept[:, :64, :64].any(), "the dark corner is outside the sample"
    # the bright sample is kept (but for 0.01%: specks of debris a few blocks off the sample's surface)
    assert kept[means > 200].mean() > 0.999
    assert 0.6 < mask.info["fraction"] < 0.95 and mask.info["outcome"].startswith("removed")
    for source in sources:
        low, _, threshold = low_resolution_tissue_mask(source)
        assert threshold.removes and not low[:, :8, :8].any() and 0.5 < low.mean() < 0.95

"""Objects across blocks: equal to scipy.ndimage.label + per-object statistics on a 27-block volume,
objects crossing seams, edges and corners, every input kind, resumable, CLI with dask."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import blosc2
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from nnunetv2_selma.inference import objects as objects_module
from nnunetv2_selma.inference.objects import CONNECTIVITY_RANK, density_map, measure_objects
from nnunetv2_selma.volumes import open_volume
from nnunetv2_selma.volumes.images import write_image

SHAPE = (40, 44, 48)
BLOCK = 16  # 3 x 3 x 3 blocks; seams at 16 and 32 on every axis


def _mask() -> np.ndarray:
    rng = np.random.default_rng(3)
    mask = (ndimage.gaussian_filter(rng.random(SHAPE), 1.2) > 0.535).astype(np.uint8)
    mask[:, :, 14:19] = 0  # clear room around the hand-made objects below
    mask[14:19] = 0
    # a rod through every block along x, and one along z
    mask[8, 8, :] = 1
    mask[:, 40, 40] = 2  # multi-class masks: every non-zero label is foreground
    # two voxels touching only by a corner across the corner of 8 blocks (joined by 26 only)
    mask[15, 15, 15] = mask[16, 16, 16] = 1
    # two voxels touching by an edge across the seam of 4 blocks (joined by 18 and 26)
    mask[15, 26, 15] = mask[16, 26, 16] = 1
    # a face pair across one seam (joined by all) and a lone voxel on a seam
    mask[15, 5, 30] = mask[16, 5, 30] = 1
    mask[16, 38, 2] = 1
    return mask


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.integers(0, 4000, SHAPE).astype(np.uint16), rng.normal(0, 1, SHAPE).astype(np.float32)]


def _write(kind: str, path: Path, volume: np.ndarray) -> Path:
    if kind == "slices":
        path.mkdir()
        for z in range(volume.shape[0]):
            tifffile.imwrite(path / f"Z{z:04d}.tif", volume[z])
    elif kind == "b2nd":
        blosc2.asarray(np.ascontiguousarray(volume), urlpath=str(path), mode="w", chunks=(8, 44, 48))
    else:
        write_image(path, volume)
    return path


def _reference(mask: np.ndarray, images: list[np.ndarray], connectivity: int, min_voxels: int = 1) -> dict:
    labels, n = ndimage.label(mask != 0, ndimage.generate_binary_structure(3, CONNECTIVITY_RANK[connectivity]))
    count = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.flatnonzero(count[1:] >= min_voxels) + 1
    lut = np.zeros(n + 1, np.int64)
    lut[keep] = np.arange(1, keep.size + 1)
    labels = lut[labels]
    index = np.arange(1, keep.size + 1)
    zyx = np.indices(mask.shape)
    rows = {"voxels": np.bincount(labels.ravel())[1:]}
    for axis, name in enumerate("zyx"):
        rows[f"centroid_{name}"] = ndimage.sum_labels(zyx[axis], labels, index) / rows["voxels"]
    boxes = ndimage.find_objects(labels)
    for axis, name in enumerate("zyx"):
        rows[f"bbox_{name}0"] = np.array([b[axis].start for b in boxes])
        rows[f"bbox_{name}1"] = np.array([b[axis].stop for b in boxes])
    for c, image in enumerate(images):
        values = image.astype(np.float64)
        rows[f"mean_intensity_{c}"] = ndimage.sum_labels(values, labels, index) / rows["voxels"]
        rows[f"max_intensity_{c}"] = ndimage.maximum(values, labels, index)
    return {"labels": labels, "n": int(keep.size), "rows": rows}


def _read_csv(path: Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}


@pytest.mark.parametrize("connectivity, mask_kind, labels_name", [
    (6, "slices", "labels_slices"),
    (18, "tif", "labels.tif"),
    (26, "b2nd", "labels.nii.gz"),
])
def test_objects_equal_ndimage_label_across_seams_and_corners(tmp_path, connectivity, mask_kind, labels_name):
    mask, images = _mask(), _images()
    suffix = {"slices": "", "tif": ".tif", "b2nd": ".b2nd"}[mask_kind]
    mask_path = _write(mask_kind, tmp_path / f"mask{suffix}", mask)
    image_paths = [_write("b2nd", tmp_path / "img0.b2nd", images[0]), _write("sitk", tmp_path / "img1.nii.gz",
                                                                              images[1])]
    out = measure_objects(mask_path, tmp_path / "objects", images=image_paths, block_size=BLOCK,
                          connectivity=connectivity, labels=tmp_path / labels_name, progress=False)
    ref = _reference(mask, images, connectivity)
    labels = open_volume(tmp_path / labels_name)
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(labels.read(tuple(slice(0, s) for s in SHAPE)), ref["labels"])
    # the hand-made pairs are joined exactly as the connectivity says
    got = ref["labels"]
    assert (got[15, 15, 15] == got[16, 16, 16]) == (connectivity == 26)
    assert (got[15, 26, 15] == got[16, 26, 16]) == (connectivity >= 18)
    assert got[15, 5, 30] == got[16, 5, 30] and got[8, 8, 0] == got[8, 8, -1] and got[0, 40, 40] == got[-1, 40, 40]

    table = _read_csv(out / "objects.csv")
    np.testing.assert_array_equal(table["id"], np.arange(1, ref["n"] + 1))
    for key, expected in ref["rows"].items():
        if key.startswith(("voxels", "bbox")):
            np.testing.assert_array_equal(table[key], expected, err_msg=key)
        else:  # sums are exact integers in float64 in both; float32 intensities are summed in another order
            np.testing.assert_allclose(table[key], expected, rtol=1e-12, atol=1e-12, err_msg=key)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == ref["n"] and summary["blocks"] == 27
    assert summary["total_voxels"] == int((mask != 0).sum())
    assert sum(summary["volume_histogram"]["counts"]) == ref["n"]
    density = tifffile.imread(out / "density.tif")
    centroids = np.stack([ref["rows"][f"centroid_{a}"] for a in "zyx"], axis=1)
    assert density.shape == (2, 2, 2) and int(density.sum()) == ref["n"]
    np.testing.assert_array_equal(density, density_map(centroids, SHAPE, 25))
    assert (out / "density_mip.png").stat().st_size > 1000
    assert not (out / ".partial").exists()


def test_min_voxels_drops_small_objects_ids_stay_consecutive(tmp_path):
    mask = _mask()
    path = _write("b2nd", tmp_path / "mask.b2nd", mask)
    out = measure_objects(path, tmp_path / "objects", block_size=(16, 20, 24), min_voxels=5,
                          labels=tmp_path / "labels.b2nd", progress=False)
    ref = _reference(mask, [], 26, min_voxels=5)
    np.testing.assert_array_equal(open_volume(tmp_path / "labels.b2nd").read(tuple(slice(0, s) for s in SHAPE)),
                                  ref["labels"])
    table = _read_csv(out / "objects.csv")
    assert table["voxels"].min() >= 5 and len(table["id"]) == ref["n"]
    # the same command again: nothing to do; other settings on a finished folder: refused, nothing overwritten
    before = (out / "objects.csv").stat().st_mtime_ns
    measure_objects(path, out, block_size=(16, 20, 24), min_voxels=5, labels=tmp_path / "labels.b2nd",
                    progress=False)
    assert (out / "objects.csv").stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="holds the results of another objects run"):
        measure_objects(path, out, block_size=(16, 20, 24), min_voxels=2, progress=False)


def test_killed_run_resumes_without_redoing_blocks(tmp_path, monkeypatch):
    mask, images = _mask(), _images()
    path = _write("tif", tmp_path / "mask.tif", mask)
    image = _write("b2nd", tmp_path / "img0.b2nd", images[0])
    real = objects_module.measure_block
    calls = []

    def dies_after_ten(job, block):
        if len(calls) == 10:
            raise KeyboardInterrupt  # as a killed run: the ten stored blocks stay
        calls.append(block.index)
        return real(job, block)

    monkeypatch.setattr(objects_module, "measure_block", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        measure_objects(path, tmp_path / "objects", images=[image], block_size=BLOCK, progress=False)
    assert len(list((tmp_path / "objects" / ".partial" / "blocks").glob("*.npz"))) == 10
    assert not (tmp_path / "objects" / "summary.json").exists()
    monkeypatch.setattr(objects_module, "measure_block", real)
    out = measure_objects(path, tmp_path / "objects", images=[image], block_size=BLOCK, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["measured"] for r in summary["runs"]] == [10, 17]
    ref = _reference(mask, images[:1], 26)
    table = _read_csv(out / "objects.csv")
    np.testing.assert_array_equal(table["voxels"], ref["rows"]["voxels"])
    np.testing.assert_array_equal(table["max_intensity_0"], ref["rows"]["max_intensity_0"])


def test_run_stopped_after_its_labels_resumes_past_them(tmp_path, monkeypatch):
    mask = _mask()
    path = _write("tif", tmp_path / "mask.tif", mask)
    labels = tmp_path / "labels.b2nd"
    real = objects_module.write_csv

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # stopped after the labels were committed, before the tables

    monkeypatch.setattr(objects_module, "write_csv", dies)
    with pytest.raises(KeyboardInterrupt):
        measure_objects(path, tmp_path / "objects", labels=labels, block_size=BLOCK, progress=False)
    assert labels.is_file() and not (tmp_path / "objects" / "summary.json").exists()
    first = labels.stat().st_mtime_ns
    monkeypatch.setattr(objects_module, "write_csv", real)
    out = measure_objects(path, tmp_path / "objects", labels=labels, block_size=BLOCK, progress=False)
    assert (out / "summary.json").is_file() and labels.stat().st_mtime_ns == first  # not written twice
    ref, _ = ndimage.label(mask != 0, structure=np.ones((3, 3, 3)))
    np.testing.assert_array_equal(blosc2.open(str(labels))[:], ref)
    # labels nobody's run wrote are still refused
    with pytest.raises(FileExistsError, match="already holds a file of"):
        measure_objects(path, tmp_path / "other", labels=labels, block_size=BLOCK, progress=False)


def test_image_of_another_shape_is_named(tmp_path):
    path = _write("b2nd", tmp_path / "mask.b2nd", _mask())
    other = _write("b2nd", tmp_path / "small.b2nd", _images()[0][:, :40])
    with pytest.raises(ValueError, match=r"small.b2nd: image of shape \(40, 40, 48\); expected the mask's shape"):
        measure_objects(path, tmp_path / "objects", images=[other], progress=False)
    assert not (tmp_path / "objects").exists()


def test_cli_with_two_dask_workers(tmp_path):
    mask = _mask()
    path = _write("slices", tmp_path / "mask", mask)
    command = [str(Path(sys.executable).parent / "nnUNetv2_selma_objects"), "-i", str(path), "-o",
               str(tmp_path / "objects"), "--block", "16", "--workers", "2", "--connectivity", "18",
               "--labels", str(tmp_path / "labels.b2nd"), "--quiet"]
    res = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = _reference(mask, [], 18)
    np.testing.assert_array_equal(open_volume(tmp_path / "labels.b2nd").read(tuple(slice(0, s) for s in SHAPE)),
                                  ref["labels"])
    bad = subprocess.run(command[:-1] + ["--connectivity", "8"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "argument --connectivity: found 8; expected 6, 18 or 26" in bad.stderr


def test_predict_large_objects_runs_right_after_prediction(tmp_path):
    """``predict_large --objects``: the objects of the predicted mask, intensities from the input."""
    import os

    from model_factory import make_model_folder

    model = make_model_folder(Path(os.environ["nnUNet_results"]), "Dataset575_SELMAobjects", patch_size=(16, 32, 32),
                              foreground_fraction=0.1)
    rng = np.random.default_rng(5)
    volume = (rng.gamma(2.0, 40.0, size=(20, 48, 48)) + 1).astype(np.uint16)
    inputs = _write("tif", tmp_path / "input.tif", volume)
    out = tmp_path / "pred.b2nd"
    command = [str(Path(sys.executable).parent / "nnUNetv2_selma_predict_large"), "-i", str(inputs), "-o", str(out),
               "-m", str(model), "-f", "0", "--quiet", "--objects"]
    res = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    predicted = open_volume(out).read((slice(0, 20), slice(0, 48), slice(0, 48)))
    ref = _reference(predicted, [volume], 26)
    assert ref["n"] > 0, "the test model should predict some foreground"
    table = _read_csv(tmp_path / "pred.b2nd.objects" / "objects.csv")
    np.testing.assert_array_equal(table["voxels"], ref["rows"]["voxels"])
    np.testing.assert_allclose(table["mean_intensity_0"], ref["rows"]["mean_intensity_0"], rtol=1e-12)


@pytest.mark.parametrize("taken", ["objects.csv", "density.tif", "density_mip.png"])
def test_files_of_a_user_in_the_output_folder_are_kept_unless_overwrite(tmp_path, taken, capsys):
    from nnunetv2_selma.cli.objects import main

    path = _write("tif", tmp_path / "mask.tif", _mask())
    out = tmp_path / "objects"
    out.mkdir()
    (out / taken).write_text("a user's file")
    args = ["-i", str(path), "-o", str(out), "--block", str(BLOCK), "--quiet"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{out}: already holds {taken}" in err and "--overwrite" in err
    assert (out / taken).read_text() == "a user's file" and sorted(p.name for p in out.iterdir()) == [taken]
    assert main([*args, "--overwrite"]) == 0
    assert (out / "summary.json").is_file() and (out / taken).read_bytes() != b"a user's file"
    # another run's results: replaced with --overwrite only
    assert main([*args, "--connectivity", "6"]) == 1
    assert "holds the results of another objects run" in capsys.readouterr().err
    assert main([*args, "--connectivity", "6", "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["signature"]["connectivity"] == 6


@pytest.mark.parametrize("name", ["labels.tif", "labels.ome.zarr"])
def test_labels_already_there_are_kept_unless_overwrite(tmp_path, name, capsys):
    """--labels at a path that holds something was refused without a word of --overwrite, and --overwrite
    did not replace it: the user had to remove it by hand."""
    from nnunetv2_selma.cli.objects import main

    mask = _mask()
    path = _write("tif", tmp_path / "mask.tif", mask)
    labels = tmp_path / name
    args = ["-i", str(path), "--labels", str(labels), "--block", str(BLOCK), "--quiet"]
    assert main([*args, "-o", str(tmp_path / "first")]) == 0
    before = sorted(str(p.relative_to(labels)) for p in labels.rglob("*")) if labels.is_dir() else labels.read_bytes()
    assert main([*args, "-o", str(tmp_path / "second"), "--connectivity", "6"]) == 1
    err = capsys.readouterr().err
    assert f"error: {labels}: already holds a " in err and "pass --overwrite to replace it" in err, err
    after = sorted(str(p.relative_to(labels)) for p in labels.rglob("*")) if labels.is_dir() else labels.read_bytes()
    assert after == before and not (tmp_path / "second" / "summary.json").exists()
    assert main([*args, "-o", str(tmp_path / "second"), "--connectivity", "6", "--overwrite"]) == 0
    written = open_volume(labels).read(tuple(slice(0, s) for s in SHAPE))
    np.testing.assert_array_equal(written, _reference(mask, [], 6)["labels"])
    assert not list(tmp_path.glob(f".{name}*"))  # no temporary left beside it


def test_output_path_that_is_a_file_is_named(tmp_path, capsys):
    from nnunetv2_selma.cli.objects import main

    path = _write("tif", tmp_path / "mask.tif", _mask())
    (tmp_path / "out.csv").write_text("x")
    assert main(["-i", str(path), "-o", str(tmp_path / "out.csv"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out.csv'}: found a file; expected an output folder" in err and "Errno" not in err


@pytest.mark.parametrize("kind, bad", [("tif", np.nan), ("slices", np.nan), ("b2nd", np.inf)])
def test_nan_or_infinite_mask_voxels_are_refused_by_name(tmp_path, kind, bad):
    mask = _mask().astype(np.float32)
    mask[23, 30, 31] = bad  # one voxel, far from any object: otherwise a one-voxel object
    path = _write(kind, tmp_path / ("mask" if kind == "slices" else f"mask.{kind}"), mask)
    where = str(path / "Z0023.tif") if kind == "slices" else f"{path} (z=23)"
    with pytest.raises(ValueError, match="NaN or infinite") as info:
        measure_objects(path, tmp_path / "objects", block_size=BLOCK, progress=False)
    assert str(info.value).startswith(f"{where}: the mask holds 1 NaN or infinite voxel(s)")
    assert not (tmp_path / "objects" / ".partial").exists()


@pytest.mark.parametrize("option, value, then", [("--min-voxels", "5", "1"), ("--density-voxels", "10", "25")])
def test_stopped_run_rerun_with_another_option_is_refused_or_starts_afresh(tmp_path, capsys, option, value, then):
    """A run stopped after its labels were committed, rerun with another --min-voxels, resumed and kept the old
    labels (with a table of the new setting): the option was not part of the run's signature. Every option that
    changes what is written is: the rerun is refused, naming the option, and --overwrite starts afresh."""
    from nnunetv2_selma.cli.objects import main

    mask = _mask()
    path = _write("tif", tmp_path / "mask.tif", mask)
    out, labels = tmp_path / "objects", tmp_path / "labels.b2nd"
    args = ["-i", str(path), "-o", str(out), "--labels", str(labels), "--block", str(BLOCK), "--quiet"]
    # the summary, written last, cannot be written: the run stops after its labels and tables, as a killed one
    (out / "summary.json" / "in the way").mkdir(parents=True)
    assert main(args) == 1
    (out / "summary.json" / "in the way").rmdir()
    (out / "summary.json").rmdir()
    progress = json.loads((out / ".partial" / "progress.json").read_text())
    assert progress["labels_written"] == str(labels) and labels.is_file()
    first = labels.read_bytes()
    capsys.readouterr()

    assert main([*args, option, value]) == 1
    err = capsys.readouterr().err
    name = option[2:].replace("-", "_")
    assert f"{out / '.partial'}: holds a partial run with other {name} ({then} in the partial run, {value} now)" \
        in err and "--overwrite" in err, err
    assert labels.read_bytes() == first and not (out / "summary.json").exists()

    assert main([*args, option, value, "--overwrite"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 1 and summary["settings"][name] == int(value)  # afresh, not resumed
    min_voxels = int(value) if name == "min_voxels" else 1
    ref = _reference(mask, [], 26, min_voxels=min_voxels)
    np.testing.assert_array_equal(blosc2.open(str(labels))[:], ref["labels"])
    assert len(_read_csv(out / "objects.csv")["id"]) == ref["n"] == summary["count"]
    assert not list(out.glob(".*discarded")) and not (out / ".partial").exists()
    # the same command again: nothing to do
    assert main([*args, option, value]) == 0

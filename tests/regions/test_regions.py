"""nnUNetv2_selma_regions end to end on a toy BrainGlobe atlas (real on-disk format, real API, no download).

The test brain is the toy template warped by a known affine + smooth deformation onto another voxel size and
orientation, with cells in the cores of known regions; its objects folder is written by measure_objects.
Tolerance: every region x hemisphere count within 5% of the truth (measured: exact on all 12 rows).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("brainglobe_atlasapi")
pytest.importorskip("itk")

import pandas as pd  # noqa: E402

from nnunetv2_selma.cli.regions import main  # noqa: E402
from nnunetv2_selma.regions.pipeline import PROGRESS_FILE, REGION_COLUMNS, count_regions  # noqa: E402
from nnunetv2_selma.synthetic.atlas_brain import (  # noqa: E402
    INNER_LEAVES,
    TEST_ORIENTATION,
    TEST_VOXEL_SIZE,
    write_test_brain,
    write_toy_atlas,
)

COUNT_TOLERANCE = 0.05
#: an inner-region cell more than this far (atlas voxels, 50 um) from its true atlas position is "far away"
FAR_VOXELS = 2.0


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("regions")
    atlas = write_toy_atlas(root / "brainglobe")
    truth = write_test_brain(root / "brain", root / "brainglobe", atlas_name=atlas)
    out = root / "out"
    argv = ["-i", str(root / "brain" / "objects"), "--image", str(root / "brain" / "brain.tif"),
            "--voxel-size", *map(str, TEST_VOXEL_SIZE), "--orientation", TEST_ORIENTATION, "--atlas", atlas,
            "--brainglobe-dir", str(root / "brainglobe"), "-o", str(out), "--quiet"]
    assert main(argv) == 0
    return {"root": root, "atlas": atlas, "truth": truth, "out": out, "argv": argv}


def test_counts_per_region_and_hemisphere_match_the_truth(run):
    regions = pd.read_csv(run["out"] / "regions.csv")
    assert tuple(regions.columns) == REGION_COLUMNS
    assert len(regions) == 12  # 6 leaves x left, right
    for row in regions.itertuples():
        want = run["truth"]["counts"][f"{row.region_id}_{row.hemisphere}"]
        assert abs(row.count - want) <= COUNT_TOLERANCE * want, (row.acronym, row.hemisphere, row.count, want)
        assert row.volume_mm3 > 0 and row.density_per_mm3 == pytest.approx(row.count / row.volume_mm3, rel=1e-3)
    assert set(regions["parent_id"]) == {100, 200, 300, 8}
    summary = json.loads((run["out"] / "summary.json").read_text())
    assert summary["objects_outside_brain"] == 0 and summary["objects_count"] == run["truth"]["cells"]
    assert summary["atlas"] == run["atlas"] and summary["orientation"] == TEST_ORIENTATION
    assert summary["registration"]["engine"] == "itk-elastix"
    for name in summary["files"].values():
        assert (run["out"] / name).is_file(), name


def test_no_inner_region_cell_lands_far_away(run):
    points = pd.read_csv(run["out"] / "points_atlas_space.csv")
    objects = pd.read_csv(run["root"] / "brain" / "objects" / "objects.csv")
    cells = pd.read_csv(run["root"] / "brain" / "cells.csv")
    by_voxel = {tuple(v): k for k, v in enumerate(cells[["sample_z", "sample_y", "sample_x"]].to_numpy())}
    centroids = np.rint(objects[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()).astype(int)
    order = [by_voxel[tuple(v)] for v in centroids]
    truth = cells.iloc[order].reset_index(drop=True)
    error = np.linalg.norm(points[["atlas_z", "atlas_y", "atlas_x"]].to_numpy()
                           - truth[["atlas_z", "atlas_y", "atlas_x"]].to_numpy(), axis=1)
    inner = truth["region_id"].isin(INNER_LEAVES).to_numpy()
    assert error[inner].max() <= FAR_VOXELS, error[inner].max()
    assert (points["region_id"].to_numpy()[inner] == truth["region_id"].to_numpy()[inner]).all()
    assert error.mean() * 50 < 25  # micrometres (measured 13)


def test_registered_atlas_and_pictures_in_sample_space(run):
    import tifffile

    brain = tifffile.imread(run["out"] / "downsampled.tif")
    atlas = tifffile.imread(run["out"] / "registered_atlas.tif")
    assert brain.shape == atlas.shape
    assert set(np.unique(atlas)) <= {0, 101, 102, 201, 301, 302, 303} and (atlas > 0).mean() > 0.2
    for picture in ("registration_coronal.png", "densest_regions.png"):
        assert (run["out"] / picture).stat().st_size > 5000


def test_rerun_skips_finished_steps_and_resumes_after_registration(run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(run["out"], out)
    transform = out / "registration" / "transform_bspline.txt"
    before = transform.stat().st_mtime_ns
    state = json.loads((out / PROGRESS_FILE).read_text())
    state["done"] = ["downsample", "register"]  # as if killed after the registration
    (out / PROGRESS_FILE).write_text(json.dumps(state))
    (out / "regions.csv").unlink()
    argv = [a if a != str(run["out"]) else str(out) for a in run["argv"]]
    assert main(argv) == 0
    assert transform.stat().st_mtime_ns == before  # not registered again
    assert pd.read_csv(out / "regions.csv").equals(pd.read_csv(run["out"] / "regions.csv"))
    assert json.loads((out / PROGRESS_FILE).read_text())["done"] == ["downsample", "register", "points", "outputs"]


def test_changed_input_is_refused(run):
    with pytest.raises(ValueError, match="differs: voxel_size_um"):
        count_regions(run["root"] / "brain" / "objects", run["root"] / "brain" / "brain.tif", (40, 45, 30),
                      TEST_ORIENTATION, run["out"], atlas=run["atlas"], brainglobe_dir=run["root"] / "brainglobe",
                      progress=False)


def _argv_with(run, out, **changes) -> list[str]:
    argv = list(run["argv"])
    for flag, value in changes.items():
        k = argv.index(flag)
        width = 3 if flag == "--voxel-size" else 1
        argv[k + 1:k + 1 + width] = value
    argv[argv.index("-o") + 1] = str(out)
    return argv


@pytest.mark.parametrize("changes, message", [
    ({"--orientation": ["abc"]}, "orientation 'abc': expected three letters"),
    ({"--orientation": ["aar"]}, "orientation 'aar': expected three letters"),
    ({"--atlas": ["nosuch_mouse_10um"]}, "atlas 'nosuch_mouse_10um': not on disk"),
])
def test_bad_inputs_are_named(run, tmp_path, capsys, changes, message):
    assert main(_argv_with(run, tmp_path / "out", **changes)) == 1
    assert message in capsys.readouterr().err


def test_voxel_size_missing_or_zero(run, tmp_path, capsys):
    argv = _argv_with(run, tmp_path / "out")
    k = argv.index("--voxel-size")
    with pytest.raises(SystemExit):
        main(argv[:k] + argv[k + 4:])
    assert "--voxel-size Z Y X is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_argv_with(run, tmp_path / "out", **{"--voxel-size": ["40", "0", "35"]}))
    assert "found 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"voxel size \[40, 0, 35\]"):
        count_regions(run["root"] / "brain" / "objects", run["root"] / "brain" / "brain.tif", (40, 0, 35),
                      TEST_ORIENTATION, tmp_path / "out")


def test_objects_of_another_volume_shape_are_refused(run, tmp_path, capsys):
    objects = tmp_path / "objects"
    shutil.copytree(run["root"] / "brain" / "objects", objects)
    summary = json.loads((objects / "summary.json").read_text())
    summary["signature"]["shape"] = [10, 20, 30]
    (objects / "summary.json").write_text(json.dumps(summary))
    argv = _argv_with(run, tmp_path / "out")
    argv[argv.index("-i") + 1] = str(objects)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "objects measured on a volume of shape (10, 20, 30)" in err and "has shape" in err


def test_missing_atlas_extra_names_the_install_command(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "itk", None)  # as if itk-elastix were not installed
    assert main(_argv_with(run, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert "itk-elastix" in err and "pip install 'nnunetv2-selma[atlas]'" in err
    assert not (Path(tmp_path) / "out").exists()

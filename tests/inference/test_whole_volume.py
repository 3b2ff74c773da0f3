"""Whole-volume block inference: equal to nnUNetPredictor on the whole volume, resumable, dask, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from model_factory import make_model_folder  # noqa: E402

from nnunetv2_selma.inference.blocks import compute_tile_starts, plan_blocks
from nnunetv2_selma.inference.volume_statistics import gather_volume_statistics
from nnunetv2_selma.inference.whole_volume import predict_large
from nnunetv2_selma.normalization import image_statistics
from nnunetv2_selma.volumes import open_volume
from nnunetv2_selma.volumes.images import read_image

SHAPE = (24, 64, 64)
PATCH = (16, 32, 32)
BLOCK = (16, 32, 32)  # much smaller than the volume: 2 x 2 x 2 cores


def _volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    blobs = 400 * np.exp(-((y - 0.3 * np.sin(4 * z)) ** 2 + (x + 0.2) ** 2) / 0.02)
    vol = (rng.gamma(2.0, 40.0, size=SHAPE) + 1 + blobs).astype(np.uint16)
    # zero planes at the border: nnU-Net crops them away, so the block path must too
    vol[:2] = 0
    vol[:, :, 60:] = 0
    return vol


def _write_slices(folder: Path, vol: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for z in range(vol.shape[0]):
        tifffile.imwrite(folder / f"plane_{z}.tif", vol[z])
    return folder


def _stock(model: Path, vol: np.ndarray, folds, mirroring: bool) -> np.ndarray:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=mirroring, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), folds)
    return predictor.predict_single_npy_array(vol[None].astype(np.float32), {"spacing": [1.0, 1.0, 1.0]})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole_volume")
    model = make_model_folder(Path(os.environ["nnUNet_results"]), "Dataset560_SELMAwhole", patch_size=PATCH,
                              folds=(0, 1))
    vol = _volume()
    slices = _write_slices(root / "input_slices", vol)
    # the statistics nnU-Net computes (float32, over the non-zero box) so the comparison is exact
    stats = [image_statistics(vol[2:, :, :60])]
    reference = _stock(model, vol, (0,), mirroring=False)
    assert 0.05 < reference.mean() < 0.95, "the test model should predict both labels"
    return {"root": root, "model": model, "vol": vol, "slices": slices, "stats": stats, "reference": reference}


def test_plan_blocks_covers_frame_and_whole_volume_tiles():
    shape, patch = (22, 64, 60), PATCH
    plan = plan_blocks(shape, patch, 0.5, BLOCK)
    covered = np.zeros(shape, dtype=np.int32)
    for block in plan.blocks:
        covered[tuple(slice(a, b) for a, b in block.core)] += 1
        for axis in range(3):
            assert block.region[0][0] <= block.core[0][0] and block.region[axis][1] >= block.core[axis][1]
    assert (covered == 1).all(), "cores must tile the frame exactly once"
    starts = compute_tile_starts(shape, patch, 0.5)
    assert {s for b in plan.blocks for s in b.tile_starts[2]} == set(starts[2])
    assert plan.redundancy > 1.0


def test_blockwise_equals_stock_whole_volume(setup):
    out = predict_large(setup["slices"], setup["root"] / "out_slices", setup["model"], folds=(0,), block_size=BLOCK,
                        intensity_stats=setup["stats"], progress=False)
    assert sorted(p.name for p in out.iterdir())[:2] == ["plane_0.tif", "plane_1.tif"]  # named like the input
    mask = open_volume(out).read_planes(0, SHAPE[0])
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, setup["reference"])
    record = json.loads((out.parent / (out.name + ".predict_large.json")).read_text())
    assert record["blocks"] == 8 and record["redundancy"] > 1
    assert not (out.parent / (out.name + ".partial")).exists()
    # same command again: already done, nothing rewritten
    mtime = (out / "plane_5.tif").stat().st_mtime_ns
    predict_large(setup["slices"], out, setup["model"], folds=(0,), block_size=BLOCK,
                  intensity_stats=setup["stats"], progress=False)
    assert (out / "plane_5.tif").stat().st_mtime_ns == mtime


def test_streamed_statistics_are_nnunets_to_the_bit(setup):
    """Mean and std streamed in small regions (buffers cross region edges, zero borders cropped) equal
    ``ZScoreNormalization``'s float32 values on the cropped array, bit for bit."""
    source = open_volume(setup["slices"])
    stats = gather_volume_statistics([source], max_voxels=1000, progress=False)  # rows of 15 voxels
    assert stats["bbox"] == [[2, SHAPE[0]], [0, SHAPE[1]], [0, 60]]
    assert (stats["mean"][0], stats["std"][0]) == setup["stats"][0]
    whole = gather_volume_statistics([open_volume(setup["slices"])], max_voxels=3 * 64 * 64, progress=False)
    assert (whole["mean"], whole["std"]) == (stats["mean"], stats["std"])


def test_default_streamed_statistics_bit_identical_to_stock(setup):
    """The default path (statistics measured, not handed in) on 8 blocks gives nnUNetPredictor's mask exactly."""
    out = predict_large(setup["slices"], setup["root"] / "streamed_out.tif", setup["model"], folds=(0,),
                        block_size=BLOCK, progress=False)
    record = json.loads((out.parent / (out.name + ".predict_large.json")).read_text())
    assert record["blocks"] == 8 and record["statistics"]["source"] == "measured"
    np.testing.assert_array_equal(read_image(out)[0], setup["reference"])


def test_ensemble_mirroring_streamed_stats_b2nd(setup):
    """Two folds + mirroring, .b2nd in and .nii.gz out, statistics measured by the streaming pass."""
    import blosc2

    vol = setup["vol"][:, :32, :32]
    src = setup["root"] / "ens_input.b2nd"
    blosc2.asarray(np.ascontiguousarray(vol), urlpath=str(src), mode="w", chunks=(8, 32, 32))
    out = predict_large(src, setup["root"] / "ens_out.nii.gz", setup["model"], folds=(0, 1), block_size=(12, 32, 32),
                        use_mirroring=True, progress=False)
    mask, _ = read_image(out)
    np.testing.assert_array_equal(mask, _stock(setup["model"], vol, (0, 1), mirroring=True))


def test_kill_midway_and_resume_gives_identical_output(setup):
    out = setup["root"] / "killed_out.tif"
    stats = setup["stats"][0]
    command = [sys.executable, "-m", "nnunetv2_selma.cli.predict_large", "-i", str(setup["slices"]), "-o", str(out),
               "-m", str(setup["model"]), "-f", "0", "--block", "8", "32", "32", "--stats", str(stats[0]),
               str(stats[1]), "--quiet", "--tissue-mask", "none"]
    progress = setup["root"] / "killed_out.tif.partial" / "progress.json"
    proc = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_at_kill = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if progress.is_file():
            try:
                done_at_kill = len(json.loads(progress.read_text())["done"])
            except (json.JSONDecodeError, KeyError):
                done_at_kill = 0
            if done_at_kill >= 3:
                break
        time.sleep(0.01)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave an output"
    done_before = len(json.loads(progress.read_text())["done"])
    assert done_before >= 3

    subprocess.run(command, env=os.environ.copy(), check=True, capture_output=True)
    record = json.loads((setup["root"] / "killed_out.tif.predict_large.json").read_text())
    first, second = record["runs"]
    assert second["computed"] == record["blocks"] - done_before, "finished blocks must not be redone"
    assert second["computed"] < record["blocks"]
    np.testing.assert_array_equal(tifffile.imread(out), setup["reference"])


def test_dask_two_local_workers(setup):
    out = predict_large(setup["slices"], setup["root"] / "dask_out.b2nd", setup["model"], folds=(0,),
                        block_size=BLOCK, intensity_stats=setup["stats"], workers=2, progress=False)
    source = open_volume(out)
    np.testing.assert_array_equal(source.read(tuple(slice(0, s) for s in SHAPE)), setup["reference"])


def test_unreadable_slice_is_named_and_nothing_written(setup, tmp_path):
    folder = _write_slices(tmp_path / "bad", setup["vol"][:20])
    (folder / "plane_7.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="plane_7.tif: unreadable slice"):
        predict_large(folder, tmp_path / "out", setup["model"], progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_slices_of_different_sizes_are_named(setup, tmp_path):
    folder = _write_slices(tmp_path / "sizes", setup["vol"][:20])
    tifffile.imwrite(folder / "plane_12.tif", setup["vol"][12, :50, :])
    with pytest.raises(ValueError, match=r"plane_12.tif: found a slice of shape \(50, 64\)"):
        predict_large(folder, tmp_path / "out", setup["model"], progress=False)
    assert not (tmp_path / "out").exists()


def test_output_holding_another_volume_is_not_overwritten(setup, tmp_path):
    other = _write_slices(tmp_path / "other_volume", setup["vol"][:5])
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    with pytest.raises(FileExistsError, match="other_volume: already holds a folder with 5 entries"):
        predict_large(setup["slices"], other, setup["model"], block_size=BLOCK, progress=False)
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    # a partial run of other arguments is refused too
    single = tmp_path / "mask.nii.gz"
    (tmp_path / "mask.nii.gz.partial").mkdir()
    (tmp_path / "mask.nii.gz.partial" / "progress.json").write_text(json.dumps({"signature": {"inputs": ["x"]}}))
    with pytest.raises(FileExistsError, match="partial run with other"):
        predict_large(setup["slices"], single, setup["model"], block_size=BLOCK, progress=False)
    assert not single.exists()


def _predict_large_command(setup, inputs, out, *extra):
    stats = setup["stats"][0]
    return [str(Path(sys.executable).parent / "nnUNetv2_selma_predict_large"), "-i", str(inputs), "-o", str(out),
            "-m", str(setup["model"]), "-f", "0", "--stats", str(stats[0]), str(stats[1]), "--quiet",
            "--tissue-mask", "none", *extra]


def test_input_changed_after_kill_is_refused_by_name(setup, tmp_path):
    """A partial run must not be resumed on an input whose content changed (old blocks, old statistics)."""
    slices = _write_slices(tmp_path / "changing", setup["vol"])
    out = tmp_path / "changed_out.tif"
    command = _predict_large_command(setup, slices, out, "--block", "8", "32", "32")
    progress = tmp_path / "changed_out.tif.partial" / "progress.json"
    proc = subprocess.Popen(command, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(progress.read_text())["done"]) >= 2:
                break
        except (OSError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.01)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and progress.is_file()
    # the same file names and shape, inverted content (as a user re-exporting the volume would)
    inverted = (setup["vol"].max() - setup["vol"]).astype(setup["vol"].dtype)
    for z in range(inverted.shape[0]):
        tifffile.imwrite(slices / f"plane_{z}.tif", inverted[z])
    res = subprocess.run(command, env=os.environ.copy(), capture_output=True, text=True)
    assert res.returncode != 0, "a changed input must not be resumed"
    assert "Traceback" not in res.stderr
    assert f"error: {slices}: input changed since the partial run" in res.stderr
    assert "remove" in res.stderr and str(progress.parent) in res.stderr
    assert not out.exists()
    # content rewritten with the old modification times kept (cp -p, rsync -t) is caught by the sample
    stamps = {p: p.stat().st_mtime_ns for p in slices.iterdir()}
    tifffile.imwrite(slices / "plane_12.tif", setup["vol"][12])
    os.utime(slices / "plane_12.tif", ns=(stamps[slices / "plane_12.tif"],) * 2)
    res = subprocess.run(command, env=os.environ.copy(), capture_output=True, text=True)
    assert res.returncode != 0 and "sampled voxels differ" in res.stderr, res.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["--block", "0"], "argument --block: found 0; expected an integer >= 1"),
    (["--block", "-4"], "argument --block: found -4; expected an integer >= 1"),
    (["--block", "8", "8"], "argument --block: found 2 integers; expected 1 or 3"),
    (["-step_size", "0"], "argument -step_size/--step-size: found 0; expected a number in (0, 1]"),
    (["-step_size", "1.5"], "argument -step_size/--step-size: found 1.5; expected a number in (0, 1]"),
    (["--stats", "100", "0"], "argument --stats: found std 0.0 for channel 0; expected a std > 0"),
    (["--stats", "nan", "1"], "argument --stats: found nan; expected a finite number"),
    (["--workers", "0"], "argument --workers: found 0; expected an integer >= 1"),
])
def test_numeric_arguments_refused_before_any_work(setup, tmp_path, args, message):
    out = tmp_path / "never"
    command = [str(Path(sys.executable).parent / "nnUNetv2_selma_predict_large"), "-i", str(setup["slices"]),
               "-o", str(out), "-m", str(setup["model"]), "--quiet", *args]
    res = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_image_suffix_output_is_refused(setup, tmp_path):
    res = subprocess.run(_predict_large_command(setup, setup["slices"], tmp_path / "out.png"), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"error: {tmp_path / 'out.png'}: cannot write output of kind '.png'" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_dask_local_cluster_shuts_down_quietly(setup, tmp_path):
    out = tmp_path / "dask_quiet.b2nd"
    res = subprocess.run(_predict_large_command(setup, setup["slices"], out, "--block", "16", "32", "32",
                                                "--workers", "2"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    noise = [line for line in res.stderr.splitlines()
             if any(w in line for w in ("Nanny", "Scheduler", "scheduler", "worker", "Worker", "signal", "dashboard"))]
    assert not noise, "\n".join(noise)
    np.testing.assert_array_equal(open_volume(out).read(tuple(slice(0, s) for s in SHAPE)), setup["reference"])

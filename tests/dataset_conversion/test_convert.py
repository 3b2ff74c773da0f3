"""Annotated SELMA3D patches -> nnU-Net raw datasets: every layout, nnU-Net's own integrity check, bad input.

Downloads come from the project's synthetic generator (tiny patches); bad inputs are made by breaking a
copy of one. Dataset IDs of this module: 500-519 (see conftest).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunetv2_selma.cli.convert import main as convert_main
from nnunetv2_selma.dataset_conversion.annotated import (
    AnnotatedLayoutError,
    ConversionError,
    convert_download,
    default_dataset_ids,
)
from nnunetv2_selma.synthetic.download import write_annotated_patches, write_download
from nnunetv2_selma.volumes.images import read_image, strip_image_suffix, write_image

SCALE = 0.16  # patches of 16..80 voxels per axis
CASES = 2


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> dict[str, Path]:
    """One synthetic download per layout: challenge (uint16), bia (int16), prefixed (.mha)."""
    base = tmp_path_factory.mktemp("selma_downloads")
    out = {}
    for layout, fmt, dtype in (("challenge", ".nii.gz", "uint16"), ("bia", ".nii.gz", "int16"),
                               ("prefixed", ".mha", "uint16")):
        write_annotated_patches(base / layout, layout=layout, cases_per_subset=CASES, patch_scale=SCALE, seed=0,
                                file_format=fmt, dtype=dtype)
        out[layout] = base / layout
    return out


@pytest.fixture
def broken(downloads, tmp_path) -> Path:
    """A private copy of the challenge download, free to break."""
    return Path(shutil.copytree(downloads["challenge"], tmp_path / "download"))


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_fails_cleanly(root: Path, raw: Path, error, *fragments: str, before: set[str] | None = None, **kw):
    raw.mkdir(parents=True, exist_ok=True)
    before = before if before is not None else set(os.listdir(raw))
    with pytest.raises(error) as info:
        convert_download(root, raw_dir=raw, **kw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in error message:\n{message}"
    assert set(os.listdir(raw)) == before, "conversion left files behind"
    return message


# --------------------------------------------------------------------------------------------- layouts


def test_every_layout_passes_nnunet_integrity_check(downloads):
    raw = Path(os.environ["nnUNet_raw"])
    conv = {
        "challenge": convert_download(downloads["challenge"], first_id=500),
        "bia": convert_download(downloads["bia"], first_id=505),
        "prefixed": convert_download(downloads["prefixed"], first_id=509, combined=True, ids={"combined": 519}),
    }
    for layout, datasets in conv.items():
        assert set(datasets) >= {"Nuclei", "Vessels", "cFos", "Plaques"}, layout
        for structure, folder in datasets.items():
            assert folder.parent == raw and folder.name.endswith(f"_SELMA3D_{structure}")
            dj = json.loads((folder / "dataset.json").read_text())
            assert dj["file_ending"] == ".nii.gz" and dj["numTraining"] > 0
            assert len(list((folder / "labelsTr").iterdir())) == dj["numTraining"]
    assert conv["challenge"]["Vessels"].name == "Dataset501_SELMA3D_Vessels"
    vessels = json.loads((conv["challenge"]["Vessels"] / "dataset.json").read_text())
    assert vessels["channel_names"] == {"0": "WGA", "1": "EvansBlue"}
    assert vessels["labels"] == {"background": 0, "Vessels": 1}
    # one dataset per layout keeps nnU-Net's spawn-heavy run short: 2-channel vessels (challenge),
    # int16 nuclei (bia), the combined single-channel dataset made from .mha input (prefixed)
    chosen = [conv["challenge"]["Vessels"], conv["bia"]["Nuclei"], conv["prefixed"]["Combined"]]
    ids = [f.name[7:10] for f in chosen]
    env = dict(os.environ, nnUNet_def_n_proc="1")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", *ids, "--verify_dataset_integrity",
         "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    pre = Path(os.environ["nnUNet_preprocessed"])
    for folder in chosen:
        out = pre / folder.name / "nnUNetPlans_3d_fullres"
        assert out.is_dir() and len(list(out.glob("*.b2nd"))) >= CASES, out


def test_images_keep_dtype_and_masks_are_binarised_and_logged(downloads, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="nnunetv2_selma.dataset_conversion")
    out = convert_download(downloads["bia"], raw_dir=tmp_path / "raw", spacing=(2.0, 1.0, 0.5))
    src = downloads["bia"] / "SELMA3D_training_annotated"
    encodings = set()
    for subset, structure in (("shannel_cells", "Nuclei"), ("VessAP_vessel", "Vessels")):
        for gt in sorted((src / subset / "gt").iterdir()):
            mask, _ = read_image(gt)
            converted, geometry = read_image(out[structure] / "labelsTr" / gt.name)
            assert converted.dtype == np.uint8 and set(np.unique(converted)) <= {0, 1}
            np.testing.assert_array_equal(converted, mask > 0)
            assert geometry["spacing"] == pytest.approx((0.5, 1.0, 2.0))
            values = tuple(int(v) for v in np.unique(mask))
            encodings.add(values)
            remap_lines = [r.getMessage() for r in caplog.records if str(gt) in r.getMessage()]
            if values == (0, 1):
                assert not remap_lines
            else:
                assert remap_lines == [f"{gt}: remapped {{{','.join(map(str, values))}}} -> {{0,1}} "
                                       f"(foreground = mask > 0)"]
            image, _ = read_image(src / subset / "raw" / gt.name.replace(".nii.gz", "_0000.nii.gz"))
            written, _ = read_image(out[structure] / "imagesTr" / gt.name.replace(".nii.gz", "_0000.nii.gz"))
            assert image.dtype == written.dtype == np.int16
            np.testing.assert_array_equal(written, image)
    assert (0, 255) in encodings or (0, 95, 255) in encodings  # the generator mixes encodings


def test_combined_and_single_vessel_channel(downloads, tmp_path):
    out = convert_download(downloads["prefixed"], raw_dir=tmp_path / "raw", vessel_channels=[1], combined=True)
    assert set(out) == {"Nuclei", "Vessels", "cFos", "Plaques", "Combined"}
    assert out["Combined"].name == f"Dataset{default_dataset_ids([], combined=True)['combined']}_SELMA3D_Combined"
    vessels = json.loads((out["Vessels"] / "dataset.json").read_text())
    assert vessels["channel_names"] == {"0": "EvansBlue"}
    assert sorted(p.name for p in (out["Vessels"] / "imagesTr").iterdir()) == [
        f"patchvolume_{i:03d}_0000.nii.gz" for i in range(CASES)]
    evans, _ = read_image(downloads["prefixed"] / "SELMA3D_2025_annotated" / "raw"
                          / "VessAP_vessel_patchvolume_000_0001.mha")
    np.testing.assert_array_equal(read_image(out["Vessels"] / "imagesTr" / "patchvolume_000_0000.nii.gz")[0], evans)
    combined = json.loads((out["Combined"] / "dataset.json").read_text())
    assert combined["channel_names"] == {"0": "LSM"} and combined["labels"] == {"background": 0, "structure": 1}
    assert combined["numTraining"] == 4 * CASES
    labels = sorted(p.name for p in (out["Combined"] / "labelsTr").iterdir())
    assert labels[0] == "Nuclei_patchvolume_000.nii.gz" and "Vessels_patchvolume_001.nii.gz" in labels
    # with both vessel channels, vessels are not single-channel and stay out of the combined dataset
    out2 = convert_download(downloads["prefixed"], raw_dir=tmp_path / "raw2", combined=True)
    assert json.loads((out2["Combined"] / "dataset.json").read_text())["numTraining"] == 3 * CASES


def test_rerun_is_identical_and_overwrite_is_explicit(downloads, tmp_path):
    raw = tmp_path / "raw"
    first = convert_download(downloads["challenge"], raw_dir=raw, combined=True)
    snapshot = {name: _files(folder) for name, folder in first.items()}
    message = _assert_fails_cleanly(downloads["challenge"], raw, ConversionError, "already exists", "--overwrite",
                                    str(first["Nuclei"]), combined=True)
    assert "Dataset701_SELMA3D_Nuclei" in message
    second = convert_download(downloads["challenge"], raw_dir=raw, combined=True, overwrite=True)
    assert second == first
    assert {name: _files(folder) for name, folder in second.items()} == snapshot
    other = convert_download(downloads["challenge"], raw_dir=tmp_path / "other", combined=True)
    assert {name: _files(folder) for name, folder in other.items()} == snapshot


def test_ids_override_and_cli(downloads, tmp_path, capsys):
    raw = tmp_path / "raw"
    rc = convert_main(["-i", str(downloads["bia"]), "-o", str(raw), "--ids", "VessAP_vessel=512", "cFos=513",
                       "--first-id", "514", "--subsets", "VessAP_vessel", "cFos-Active_Neurons", "shannel_cells"])
    assert rc == 0
    assert sorted(os.listdir(raw)) == ["Dataset512_SELMA3D_Vessels", "Dataset513_SELMA3D_cFos",
                                       "Dataset514_SELMA3D_Nuclei"]
    rc = convert_main(["-i", str(tmp_path / "nothing_here"), "-o", str(raw)])
    assert rc == 1 and "not a folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- bad input


def test_image_without_mask(broken, tmp_path):
    mask = broken / "annotation_brain_1" / "shannel_cells" / "gt" / "patchvolume_001.nii.gz"
    mask.unlink()
    image = broken / "brain_1_patches" / "shannel_cells" / "raw" / "patchvolume_001_0000.nii.gz"
    _assert_fails_cleanly(broken, tmp_path / "raw", AnnotatedLayoutError, str(image), "image without mask",
                          f"expected {mask}")


def test_mask_without_image(broken, tmp_path):
    image = broken / "brain_3_patches" / "AD_plaques" / "raw" / "patchvolume_000_0000.nii.gz"
    image.unlink()
    mask = broken / "annotation_brain_3" / "AD_plaques" / "gt" / "patchvolume_000.nii.gz"
    _assert_fails_cleanly(broken, tmp_path / "raw", AnnotatedLayoutError, str(mask), "mask without image",
                          f"expected {image}")


def test_missing_channel_file(broken, tmp_path):
    second = broken / "brain_2_patches" / "VessAP_vessel" / "raw" / "patchvolume_001_0001.nii.gz"
    second.unlink()
    _assert_fails_cleanly(broken, tmp_path / "raw", AnnotatedLayoutError, "patchvolume_001_0000.nii.gz",
                          "has channels [0]; expected [0, 1]", str(second))


def test_channels_of_different_shapes(broken, tmp_path):
    second = broken / "brain_2_patches" / "VessAP_vessel" / "raw" / "patchvolume_000_0001.nii.gz"
    image, _ = read_image(second)
    write_image(second, image[:, :-3])
    _assert_fails_cleanly(broken, tmp_path / "raw", ConversionError, str(second),
                          f"has shape {image[:, :-3].shape}; expected {image.shape}")


def test_image_and_mask_of_different_shapes(broken, tmp_path):
    mask_path = broken / "annotation_brain_1" / "cFos-Active_Neurons" / "gt" / "patchvolume_001.nii.gz"
    mask, _ = read_image(mask_path)
    write_image(mask_path, np.pad(mask, ((0, 2), (0, 0), (0, 0))))
    _assert_fails_cleanly(broken, tmp_path / "raw", ConversionError, str(mask_path),
                          f"mask has shape {(mask.shape[0] + 2, *mask.shape[1:])}; expected {mask.shape}")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_or_truncated_file(broken, tmp_path, damage):
    path = broken / "brain_1_patches" / "cFos-Active_Neurons" / "raw" / "patchvolume_000_0000.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an image at all" * 10)
    _assert_fails_cleanly(broken, tmp_path / "raw", ConversionError, str(path), "cannot be read",
                          "expected a readable 3D image")


@pytest.mark.parametrize("bad", ["negative", "fractional"])
def test_mask_with_negative_or_non_integer_values(broken, tmp_path, bad):
    mask_path = broken / "annotation_brain_2" / "VessAP_vessel" / "gt" / "patchvolume_001.nii.gz"
    mask, _ = read_image(mask_path)
    if bad == "negative":
        values = mask.astype(np.int16)
        values[0, 0, :3] = -1
        expected = ("negative values such as [-1]", "expected labels >= 0")
    else:
        values = mask.astype(np.float32)
        values[0, 0, :3] = 0.5
        expected = ("non-integer values such as [0.5]", "expected integer labels")
    write_image(mask_path, values)
    _assert_fails_cleanly(broken, tmp_path / "raw", ConversionError, str(mask_path), *expected)


@pytest.mark.parametrize("how", ["empty_raw_and_gt", "empty_subset_folder"])
def test_empty_subset(broken, tmp_path, how):
    subset = broken / "brain_1_patches" / "cFos-Active_Neurons"
    for folder in (subset / "raw", broken / "annotation_brain_1" / "cFos-Active_Neurons" / "gt"):
        for f in folder.iterdir():
            f.unlink()
    if how == "empty_subset_folder":
        shutil.rmtree(subset)
        subset.mkdir()
        folder = subset
    else:
        folder = subset / "raw"
    _assert_fails_cleanly(broken, tmp_path / "raw", AnnotatedLayoutError, f"{folder}: empty subset",
                          "expected")


def test_folder_matching_no_layout(tmp_path):
    root = tmp_path / "not_selma"
    (root / "images").mkdir(parents=True)
    write_image(root / "images" / "case_0000.nii.gz", np.zeros((4, 4, 4), np.uint16))
    (root / "notes.txt").write_text("hello")
    _assert_fails_cleanly(root, tmp_path / "raw", AnnotatedLayoutError, str(root), "matches no known layout",
                          "found images/, notes.txt", "brain_<x>_patches")


def test_target_id_taken_by_another_dataset(broken, tmp_path):
    raw = tmp_path / "raw"
    (raw / "Dataset702_SomethingElse").mkdir(parents=True)
    _assert_fails_cleanly(broken, raw, ConversionError, str(raw / "Dataset702_SomethingElse"),
                          "dataset ID 702 is already taken by Dataset702_SomethingElse",
                          "expected no dataset with this ID for Dataset702_SELMA3D_Vessels")


def test_2025_prefixes_and_unknown_subsets(downloads, tmp_path):
    root = Path(shutil.copytree(downloads["prefixed"], tmp_path / "download"))
    renames = {"VessAP_vessel": "blood_vessel", "AD_plaques": "my-new_cells"}
    for path in sorted(root.rglob("*.mha")):
        for old, new in renames.items():
            if path.name.startswith(old + "_"):
                path.rename(path.with_name(new + path.name[len(old):]))
    out = convert_download(root, raw_dir=tmp_path / "raw", subsets=["blood_vessel", "my-new_cells"])
    assert {k: v.name for k, v in out.items()} == {"BloodVessels": "Dataset705_SELMA3D_BloodVessels",
                                                   "MyNewCells": "Dataset711_SELMA3D_MyNewCells"}
    dj = json.loads((out["BloodVessels"] / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "LSM0", "1": "LSM1"} and dj["labels"] == {"background": 0, "BloodVessels": 1}


# ------------------------------------------------------------------------------------------ test inputs
def test_challenge_test_inputs_become_an_nnunet_input_folder_and_predictions_come_back(tmp_path, capsys):
    import SimpleITK as sitk  # noqa: N813
    import tifffile
    import torch
    from model_factory import make_model_folder
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.utils import create_lists_from_splitted_dataset_folder

    from nnunetv2_selma.synthetic.download import write_test_inputs

    shape = (20, 24, 24)
    write_test_inputs(tmp_path / "test", cases_per_structure=2, shape=shape, seed=0)
    mha = tmp_path / "test" / "images" / "cfos_001.mha"
    img = sitk.ReadImage(str(mha))
    img.SetSpacing((0.75, 0.75, 2.5))
    img.SetOrigin((-3.0, 4.0, 5.0))
    sitk.WriteImage(img, str(mha))
    # plain nnU-Net discovery finds nothing in a challenge-style folder: the reason for this step
    assert create_lists_from_splitted_dataset_folder(str(tmp_path / "test" / "images"), ".nii.gz", num_processes=1) \
        == []

    nnunet_in, pred, out = tmp_path / "nnunet_in", tmp_path / "pred", tmp_path / "out"
    assert convert_main(["--test-inputs", str(tmp_path / "test"), "-o", str(nnunet_in)]) == 0
    assert "4 case(s)" in capsys.readouterr().out
    lists = create_lists_from_splitted_dataset_folder(str(nnunet_in), ".nii.gz", num_processes=1)
    assert [[Path(f).name for f in case] for case in lists] == [
        [f"{case}_0000.nii.gz"] for case in ("cfos_001", "cfos_002", "microglia_001", "microglia_002")]
    written = sitk.ReadImage(str(nnunet_in / "cfos_001_0000.nii.gz"))
    assert written.GetSpacing() == (1.0, 1.0, 1.0)  # predicted on the voxel grid, as the container does

    model = make_model_folder(tmp_path / "results", "Dataset500_SELMAtest", patch_size=(16, 32, 32))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,))
    pred.mkdir()  # nnUNetv2_predict creates it; the sequential API does not
    predictor.predict_from_files_sequential(str(nnunet_in), str(pred))
    assert len(list(pred.glob("*.nii.gz"))) == 4

    assert convert_main(["--back", str(pred), "--test-inputs", str(nnunet_in), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "test" / "images").iterdir())
    back = sitk.ReadImage(str(out / "cfos_001.mha"))
    assert back.GetSpacing() == (0.75, 0.75, 2.5) and back.GetOrigin() == (-3.0, 4.0, 5.0)
    mask = sitk.GetArrayFromImage(back)
    assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    tif = tifffile.imread(out / "microglia_001.tif")
    seg, _ = read_image(pred / "microglia_001.nii.gz")
    np.testing.assert_array_equal(tif, (seg > 0).astype(np.uint8))

    # a 2-channel (WGA + Evans blue) vessel input as one 4D TIFF -> _0000 and _0001
    vessel = tmp_path / "vessel"
    vessel.mkdir()
    tifffile.imwrite(vessel / "vessel_001.tif", np.stack([np.full(shape, 5, np.uint16), np.full(shape, 7, np.uint16)]))
    assert convert_main(["--test-inputs", str(vessel), "-o", str(tmp_path / "vessel_in")]) == 0
    lists = create_lists_from_splitted_dataset_folder(str(tmp_path / "vessel_in"), ".nii.gz", num_processes=1)
    assert [[Path(f).name for f in case] for case in lists] == [["vessel_001_0000.nii.gz", "vessel_001_0001.nii.gz"]]
    assert read_image(tmp_path / "vessel_in" / "vessel_001_0001.nii.gz")[0].max() == 7

    # mixed channel counts and missing predictions are refused by name
    shutil.copy(vessel / "vessel_001.tif", tmp_path / "test" / "images" / "vessel_001.tif")
    assert convert_main(["--test-inputs", str(tmp_path / "test"), "-o", str(tmp_path / "mixed")]) == 1
    assert "different channel counts" in capsys.readouterr().err and not (tmp_path / "mixed").exists()
    (pred / "cfos_002.nii.gz").unlink()
    assert convert_main(["--back", str(pred), "--test-inputs", str(nnunet_in), "-o", str(tmp_path / "o2")]) == 1
    assert "no prediction for 1 of 4 test case(s): cfos_002" in capsys.readouterr().err


@pytest.mark.parametrize("variant", [("images", "labels", "", ".mha"), ("raw", "gt", "_0000", ".mha"),
                                     ("imagesTr", "labelsTr", "_0000", ".nii.gz")])
def test_2026_layout_same_name_in_image_and_mask_folders(tmp_path, variant):
    """2026: ``cell_nuclei_2301.mha`` (the organisers' example input) with its mask under the same name."""
    images, masks, channel, ext = variant
    root = tmp_path / "SELMA3D_2026_annotated"
    rng = np.random.default_rng(0)
    (root / images).mkdir(parents=True)
    (root / masks).mkdir()
    for prefix, numbers in (("cell_nuclei", ("2301", "2302")), ("blood_vessel", ("0007",))):
        for number in numbers:
            write_image(root / images / f"{prefix}_{number}{channel}{ext}",
                        rng.integers(0, 4000, (8, 12, 10)).astype(np.uint16))
            mask = (rng.random((8, 12, 10)) > 0.8).astype(np.uint8) * 255
            write_image(root / masks / f"{prefix}_{number}{ext}", mask)
    out = convert_download(root, raw_dir=tmp_path / "raw")
    assert set(out) == {"Nuclei", "BloodVessels"}, out
    for name, n in (("Nuclei", 2), ("BloodVessels", 1)):
        dj = json.loads((out[name] / "dataset.json").read_text())
        assert dj["numTraining"] == n and dj["channel_names"] == {"0": "LSM"}
        labels = sorted((out[name] / "labelsTr").iterdir())
        assert len(labels) == n and set(np.unique(read_image(labels[0])[0]).tolist()) <= {0, 1}

    (root / masks / f"cell_nuclei_2302{ext}").unlink()  # an image without its mask is named, with where
    with pytest.raises(AnnotatedLayoutError, match="cell_nuclei_2302.*image without mask"):
        convert_download(root, raw_dir=tmp_path / "raw2")


@pytest.mark.parametrize("layout", ["challenge", "2026"])
def test_generated_test_inputs_never_become_training_data(tmp_path, layout, capsys):
    """The generated download's test_inputs/images + masks look like 2026 patches; convert skips them."""
    root = tmp_path / "download"
    write_download(root, layout=layout, cases_per_subset=CASES, patch_scale=0.1, unannotated_per_structure=0)
    test_names = {strip_image_suffix(p) for p in (root / "test_inputs" / "images").iterdir()}
    assert test_names == {"cfos_001", "cfos_002", "microglia_001", "microglia_002"}
    assert convert_main(["-i", str(root), "--combined", "-o", str(tmp_path / "raw")]) == 0
    written = {p.name for p in (tmp_path / "raw").iterdir()}
    assert not {n for n in written if "Microglia" in n or n.endswith("_Cfos")}, written
    trained = {strip_image_suffix(p).rsplit("_", 1)[0] for d in (tmp_path / "raw").iterdir()
               for p in (d / "imagesTr").iterdir()}
    assert not {n for n in trained if n.endswith(tuple(test_names))}, trained

    # a record written before it named the test set: the folder is taken from its test image paths
    record = json.loads((root / "synthetic_summary.json").read_text())
    del record["test_set"]
    (root / "synthetic_summary.json").write_text(json.dumps(record))
    out = convert_download(root, raw_dir=tmp_path / "raw_old", combined=True)
    assert not {"Microglia", "Cfos"} & set(out), out

    # converting the test set itself is refused, naming the record and the root to give instead
    assert convert_main(["-i", str(root / "test_inputs"), "-o", str(tmp_path / "raw_t")]) == 1
    err = capsys.readouterr().err
    assert "is the test set named by" in err and str(root / "synthetic_summary.json") in err
    assert not (tmp_path / "raw_t").exists() or not any((tmp_path / "raw_t").iterdir())


def test_a_training_case_that_is_also_a_test_input_is_refused(tmp_path):
    root = tmp_path / "download"
    write_download(root, layout="2026", cases_per_subset=CASES, patch_scale=0.1, unannotated_per_structure=0)
    annotated = root / "SELMA3D_2026_annotated"
    # the same bytes under a training name, and a test input's own name among the training cases
    shutil.copy(root / "test_inputs" / "images" / "cfos_001.mha", annotated / "images" / "cfos_neuron_2399.mha")
    shutil.copy(root / "test_inputs" / "masks" / "cfos_001.mha", annotated / "masks" / "cfos_neuron_2399.mha")
    write_image(annotated / "images" / "microglia_002.mha", np.ones((16, 16, 16), np.uint16))
    write_image(annotated / "masks" / "microglia_002.mha", np.ones((16, 16, 16), np.uint8))
    before = set(os.listdir(tmp_path))
    with pytest.raises(AnnotatedLayoutError) as info:
        convert_download(root, raw_dir=tmp_path / "raw")
    message = str(info.value)
    assert "2 problem(s)" in message
    assert f"{annotated / 'images' / 'cfos_neuron_2399.mha'}: training case cfos_neuron_2399" in message
    assert f"is also the test input {root / 'test_inputs' / 'images' / 'cfos_001.mha'}" in message
    assert f"{annotated / 'images' / 'microglia_002.mha'}: training case microglia_002" in message
    assert set(os.listdir(tmp_path)) - before <= {"raw"}

"""Challenge submission: the model factory, the build-context exporter and the container entry point.

The entry point is driven as the container runs it (``python -m nnunetv2_selma.submission`` in a
subprocess), with its folders redirected by environment variables to an exported build context.
Dataset ids 580-599.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813 (the usual alias)
import tifffile
import torch
from model_factory import make_model_folder

from nnunetv2_selma.cli.export_submission import main as export_main
from nnunetv2_selma.submission.export import export_submission, pinned_requirements
from nnunetv2_selma.submission.interface import EDITIONS
from nnunetv2_selma.submission.models import packed_models, select_model, structure_from_dataset_name

PATCH = (16, 64, 64)
SHAPE = (12, 60, 60)  # a 500x500x50-like anisotropic patch, scaled down for CPU
SPACING = (0.75, 0.75, 2.5)  # x, y, z as SimpleITK
ORIGIN = (-12.5, 40.0, 3.25)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # 90 degrees about z


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    # one 16x64x64 patch covers a whole test image: one window per fold keeps CPU runs short
    root = tmp_path_factory.mktemp("results")
    return {
        "cfos": make_model_folder(root, "Dataset580_SELMA3D_cFos", patch_size=PATCH, folds=(0, 1), seed=0),
        "vessel": make_model_folder(root, "Dataset581_SELMA3D_VessAP_vessel", patch_size=PATCH, seed=7),
    }


@pytest.fixture(scope="module")
def build(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "context"
    rc = export_main(["-m", str(models["cfos"]), str(models["vessel"]), "-o", str(out), "--edition", "2024",
                      "--default", "cfos", "--no-wheels"])
    assert rc == 0
    return out


def _image(seed: int = 0) -> np.ndarray:
    """uint16 light-sheet-like volume: dim background, a few bright blobs."""
    rng = np.random.default_rng(seed)
    img = rng.normal(200, 30, SHAPE)
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for _ in range(6):
        c = rng.uniform((0, 0, 0), SHAPE)
        img += 3000 * np.exp(-(((zz - c[0]) / 2) ** 2 + ((yy - c[1]) / 4) ** 2 + ((xx - c[2]) / 4) ** 2))
    return np.clip(img, 0, 65535).astype(np.uint16)


def _run_entrypoint(input_root: Path, output_root: Path, models_dir: Path, **extra: str):
    # mirroring off: 8x the forward passes on a shared 2-core CPU; the flag itself is tested in-process
    env = {**os.environ, "SELMA_INPUT_ROOT": str(input_root), "SELMA_OUTPUT_ROOT": str(output_root),
           "SELMA_MODELS_DIR": str(models_dir), "SELMA_DEVICE": "cpu", "SELMA_USE_MIRRORING": "0", **extra}
    return subprocess.run([sys.executable, "-m", "nnunetv2_selma.submission"], env=env, capture_output=True,
                          text=True, timeout=300)


# --- model factory ---------------------------------------------------------------------------------------------


def test_model_factory_is_deterministic_and_loads_in_nnunet(models, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    again = make_model_folder(tmp_path, "Dataset580_SELMA3D_cFos", patch_size=PATCH, folds=(0, 1), seed=0)
    assert again.name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    for fold in (0, 1):
        a, b = (hashlib.sha256((m / f"fold_{fold}" / "checkpoint_final.pth").read_bytes()).hexdigest()
                for m in (models["cfos"], again))
        assert a == b
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(models["cfos"]), use_folds=(0, 1))
    assert type(predictor.network).__name__ == "ResidualEncoderUNet"
    assert predictor.configuration_manager.normalization_schemes == ["ZScoreNormalization"]
    x = np.random.default_rng(1).normal(size=(1, 10, 40, 36)).astype(np.float32)
    seg = predictor.predict_single_npy_array(x, {"spacing": [1.0, 1.0, 1.0]})
    assert seg.shape == (10, 40, 36)
    assert 0.02 < (seg == 1).mean() < 0.9  # untrained but not trivial


# --- export ------------------------------------------------------------------------------------------------------


def test_export_writes_a_complete_offline_build_context(build, models):
    dockerfile = (build / "Dockerfile").read_text()
    from_line = next(line for line in dockerfile.splitlines() if line.startswith("FROM "))
    assert from_line.startswith("FROM pytorch/pytorch:") and "latest" not in from_line and "cuda" in from_line
    assert "--no-index" in dockerfile and "USER user" in dockerfile
    assert 'ENTRYPOINT ["python", "-m", "nnunetv2_selma.submission"]' in dockerfile

    requirements = (build / "wheelhouse" / "requirements.txt").read_text().split()
    assert "nnunetv2==2.8.1" in requirements and "nnunetv2-selma" in requirements
    assert not any(r.split("==")[0] in ("torch", "triton") for r in requirements)
    assert all("==" in r for r in requirements if r != "nnunetv2-selma")

    config = json.loads((build / "resources" / "models.json").read_text())
    assert config["edition"] == "2024" and config["default"] == "cfos"
    assert set(config["models"]) == {"cfos", "vessel"}
    assert config["models"]["cfos"]["folds"] == [0, 1]
    assert "vessap" in config["models"]["vessel"]["prefixes"]
    ckpt = torch.load(build / "resources" / "cfos" / "fold_1" / "checkpoint_final.pth", weights_only=False)
    assert set(ckpt) == {"network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}

    runner = build / "test_run.sh"
    assert os.access(runner, os.X_OK)
    assert subprocess.run(["bash", "-n", str(runner)]).returncode == 0
    text = runner.read_text()
    assert "--network none" in text and "3d-brain-microscopy" in text and "brain-structure" in text


def test_export_refuses_bad_arguments(models, tmp_path):
    with pytest.raises(ValueError, match="folds \\[3\\] have no checkpoint_final.pth"):
        export_submission([models["cfos"]], tmp_path / "a", folds=[3], build_wheels=False)
    with pytest.raises(ValueError, match="two models are called 'cfos'"):
        export_submission([models["cfos"], ("cfos", models["vessel"])], tmp_path / "b", build_wheels=False)
    with pytest.raises(ValueError, match="plans.json is missing"):
        export_submission([tmp_path], tmp_path / "c", build_wheels=False)
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        export_submission([models["cfos"]], tmp_path / "d", build_wheels=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()


def test_export_overwrite_replaces_only_its_own_build_context(models, tmp_path):
    user = tmp_path / "my_results"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="my_results: a folder without .selma_submission"):
        export_submission([models["vessel"]], user, build_wheels=False, overwrite=True)
    assert (user / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "my_results.partial").exists()
    (tmp_path / "ctx.partial").mkdir()  # a user's folder where the staging folder would go
    with pytest.raises(ValueError, match="ctx.partial: a folder without .selma_submission"):
        export_submission([models["vessel"]], tmp_path / "ctx", build_wheels=False)
    (tmp_path / "ctx.partial").rmdir()

    out = export_submission([models["vessel"]], tmp_path / "ctx", build_wheels=False)
    assert (out / ".selma_submission").is_file()
    (out / "stale.txt").write_text("from the first export")
    again = export_submission([models["cfos"]], out, build_wheels=False, overwrite=True)
    assert again == out and not (out / "stale.txt").exists()
    assert set(json.loads((out / "resources" / "models.json").read_text())["models"]) == {"cfos"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx", "my_results"]


def test_export_cli_repeated_models_flag_accumulates(models, tmp_path):
    out = tmp_path / "ctx"
    rc = export_main(["-m", f"cfos={models['cfos']}", "-m", f"vessel={models['vessel']}", "-o", str(out),
                      "--default", "cfos", "--no-wheels"])
    assert rc == 0
    config = json.loads((out / "resources" / "models.json").read_text())
    assert set(config["models"]) == {"cfos", "vessel"} and config["default"] == "cfos"


def test_export_reuses_a_wheelhouse_and_names_missing_wheels(models, tmp_path):
    house = tmp_path / "house"
    house.mkdir()
    requirements = pinned_requirements()
    for req in [*requirements, "nnunetv2_selma==0.1.0"]:
        name, version = req.split("==")
        (house / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
    out = export_submission([models["vessel"]], tmp_path / "ctx", wheelhouse=house)
    assert len(list((out / "wheelhouse").glob("*.whl"))) == len(requirements) + 1
    assert "The wheels are included." in (out / "README.md").read_text()
    next(house.glob("nnunetv2-*.whl")).unlink()
    with pytest.raises(ValueError, match="has no wheel for: nnunetv2==2.8.1"):
        export_submission([models["vessel"]], tmp_path / "ctx2", wheelhouse=house)


def test_pinned_requirements_are_the_installed_closure():
    reqs = dict(r.split("==") for r in pinned_requirements())
    assert reqs["nnunetv2"] == "2.8.1"
    assert "dynamic-network-architectures" in reqs and "simpleitk" in reqs
    assert "torch" not in reqs and "pytest" not in reqs


def test_model_is_chosen_by_structure_prefix(build):
    models, default = packed_models(build / "resources")
    assert default == "cfos"
    assert select_model(models, default, "VessAP_vessel_patchvolume_019.mha")[0].name == "vessel"
    assert select_model(models, default, "blood-vessel_patch.tif")[0].name == "vessel"
    assert select_model(models, default, "cFos-Active_Neurons_003.mha")[0].name == "cfos"
    chosen, why = select_model(models, default, "7f3a0c2e-uuid.mha")
    assert chosen.name == "cfos" and "default" in why
    assert structure_from_dataset_name("Dataset502_SELMA3D_AD_plaques") == "plaques"
    assert structure_from_dataset_name("Dataset590_mystery") == "mystery"


# --- entry point ---------------------------------------------------------------------------------------------------


def test_entrypoint_mha_keeps_geometry_and_writes_binary_mask(build, tmp_path):
    edition = EDITIONS["2024"]
    in_dir = tmp_path / "in" / "images" / edition.input_slug
    in_dir.mkdir(parents=True)
    img = sitk.GetImageFromArray(_image(0))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    sitk.WriteImage(img, str(in_dir / "3f2b9c1e-0d4a-4c55-9a7e-6b1f.mha"))

    result = _run_entrypoint(tmp_path / "in", tmp_path / "out", build / "resources")
    assert result.returncode == 0, result.stderr
    assert "model 'cfos'" in result.stderr  # no prefix in a UUID name -> the default

    out = sitk.ReadImage(str(tmp_path / "out" / "images" / edition.output_slug / "output.mha"))
    assert out.GetSize() == img.GetSize()
    assert np.allclose(out.GetSpacing(), SPACING) and np.allclose(out.GetOrigin(), ORIGIN)
    assert np.allclose(out.GetDirection(), DIRECTION)
    mask = sitk.GetArrayFromImage(out)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE
    assert set(np.unique(mask).tolist()) == {0, 1}
    assert list((tmp_path / "out" / "images" / edition.output_slug).iterdir()) == [
        tmp_path / "out" / "images" / edition.output_slug / "output.mha"]  # no partial file left


def test_entrypoint_tif_2025_edition_picks_model_by_prefix(build, tmp_path):
    edition = EDITIONS["2025"]
    in_dir = tmp_path / "in" / "images" / edition.input_slug
    in_dir.mkdir(parents=True)
    image = (_image(1).astype(np.int32) - 400).astype(np.int16)  # signed 16-bit with negatives
    tifffile.imwrite(in_dir / "VessAP_vessel_patchvolume_001.tif", image)

    result = _run_entrypoint(tmp_path / "in", tmp_path / "out", build / "resources", SELMA_EDITION="2025")
    assert result.returncode == 0, result.stderr
    assert "model 'vessel'" in result.stderr

    out = sitk.ReadImage(str(tmp_path / "out" / "images" / edition.output_slug / "output.mha"))
    mask = sitk.GetArrayFromImage(out)
    assert mask.dtype == np.int8 and mask.shape == SHAPE
    assert set(np.unique(mask).tolist()) <= {0, 1} and mask.any()
    assert np.allclose(out.GetSpacing(), (1, 1, 1)) and np.allclose(out.GetOrigin(), (0, 0, 0))


@pytest.mark.parametrize("case", ["missing", "second", "unreadable", "empty_folder"])
def test_entrypoint_input_errors_exit_non_zero_with_a_clear_message(build, tmp_path, case):
    in_dir = tmp_path / "in" / "images" / EDITIONS["2024"].input_slug
    expected = {"missing": "does not exist", "second": "holds 2 images", "unreadable": "cannot read the input image",
                "empty_folder": "holds no image of type"}[case]
    if case != "missing":
        in_dir.mkdir(parents=True)
    if case == "second":
        for name in ("a.mha", "b.tif"):
            (in_dir / name).write_bytes(b"x")
    elif case == "unreadable":
        (in_dir / "broken.mha").write_bytes(b"this is not a MetaImage file")
    elif case == "empty_folder":
        (in_dir / "notes.txt").write_text("no image here")
    result = _run_entrypoint(tmp_path / "in", tmp_path / "out", build / "resources")
    assert result.returncode == 1
    assert expected in result.stderr and "nnunetv2_selma.submission: error: " in result.stderr
    assert "submission: ERROR" not in result.stderr and "Traceback" not in result.stderr
    assert str(in_dir) in result.stderr
    assert not (tmp_path / "out" / "images").exists()


def test_entrypoint_checks_the_output_folder_before_predicting(build, tmp_path):
    in_dir = tmp_path / "in" / "images" / EDITIONS["2024"].input_slug
    in_dir.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(_image(0)), str(in_dir / "cfos_001.mha"))
    (tmp_path / "out").write_text("a file where the output root should be")
    result = _run_entrypoint(tmp_path / "in", tmp_path / "out", build / "resources")
    assert result.returncode == 1, result.stderr
    assert f"output folder {tmp_path / 'out' / 'images' / EDITIONS['2024'].output_slug} is not writable" \
        in result.stderr
    assert "predicted in" not in result.stderr and "Traceback" not in result.stderr


def test_entrypoint_reports_an_output_it_cannot_replace_with_its_prefix_and_no_traceback(build, tmp_path):
    """A folder named output.mha made the final rename raise IsADirectoryError: a traceback naming only the
    temporary, which stayed behind."""
    in_dir = tmp_path / "in" / "images" / EDITIONS["2024"].input_slug
    in_dir.mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(_image(0)), str(in_dir / "cfos_001.mha"))
    out_dir = tmp_path / "out" / "images" / EDITIONS["2024"].output_slug
    (out_dir / "output.mha").mkdir(parents=True)
    result = _run_entrypoint(tmp_path / "in", tmp_path / "out", build / "resources")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"nnunetv2_selma.submission: error: cannot write the output {out_dir / 'output.mha'}: Is a directory" \
        in result.stderr, result.stderr[-3000:]
    assert [p.name for p in out_dir.iterdir()] == ["output.mha"]  # no temporary left beside it


def test_entrypoint_names_unexpected_arguments(capsys):
    from nnunetv2_selma.submission.entrypoint import main

    assert main(["--input", "x.mha"]) == 2
    assert "nnunetv2_selma.submission: error: found arguments '--input x.mha'; expected none" \
        in capsys.readouterr().err


def test_entrypoint_help_lists_its_environment_variables(capsys):
    from nnunetv2_selma.submission.entrypoint import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().err
    for name in ("SELMA_INPUT_ROOT", "SELMA_OUTPUT_ROOT", "SELMA_MODELS_DIR", "SELMA_EDITION", "SELMA_DEVICE",
                 "SELMA_USE_MIRRORING", "SELMA_TILE_STEP_SIZE"):
        assert f"  {name} " in text, name


def test_settings_come_from_models_json_and_environment(build):
    from nnunetv2_selma.submission.entrypoint import SubmissionError, SubmissionSettings

    base = {"SELMA_MODELS_DIR": str(build / "resources"), "SELMA_DEVICE": "cpu"}
    settings = SubmissionSettings.from_environment(base)
    assert settings.edition.name == "2024" and settings.use_mirroring and settings.tile_step_size == 0.5
    assert settings.input_root == Path("/input") and settings.output_root == Path("/output")
    settings = SubmissionSettings.from_environment({**base, "SELMA_USE_MIRRORING": "0", "SELMA_EDITION": "2025",
                                                    "SELMA_INPUT_ROOT": "/data/in"})
    assert not settings.use_mirroring and settings.edition.output_slug == "isolated-biological-structure"
    assert settings.input_root == Path("/data/in")
    with pytest.raises(ValueError, match="unknown SELMA3D edition '2023'"):
        SubmissionSettings.from_environment({**base, "SELMA_EDITION": "2023"})
    with pytest.raises(SubmissionError, match="SELMA_DEVICE='tpu'"):
        SubmissionSettings.from_environment({**base, "SELMA_DEVICE": "tpu"})


def test_entrypoint_reports_a_missing_models_json(tmp_path):
    result = _run_entrypoint(tmp_path / "in", tmp_path / "out", tmp_path / "nowhere")
    assert result.returncode == 1 and "models.json" in result.stderr and "SELMA_MODELS_DIR" in result.stderr
    assert result.stderr.startswith(f"nnunetv2_selma.submission: error: {tmp_path / 'nowhere'}"), result.stderr


def test_invoke_server_reports_a_missing_models_json_with_its_prefix(tmp_path):
    env = {**os.environ, "SELMA_MODELS_DIR": str(tmp_path / "nowhere"), "SELMA_DEVICE": "cpu"}
    result = subprocess.run([sys.executable, "-m", "nnunetv2_selma.submission.server", "--port", "0"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"nnunetv2_selma.submission.server: error: {tmp_path / 'nowhere'}"), \
        result.stderr
    assert "server: ERROR" not in result.stderr and "Traceback" not in result.stderr


def test_entrypoint_names_a_truncated_checkpoint(build, tmp_path):
    """An interrupted copy of a checkpoint was 'OSError: [Errno 22]' or a zip-reader error naming no file."""
    import shutil

    resources = tmp_path / "resources"
    shutil.copytree(build / "resources", resources)
    checkpoint = sorted(resources.rglob("checkpoint_final.pth"))[0]
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    in_dir = tmp_path / "in" / "images" / EDITIONS["2024"].input_slug
    in_dir.mkdir(parents=True)
    model_name = checkpoint.parent.parent.name
    sitk.WriteImage(sitk.GetImageFromArray(_image(0)), str(in_dir / f"{model_name}_001.mha"))
    result = _run_entrypoint(tmp_path / "in", tmp_path / "out", resources)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "unreadable checkpoint" in result.stderr and str(checkpoint) in result.stderr, result.stderr[-3000:]


# --- 2026: Grand Challenge's invoke API --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_2026(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export2026") / "context"
    rc = export_main(["-m", str(models["cfos"]), str(models["vessel"]), "-o", str(out), "--edition", "2026",
                      "--default", "cfos", "--no-wheels"])
    assert rc == 0
    return out


def test_export_2026_writes_an_invoke_context_with_the_weights_apart(build_2026):
    import tarfile

    dockerfile = (build_2026 / "Dockerfile").read_text()
    assert 'LABEL org.grand-challenge.api-method="invoke"' in dockerfile
    assert 'ENTRYPOINT ["python", "-m", "nnunetv2_selma.submission.server"]' in dockerfile
    assert "EXPOSE 4743" in dockerfile and "SELMA_MODELS_DIR=/opt/ml/model" in dockerfile
    assert "SELMA_EDITION=2026" in dockerfile and "--no-index" in dockerfile and "USER user" in dockerfile
    assert "COPY --chown=user:user resources" not in dockerfile and not (build_2026 / "resources").exists()
    assert {"model/", "model.tar.gz"} <= set((build_2026 / ".dockerignore").read_text().split())

    config = json.loads((build_2026 / "model" / "models.json").read_text())
    assert config["edition"] == "2026" and set(config["models"]) == {"cfos", "vessel"}
    with tarfile.open(build_2026 / "model.tar.gz") as tar:
        names = tar.getnames()
    assert "models.json" in names and "cfos/fold_1/checkpoint_final.pth" in names  # flat: -C model .
    assert not any(n.startswith(("/", "..", "model/")) for n in names)

    runner = build_2026 / "test_run.sh"
    assert os.access(runner, os.X_OK) and subprocess.run(["bash", "-n", str(runner)]).returncode == 0
    text = runner.read_text()
    for needed in ("/opt/ml/model", "/health", "POST /invoke", '"201"', "org.grand-challenge.api-method",
                   "--network none", "images/$INPUT_SLUG", "light-sheet-3d-microscopy",
                   "isolated-biological-structure", "inputs.json", "np.int8"):
        assert needed in text, needed


def _http(method: str, url: str, timeout: float = 300) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _provision(input_root: Path, output_root: Path, name: str, image: sitk.Image | np.ndarray) -> None:
    """Grand Challenge's provisioning between invocations: a fresh /input with inputs.json, an empty /output."""
    import shutil

    slug = EDITIONS["2026"].input_slug
    for root in (input_root, output_root):
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    (input_root / "images" / slug).mkdir(parents=True)
    if isinstance(image, np.ndarray):
        tifffile.imwrite(input_root / "images" / slug / name, image)
    else:
        sitk.WriteImage(image, str(input_root / "images" / slug / name))
    (input_root / "inputs.json").write_text(json.dumps(
        [{"socket": {"slug": slug, "relative_path": f"images/{slug}"}, "image": {"name": name}, "value": None}]))


def test_invoke_server_loads_the_models_once_and_answers_two_invocations(build_2026, tmp_path):
    import socket
    import tarfile
    import time

    model_dir = tmp_path / "opt_ml_model"  # what Grand Challenge does with the uploaded model.tar.gz
    with tarfile.open(build_2026 / "model.tar.gz") as tar:
        tar.extractall(model_dir, filter="data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    input_root, output_root = tmp_path / "input", tmp_path / "output"
    env = {**os.environ, "SELMA_MODELS_DIR": str(model_dir), "SELMA_INPUT_ROOT": str(input_root),
           "SELMA_OUTPUT_ROOT": str(output_root), "SELMA_DEVICE": "cpu", "SELMA_USE_MIRRORING": "0"}
    log_file = tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_file, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "nnunetv2_selma.submission.server", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stderr=log, stdout=log)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, log_file.read_text()[-3000:]
            try:
                status, health = _http("GET", f"{base}/health", timeout=10)
                break
            except OSError:  # not listening yet: the models load first
                assert time.monotonic() < deadline, log_file.read_text()[-3000:]
                time.sleep(0.5)
        assert status == 200 and health["models"] == ["cfos", "vessel"] and health["invocations"] == 0

        img = sitk.GetImageFromArray(_image(0))
        img.SetSpacing(SPACING)
        img.SetOrigin(ORIGIN)
        img.SetDirection(DIRECTION)
        second = _image(1)[:10, :50, :44]  # another shape: each output must be its own case's
        cases = [("3f2b9c1e-0d4a-4c55-9a7e-6b1f.mha", img, SHAPE, "cfos"),
                 ("blood_vessel_patchvolume_002.tif", second, second.shape, "vessel")]
        out_file = output_root / "images" / EDITIONS["2026"].output_slug / "output.mha"
        for name, image, shape, model in cases:
            _provision(input_root, output_root, name, image)
            status, body = _http("POST", f"{base}/invoke")
            assert status == 201, body
            assert body["output"] == str(out_file)
            out = sitk.ReadImage(str(out_file))
            mask = sitk.GetArrayFromImage(out)
            assert mask.dtype == np.int8 and mask.shape == shape
            assert set(np.unique(mask).tolist()) <= {0, 1} and mask.any()
            assert f"model {model!r}" in log_file.read_text()
        assert np.allclose(out.GetSpacing(), (1, 1, 1))  # the TIFF case: unit geometry
        assert np.allclose(sitk.ReadImage(str(out_file)).GetSize(), second.shape[::-1])

        # a bad case answers 500 with the reason, and the server stays up for the next one
        _provision(input_root, output_root, "x.mha", img)
        (input_root / "images" / EDITIONS["2026"].input_slug / "x.mha").unlink()
        status, body = _http("POST", f"{base}/invoke")
        assert status == 500 and "holds no image" in body["error"]
        assert _http("GET", f"{base}/nowhere")[0] == 404
        status, health = _http("GET", f"{base}/health")
        assert status == 200 and health["invocations"] == 3 and health["failures"] == 1
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log_file.read_text()
    assert text.count("loaded model 'cfos'") == 1 and text.count("loaded model 'vessel'") == 1, text[-3000:]


def test_invoke_server_refuses_a_case_for_another_socket(build_2026, tmp_path):
    from nnunetv2_selma.submission.entrypoint import SubmissionError, SubmissionSettings
    from nnunetv2_selma.submission.server import check_inputs_json

    settings = SubmissionSettings.from_environment({"SELMA_MODELS_DIR": str(build_2026 / "model"),
                                                    "SELMA_DEVICE": "cpu", "SELMA_INPUT_ROOT": str(tmp_path)})
    assert settings.edition.name == "2026" and settings.edition.api == "invoke"
    check_inputs_json(settings)  # no inputs.json: nothing to check
    (tmp_path / "inputs.json").write_text(json.dumps([{"socket": {"slug": "generic-medical-image"}}]))
    with pytest.raises(SubmissionError, match="input sockets \\['generic-medical-image'\\]"):
        check_inputs_json(settings)


def test_models_dir_inside_a_top_folder_of_the_tarball_is_found(build_2026, tmp_path):
    import shutil

    from nnunetv2_selma.submission.models import locate_models_dir

    shutil.copytree(build_2026 / "model", tmp_path / "model")  # tar -czf model.tar.gz model
    assert locate_models_dir(tmp_path) == tmp_path / "model"
    assert locate_models_dir(tmp_path / "model") == tmp_path / "model"


def test_inputs_json_entries_keyed_interface_are_read_and_other_keys_named(build_2026, tmp_path):
    from nnunetv2_selma.submission.entrypoint import SubmissionError, SubmissionSettings
    from nnunetv2_selma.submission.server import check_inputs_json

    settings = SubmissionSettings.from_environment({"SELMA_MODELS_DIR": str(build_2026 / "model"),
                                                    "SELMA_DEVICE": "cpu", "SELMA_INPUT_ROOT": str(tmp_path)})
    slug = settings.edition.input_slug
    inputs = tmp_path / "inputs.json"
    # older Grand Challenge templates key the socket 'interface'
    inputs.write_text(json.dumps([{"interface": {"slug": slug, "relative_path": f"images/{slug}"}, "image": {}}]))
    check_inputs_json(settings)
    inputs.write_text(json.dumps([{"interface": {"slug": "generic-medical-image"}}]))
    with pytest.raises(SubmissionError, match="input sockets \\['generic-medical-image'\\]"):
        check_inputs_json(settings)
    inputs.write_text(json.dumps([{"socket": {"slug": slug}}, {"input": {"slug": slug}}]))
    with pytest.raises(SubmissionError, match=r"inputs.json: entry 1 has \['input'\]; expected a 'socket' or "
                                              r"'interface' object with a \"slug\""):
        check_inputs_json(settings)
    inputs.write_text(json.dumps({"socket": {"slug": slug}}))
    with pytest.raises(SubmissionError, match="found a JSON dict; expected Grand Challenge's inputs.json, a list"):
        check_inputs_json(settings)


@pytest.mark.parametrize("value, expected", [("0", False), ("1", True), (" 1 ", True), ("", True)])
def test_use_mirroring_is_0_or_1(build, value, expected):
    from nnunetv2_selma.submission.entrypoint import SubmissionSettings

    settings = SubmissionSettings.from_environment({"SELMA_MODELS_DIR": str(build / "resources"),
                                                    "SELMA_DEVICE": "cpu", "SELMA_USE_MIRRORING": value})
    assert settings.use_mirroring is expected  # "" is unset: models.json's default (on)


@pytest.mark.parametrize("value", ["maybe", "true", "off", "2"])
def test_use_mirroring_other_values_are_refused_by_name(build, value):
    from nnunetv2_selma.submission.entrypoint import SubmissionError, SubmissionSettings

    with pytest.raises(SubmissionError, match=f"SELMA_USE_MIRRORING='{value}': expected 0 \\(off\\) or 1 \\(on\\)"):
        SubmissionSettings.from_environment({"SELMA_MODELS_DIR": str(build / "resources"), "SELMA_DEVICE": "cpu",
                                             "SELMA_USE_MIRRORING": value})

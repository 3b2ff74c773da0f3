"""Every console command, driven as a user would: numbers checked at the door, user errors end in one
``error: <message>`` paragraph naming the file (no traceback), ``--debug``/``SELMA_DEBUG=1`` show it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from model_factory import make_model_folder  # noqa: E402

BIN = Path(sys.executable).parent
COMMANDS = ["convert", "demo", "evaluate", "rank", "export_submission", "ingest", "plan", "setup_trainers",
            "synthesize", "pretrain", "predict_large", "export_checkpoint"]


def _run(command: str, *args, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / f"nnUNetv2_selma_{command}"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _user_error(res: subprocess.CompletedProcess, *fragments: str) -> None:
    assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_offers_debug(command):
    res = _run(command, "--help")
    assert res.returncode == 0 and "--debug" in res.stdout and "SELMA_DEBUG" in res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("command, args, message", [
    ("ingest", ["-i", "x", "-o", "y", "--chunks", "0", "64", "64"],
     "argument --chunks: found 0; expected an integer >= 1"),
    ("ingest", ["-i", "x", "-o", "y", "--blocks", "8", "-8", "8"], "argument --blocks: found -8; expected an integer"),
    ("ingest", ["-i", "x", "-o", "y", "-np", "0"], "argument -np: found 0; expected an integer >= 1"),
    ("pretrain", ["--store", "s", "--plans", "p", "-o", "o", "--iterations", "0"], "argument --iterations: found 0"),
    ("pretrain", ["--store", "s", "--plans", "p", "-o", "o", "--batch-size", "-1"], "argument --batch-size: found -1"),
    ("pretrain", ["--store", "s", "--plans", "p", "-o", "o", "--checkpoint-every", "0"],
     "argument --checkpoint-every: found 0"),
    ("pretrain", ["--store", "s", "--plans", "p", "-o", "o", "--lr", "nan"],
     "argument --lr: found nan; expected a finite"),
    ("pretrain", ["--store", "s", "--plans", "p", "-o", "o", "--mask-ratio", "1"], "argument --mask-ratio: found 1; "
                                                                                     "expected a number in (0, 1)"),
    ("pretrain", ["--store", "s", "--plans", "p", "-o", "o", "-num_gpus", "0"],
     "argument -num_gpus/--num-gpus: found 0"),
    ("synthesize", ["out", "--cases", "0"], "argument --cases: found 0; expected an integer >= 1"),
    ("synthesize", ["out", "--unannotated-shape", "0", "8", "8"], "argument --unannotated-shape: found 0"),
    ("synthesize", ["out", "--patch-scale", "-1"], "argument --patch-scale: found -1; expected a finite number > 0"),
    ("evaluate", ["-ref", "r", "-pred", "p", "-o", "o.json", "--edition", "2024", "-np", "0"], "argument -np/--num-"),
    ("plan", ["-d", "1", "-np", "0"], "argument -np: found 0; expected an integer >= 1"),
    ("convert", ["-i", "x", "--spacing", "0", "1", "1"], "argument --spacing: found 0; expected a finite number > 0"),
])
def test_numeric_arguments_are_refused_by_name_before_any_work(tmp_path, command, args, message):
    res = subprocess.run([str(BIN / f"nnUNetv2_selma_{command}"), *args], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr, res.stderr[-2000:]
    assert list(tmp_path.iterdir()) == [], "nothing may be created for a refused argument"


def test_bad_plans_file_is_named_and_debug_shows_the_traceback(tmp_path):
    """A JSON without 'configurations' (here via nnU-Net's -d/-p spelling) was a bare KeyError: 'configurations'."""
    preprocessed = tmp_path / "preprocessed"
    plans = preprocessed / "Dataset977_Bad" / "nnUNetSelmaPlans_cpu.json"
    plans.parent.mkdir(parents=True)
    plans.write_text(json.dumps({"dataset_name": "Dataset977_Bad", "plans_name": "nnUNetSelmaPlans_cpu"}))
    args = ["--store", tmp_path / "store", "-d", "Dataset977_Bad", "-p", "nnUNetSelmaPlans_cpu", "-o", tmp_path / "o",
            "-device", "cpu", "--iterations", "1", "--c"]
    env = {"nnUNet_preprocessed": str(preprocessed)}
    _user_error(_run("pretrain", *args, env=env), f"error: {plans}: no 'configurations' entry")
    assert not (tmp_path / "o").exists()
    debug = _run("pretrain", *args, "--debug", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "configurations" in debug.stderr
    assert "Traceback" in _run("pretrain", *args, env={**env, "SELMA_DEBUG": "1"}).stderr


@pytest.fixture(scope="module")
def model() -> Path:
    return make_model_folder(Path(os.environ["nnUNet_results"]), "Dataset578_SELMAcli", patch_size=(16, 32, 32),
                             folds=(0,))


def test_truncated_checkpoint_is_named(model, tmp_path):
    broken = tmp_path / "model"
    broken.mkdir()
    for name in ("plans.json", "dataset.json"):
        (broken / name).write_bytes((model / name).read_bytes())
    checkpoint = broken / "fold_0" / "checkpoint_final.pth"
    checkpoint.parent.mkdir()
    data = (model / "fold_0" / "checkpoint_final.pth").read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])  # an interrupted copy
    slices = tmp_path / "slices"
    slices.mkdir()
    for z in range(16):
        tifffile.imwrite(slices / f"s_{z:02d}.tif", np.full((32, 32), 100 + z, np.uint16))
    res = _run("predict_large", "-i", slices, "-o", tmp_path / "out.tif", "-m", broken, "--quiet")
    _user_error(res, f"error: {checkpoint}: unreadable nnU-Net checkpoint", "truncated")
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "out.tif.partial").exists()


def test_nan_slice_is_named(model, tmp_path):
    slices = tmp_path / "slices"
    slices.mkdir()
    rng = np.random.default_rng(0)
    for z in range(16):
        plane = rng.normal(100, 10, (32, 32)).astype(np.float32)
        if z == 9:
            plane[5, 7] = np.nan
        tifffile.imwrite(slices / f"s_{z:02d}.tif", plane)
    res = _run("predict_large", "-i", slices, "-o", tmp_path / "out.tif", "-m", model, "--quiet")
    _user_error(res, f"error: {slices / 's_09.tif'}: found NaN or infinite voxels")
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "out.tif.partial").exists()


def test_user_errors_of_each_command_are_one_line(tmp_path):
    """Formerly tracebacks: plan with an unknown dataset (nnU-Net's RuntimeError) and friends."""
    raw = tmp_path / "raw"
    raw.mkdir()
    _user_error(_run("plan", "-d", "977", env={"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(tmp_path)}),
                "error: -d 977: no dataset with this ID")
    _user_error(_run("ingest", "-i", tmp_path / "missing", "-o", tmp_path / "store"), str(tmp_path / "missing"))
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    _user_error(_run("evaluate", "-ref", tmp_path / "ref", "-pred", tmp_path / "pred", "--edition", "2024", "-o",
                     tmp_path / "r.json"), str(tmp_path / "ref"))
    _user_error(_run("rank", "-pred", tmp_path / "pred", "--edition", "2024", "-o", tmp_path / "rank.json"),
                str(tmp_path / "pred"))


def test_messages_name_the_fix_not_an_errno_or_a_python_keyword(tmp_path, capsys):
    """rank on a missing file, synthesize into a file or a full folder: the path, what was expected, the flag."""
    from nnunetv2_selma.cli.evaluate import rank_main
    from nnunetv2_selma.cli.synthesize import main as synthesize_main

    assert rank_main(["-pred", str(tmp_path / "missing.json"), "--edition", "2026", "-o", str(tmp_path / "r.json")]) \
        == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'missing.json'}: not found" in err and "is a prediction folder" not in err

    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        synthesize_main([str(tmp_path / "file"), "--cases", "1"])
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'file'}: found a file; expected a folder" in err and "Errno" not in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    with pytest.raises(SystemExit):
        synthesize_main([str(tmp_path / "full"), "--cases", "1"])
    err = capsys.readouterr().err
    assert "exists and is not empty; nothing was written" in err and "pass --overwrite" in err
    assert "pass overwrite=True" not in err


def test_export_submission_says_error_in_lower_case_as_every_command(tmp_path, capsys):
    from nnunetv2_selma.cli.export_submission import main

    assert main(["-m", str(tmp_path / "no_model"), "-o", str(tmp_path / "ctx"), "--no-wheels"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'no_model'}") and "ERROR" not in err, err

"""The main job end to end: ``nnUNetv2_selma_demo --profile smoke`` through the real commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import blosc2
import pytest

from nnunetv2_selma.demo import PROFILES
from nnunetv2_selma.volumes import open_volume


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    script = Path(sys.executable).with_name("nnUNetv2_selma_demo")
    proc = subprocess.run([str(script), "-o", str(out), "--profile", "smoke", "-device", "cpu"],
                          capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_report_has_both_arms_and_pictures(demo_run: Path):
    report = (demo_run / "report.md").read_text()
    assert "| scratch |" in report and "| pretrained |" in report
    for picture in ("pretraining_progress.png", "finetune_scratch_progress.png", "finetune_pretrained_progress.png",
                    "test_predictions.png", "whole_volume.png"):
        path = demo_run / "figures" / picture
        assert path.stat().st_size > 5000, picture
        assert f"figures/{picture}" in report


def test_report_states_the_paired_few_label_difference(demo_run: Path):
    report = (demo_run / "report.md").read_text()
    results = json.loads((demo_run / "results.json").read_text())
    test = results["paired"]["c-Fos test (unseen structure)"]
    assert test["n_repeats"] == len(PROFILES["smoke"].folds) and test["n_cases"] == PROFILES["smoke"].test_cases
    assert test["ci_low"] <= test["mean_diff"] <= test["ci_high"]
    assert f"| c-Fos test (unseen structure) | {test['mean_diff']:+.3f} |" in report
    assert "The 95% interval" in report
    # the few-label split: the fold fine-tuned on exactly `labelled` patches, validated on the others
    splits = json.loads((demo_run / "nnUNet_preprocessed" / "Dataset701_SELMA3D_Nuclei" / "splits_final.json")
                        .read_text())
    assert len(splits[0]["train"]) == PROFILES["smoke"].labelled
    assert not set(splits[0]["train"]) & set(splits[0]["val"])


def test_results_hold_leaderboard_metrics(demo_run: Path):
    results = json.loads((demo_run / "results.json").read_text())
    assert set(results["arms"]) == {"scratch", "pretrained"}
    for arm in results["arms"].values():
        aggregates = arm["0"]["aggregates"]
        assert 0.0 <= aggregates["cfos_dice"] <= 1.0
        assert aggregates["cfos_betti_error_0"] >= 0
    # every stage ran and was timed
    for stage in ("synthesize", "convert", "ingest", "plan", "pretrain", "test_inputs", "finetune_scratch",
                  "finetune_pretrained", "predict_scratch", "predict_pretrained", "predict_large", "total"):
        assert results["timings"][stage] > 0, stage


def test_pretrained_arm_started_from_the_checkpoint(demo_run: Path):
    profile = PROFILES["smoke"]
    fold = demo_run / "nnUNet_results_pretrained" / "Dataset701_SELMA3D_Nuclei" / \
        f"{profile.finetune_trainer}__nnUNetSelmaPlans_{profile.preset}__3d_fullres" / "fold_0"
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert "loaded" in log and "encoder.stem" in log


def test_whole_volume_mask_matches_the_volume(demo_run: Path):
    volume = open_volume(demo_run / "download" / "unannotated_cfos" / "sample_1" / "C00")
    mask = blosc2.open(str(demo_run / "whole_volume" / "cfos_sample_1_mask.b2nd"))
    assert tuple(mask.shape) == volume.shape
    assert set(map(int, set(mask[:].ravel().tolist()))) <= {0, 1}

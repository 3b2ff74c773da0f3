"""nnU-Net integration: SELMA plans preset, trainer discovery, fine-tuning from checkpoints, prediction.

Real nnU-Net commands run in subprocesses (``nnUNetv2_selma_plan``, ``nnUNetv2_train``,
``nnUNetv2_predict``, ``nnUNetv2_find_best_configuration``) on two tiny generated datasets
(IDs 520 and 521) with the ``cpu`` preset and a schedule of 1 epoch x 2 iterations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from nnunetv2_selma.checkpoints import load_pretrained_weights, save_pretrained_checkpoint
from nnunetv2_selma.network import build_network
from nnunetv2_selma.nnunet_ext import PTH_NAME, pth_line, shim_folder
from nnunetv2_selma.normalization import NORMALIZATION_SCHEME
from nnunetv2_selma.synthetic.volumes import render_patch
from nnunetv2_selma.training.planner import PRESETS, plans_identifier
from nnunetv2_selma.training.trainers import WarmupPolyLRScheduler

BIN = Path(sys.executable).parent
PLANS = plans_identifier("cpu")
TRAINER = "nnUNetTrainerSelma_1epoch_2it"
DATASETS = {520: ("SelmaIntegrationMicroglia", "microglia", (40, 40, 40)),
            521: ("SelmaIntegrationNuclei", "nuclei", (36, 44, 48))}


def _env(**extra: str) -> dict:
    """os.environ for a fresh shell: without nnUNet_extTrainer / nnUNet_selma_pretrained unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "nnUNet_selma_pretrained")}
    env.update(extra)
    return env


def _run(args: list[str], env: dict, timeout: int = 600, shell: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, shell=shell)


def _write_raw_dataset(dataset_id: int, name: str, structure: str, shape, n_train: int = 5, n_test: int = 2) -> Path:
    root = Path(os.environ["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(dataset_id)
    for i in range(n_train + n_test):
        channels, mask = render_patch(structure, shape, rng)
        images = "imagesTr" if i < n_train else "imagesTs"
        sitk.WriteImage(sitk.GetImageFromArray(channels[0]), str(root / images / f"case_{i:03d}_0000.nii.gz"))
        if i < n_train:
            label = sitk.GetImageFromArray(mask.astype(np.uint8))
            sitk.WriteImage(label, str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
    generate_dataset_json(str(root), {0: "LSM"}, {"background": 0, structure: 1}, n_train, ".nii.gz",
                          dataset_name=name)
    return root


@pytest.fixture(scope="module")
def planned() -> dict:
    """Both raw datasets, planned and preprocessed with the real ``nnUNetv2_selma_plan`` command."""
    raw = {i: _write_raw_dataset(i, *spec) for i, spec in DATASETS.items()}
    res = _run([str(BIN / "nnUNetv2_selma_plan"), "-d", "520", "521", "--preset", "cpu", "-np", "1"], _env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    pre = Path(os.environ["nnUNet_preprocessed"])
    plans = {i: pre / raw[i].name / f"{PLANS}.json" for i in raw}
    return {"raw": raw, "plans": plans}


@pytest.fixture(scope="module")
def checkpoints(planned, tmp_path_factory) -> dict:
    """A full SSL-shaped checkpoint (1-channel head), an encoder-only one and one of another topology."""
    folder = tmp_path_factory.mktemp("ckpt")
    plans = json.loads(planned["plans"][520].read_text())
    torch.manual_seed(0)
    ssl = build_network(plans, num_output_channels=1)
    save_pretrained_checkpoint(folder / "ssl.pth", ssl, {"method": "test-mae"})
    encoder = {k: v for k, v in ssl.state_dict().items() if k.startswith("encoder.")}
    save_pretrained_checkpoint(folder / "encoder.pth", encoder, {"method": "test-encoder"})
    other = json.loads(json.dumps(plans))
    other["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 16, 32, 64]
    save_pretrained_checkpoint(folder / "other.pth", build_network(other, num_output_channels=1), {})
    return {"ssl": folder / "ssl.pth", "encoder": folder / "encoder.pth", "other": folder / "other.pth",
            "ssl_network": ssl, "plans": plans, "other_plans": other}


def test_preset_gives_every_dataset_the_same_network(planned):
    configs = [json.loads(p.read_text())["configurations"]["3d_fullres"] for p in planned["plans"].values()]
    for config in configs:
        assert config["patch_size"] == list(PRESETS["cpu"].patch_size)
        assert config["spacing"] == [1.0, 1.0, 1.0]
        assert config["normalization_schemes"] == [NORMALIZATION_SCHEME]
        assert config["use_mask_for_norm"] == [False]
        assert config["resampling_fn_data"] == "no_resampling_hack"
    nets = [build_network(p, num_output_channels=2) for p in planned["plans"].values()]
    shapes = [{k: tuple(v.shape) for k, v in n.state_dict().items()} for n in nets]
    assert shapes[0] == shapes[1] and len(shapes[0]) > 50
    assert type(nets[0]).__name__ == "ResidualEncoderUNet"
    # nnU-Net's defaults stay untouched: only our plans were written
    assert not (planned["plans"][520].parent / "nnUNetPlans.json").exists()
    # the preprocessed cases keep their shape (no resampling)
    props = planned["plans"][520].parent / f"{PLANS}_3d_fullres" / "case_000.pkl"
    assert props.exists()


def test_loader_reports_adapts_and_refuses(checkpoints):
    plans, ssl = checkpoints["plans"], checkpoints["ssl_network"]
    lines: list[str] = []
    details: list[str] = []
    net = build_network(plans, num_output_channels=2, deep_supervision=True)
    report = load_pretrained_weights(net, checkpoints["ssl"], log=lines.append, detail=details.append)
    assert all(".seg_layers." in k for k in report["skipped"])
    assert torch.equal(net.state_dict()["decoder.stages.0.convs.0.conv.weight"],
                       ssl.state_dict()["decoder.stages.0.convs.0.conv.weight"])
    # one summary line; one line per tensor for the log file
    n_loaded, n_skipped = len(report["loaded"]), len(report["skipped"])
    assert lines == [f"Pretrained weights from {checkpoints['ssl']} (test-mae): {n_loaded} tensors loaded, 0 adapted, "
                     f"{n_skipped} skipped ({n_skipped} segmentation head)"]
    assert any(line.startswith("  loaded  encoder.stem") for line in details)
    assert len(details) == 1 + n_loaded + n_skipped
    # the stock nnU-Net loader reads our checkpoint too (-pretrained_weights of any trainer)
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights as stock

    stock(build_network(plans), str(checkpoints["ssl"]))

    # encoder-only checkpoint into a 2-channel network (VessAP-like): first conv repeated / 2
    net2 = build_network(plans, num_input_channels=2)
    report = load_pretrained_weights(net2, checkpoints["encoder"], log=lambda *a: None)
    stem = "encoder.stem.convs.0.conv.weight"
    w = ssl.state_dict()[stem]
    assert torch.allclose(net2.state_dict()[stem], torch.cat([w, w], 1) / 2)
    assert stem in report["adapted"]
    assert report["skipped"]["decoder.transpconvs.0.weight"].startswith("not in checkpoint (encoder-only")

    # another topology: error names the first mismatching tensor and both shapes
    expected = r"encoder\.stem\.convs\.0\.conv\.weight.*\(4, 1, 3, 3, 3\).*\(8, 1, 3, 3, 3\)"
    with pytest.raises(ValueError, match=expected):
        load_pretrained_weights(build_network(plans), checkpoints["other"], log=lambda *a: None)
    # nothing beyond the heads: a checkpoint of the segmentation heads only
    heads = {k: v for k, v in ssl.state_dict().items() if ".seg_layers." in k}
    save_pretrained_checkpoint(checkpoints["ssl"].parent / "heads.pth", heads, {})
    with pytest.raises(ValueError, match="nothing beyond the segmentation heads"):
        load_pretrained_weights(build_network(plans), checkpoints["ssl"].parent / "heads.pth", log=lambda *a: None)


def test_loader_unwraps_ddp_and_prefixes(checkpoints, tmp_path):
    """What nnU-Net's -num_gpus path hands the loader (a DDP-wrapped network) works, here on gloo/CPU."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    plans, ssl = checkpoints["plans"], checkpoints["ssl_network"]
    prefixed = {"module._orig_mod." + k: v for k, v in ssl.state_dict().items()}
    torch.save({"network_weights": prefixed}, tmp_path / "prefixed.pth")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(build_network(plans))
        report = load_pretrained_weights(ddp, tmp_path / "prefixed.pth", log=lambda *a: None)
    finally:
        dist.destroy_process_group()
    assert "encoder.stem.convs.0.conv.weight" in report["loaded"]
    assert torch.equal(ddp.module.state_dict()["encoder.stem.convs.0.conv.weight"],
                       ssl.state_dict()["encoder.stem.convs.0.conv.weight"])


def test_trainer_prints_one_summary_line_and_logs_every_tensor(planned, checkpoints, capsys):
    from nnunetv2_selma.training.trainers import nnUNetTrainerSelma

    plans = {**json.loads(planned["plans"][521].read_text()), "continue_training": False}  # as run_training adds
    dataset_json = json.loads((planned["raw"][521] / "dataset.json").read_text())
    trainer = nnUNetTrainerSelma(plans, "3d_fullres", 4, dataset_json, device=torch.device("cpu"))
    trainer.initialize()
    capsys.readouterr()
    report = trainer.load_pretrained(checkpoints["ssl"])
    console = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(console) == 1 and f"{len(report['loaded'])} tensors loaded" in console[0], console
    log = Path(trainer.log_file).read_text()
    assert "loaded  encoder.stem.convs.0.conv.weight" in log and "skipped decoder.seg_layers.0.weight" in log


def test_warmup_then_poly_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = WarmupPolyLRScheduler(opt, 0.01, max_steps=1000, warmup_steps=50)
    lrs = [sched.lr_at(s) for s in range(1000)]
    assert lrs[0] == pytest.approx(0.01 / 50) and lrs[49] == pytest.approx(0.01) and lrs[50] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(lrs[:50], lrs[1:50]))
    assert all(a >= b for a, b in zip(lrs[50:], lrs[51:])) and lrs[-1] < 1e-3
    sched.step(10)
    assert opt.param_groups[0]["lr"] == pytest.approx(lrs[10])


def test_encoder_learning_rate_scale_groups_every_parameter_once(planned):
    from nnunetv2_selma.training.trainers import (
        nnUNetTrainerSelma,
        nnUNetTrainerSelma_6epochs_25it_noTTA_encoderLR0p1,
        nnUNetTrainerSelma_12epochs_25it_noTTA_encoderLR0p1,
    )

    plans = {**json.loads(planned["plans"][521].read_text()), "continue_training": False}
    dataset_json = json.loads((planned["raw"][521] / "dataset.json").read_text())
    slow = nnUNetTrainerSelma_6epochs_25it_noTTA_encoderLR0p1(plans, "3d_fullres", 3, dataset_json,
                                                                device=torch.device("cpu"))
    slow.initialize()
    encoder, rest = slow.optimizer.param_groups
    n_params = len(list(slow.network.parameters()))
    assert len(encoder["params"]) + len(rest["params"]) == n_params
    assert {id(p) for p in encoder["params"]} == {id(p) for p in slow.network.encoder.parameters()}
    for epoch in (0, 1, 4):
        slow.lr_scheduler.step(epoch)
        assert encoder["lr"] == pytest.approx(0.1 * rest["lr"]) and rest["lr"] == pytest.approx(
            slow.lr_scheduler.lr_at(epoch))
    # the 12-epoch study schedule's variant: the same two groups, 12 epochs
    plans = {**json.loads(planned["plans"][521].read_text()), "continue_training": False}  # nnU-Net pops it
    slow12 = nnUNetTrainerSelma_12epochs_25it_noTTA_encoderLR0p1(plans, "3d_fullres", 3, dataset_json,
                                                                   device=torch.device("cpu"))
    assert slow12.num_epochs == 12 and slow12.num_iterations_per_epoch == 25 and slow12.encoder_lr_scale == 0.1
    plans = {**json.loads(planned["plans"][521].read_text()), "continue_training": False}
    plain = nnUNetTrainerSelma(plans, "3d_fullres", 3, dataset_json, device=torch.device("cpu"))
    plain.initialize()
    assert len(plain.optimizer.param_groups) == 1 and len(plain.optimizer.param_groups[0]["params"]) == n_params


def test_pth_line_appends_shim_folder_once():
    env = {"nnUNet_extTrainer": "/somewhere/else"}
    code = pth_line().replace("os.environ", "env").replace("import os; ", "")
    exec(code, {"env": env, "os": os})
    exec(code, {"env": env, "os": os})
    assert env["nnUNet_extTrainer"].split(os.pathsep) == ["/somewhere/else", str(shim_folder())]


def test_finetune_predict_find_best(planned, checkpoints, tmp_path):
    """Both set-up ways, both checkpoint routes, then the real predict and find_best_configuration."""
    # the manual way: the documented one line in a shell without nnUNet_extTrainer
    env = _env(nnUNet_selma_pretrained=str(checkpoints["encoder"]))
    cmd = (f'eval "$({BIN / "nnUNetv2_selma_setup_trainers"} --print)" && {BIN / "nnUNetv2_train"} 520 3d_fullres 0 '
           f'-tr {TRAINER} -p {PLANS} -device cpu -pretrained_weights {checkpoints["ssl"]}')
    res = _run(["bash", "-c", cmd], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = Path(os.environ["nnUNet_results"]) / planned["raw"][520].name / f"{TRAINER}__{PLANS}__3d_fullres"
    log = next((out / "fold_0").glob("training_log_*.txt")).read_text()
    # env-var checkpoint (encoder-only) first, then -pretrained_weights (full, wins)
    assert "nnUNet_selma_pretrained=" in log and "-pretrained_weights given on the command line" in log
    assert log.index("nnUNet_selma_pretrained=") < log.index("-pretrained_weights given")
    assert "loaded  encoder.stem.convs.0.conv.weight (8, 1, 3, 3, 3)" in log
    assert "loaded  decoder.stages.0.convs.0.conv.weight" in log
    assert "skipped decoder.seg_layers.0.weight: segmentation head" in log
    assert "decoder tensors not in the encoder-only checkpoint" in log
    assert "linear warm-up" in log
    assert (out / "fold_0" / "checkpoint_final.pth").exists()

    # the persistent way: the real set-up command writes the .pth; a fresh interpreter processes it.
    # The test writes into a temporary site dir (made a site dir by sitecustomize) instead of the shared venv.
    site_dir, boot = tmp_path / "site", tmp_path / "boot"
    site_dir.mkdir()
    boot.mkdir()
    res = _run([str(BIN / "nnUNetv2_selma_setup_trainers"), "--site-dir", str(site_dir)], _env())
    assert res.returncode == 0 and (site_dir / PTH_NAME).exists(), res.stderr
    (boot / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(site_dir)!r})\n")
    fresh = _env(PYTHONPATH=str(boot))
    pred = tmp_path / "pred"
    res = _run([str(BIN / "nnUNetv2_predict"), "-i", str(planned["raw"][520] / "imagesTs"), "-o", str(pred),
                "-d", "520", "-c", "3d_fullres", "-f", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu",
                "--disable_tta", "-npp", "1", "-nps", "1"], fresh)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert str(shim_folder()) in res.stdout  # nnU-Net searched our folder, set by the .pth
    for image in sorted((planned["raw"][520] / "imagesTs").glob("*_0000.nii.gz")):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(pred / image.name.replace("_0000", ""))))
        assert seg.shape == DATASETS[520][2]
        assert set(np.unique(seg)) <= {0, 1}

    res = _run([str(BIN / "nnUNetv2_find_best_configuration"), "520", "-c", "3d_fullres", "-tr", TRAINER,
                "-p", PLANS, "-f", "0", "-np", "1"], _env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    instructions = (Path(os.environ["nnUNet_results"]) / planned["raw"][520].name / "inference_instructions.txt")
    assert TRAINER in instructions.read_text()


def test_mismatching_checkpoint_stops_nnunetv2_train(planned, checkpoints):
    env = _env(nnUNet_extTrainer=str(shim_folder()))
    res = _run([str(BIN / "nnUNetv2_train"), "520", "3d_fullres", "1", "-tr", TRAINER, "-p", PLANS, "-device", "cpu",
                "-pretrained_weights", str(checkpoints["other"])], env)
    assert res.returncode != 0
    assert ("tensor 'encoder.stem.convs.0.conv.weight' has shape (4, 1, 3, 3, 3) in the checkpoint but "
            "(8, 1, 3, 3, 3) in the network") in res.stderr


def test_nnssl_format_checkpoint_fine_tunes_through_nnunetv2_train(planned, checkpoints, tmp_path):
    """An nnssl-format checkpoint (our SSL checkpoint exported with an adaptation plan for the cpu preset's
    ResidualEncoderUNet) fine-tunes through the real nnUNetv2_train: stem and encoder loaded, decoder at random."""
    from nnunetv2_selma.nnssl_format import export_nnssl_checkpoint

    nnssl = tmp_path / "nnssl_checkpoint_final.pth"
    export_nnssl_checkpoint(checkpoints["ssl"], nnssl, plans=planned["plans"][520])
    raw = torch.load(nnssl, map_location="cpu", weights_only=True)
    assert "nnssl_adaptation_plan" in raw and any(k.startswith("decoder.encoder.") for k in raw["network_weights"])
    env = _env(nnUNet_extTrainer=str(shim_folder()))
    res = _run([str(BIN / "nnUNetv2_train"), "520", "3d_fullres", "2", "-tr", TRAINER, "-p", PLANS, "-device", "cpu",
                "-pretrained_weights", str(nnssl)], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = Path(os.environ["nnUNet_results"]) / planned["raw"][520].name / f"{TRAINER}__{PLANS}__3d_fullres"
    log = next((out / "fold_2").glob("training_log_*.txt")).read_text()
    assert "loaded  encoder.stem.convs.0.conv.weight (8, 1, 3, 3, 3)" in log
    assert "skipped decoder.stages.0.convs.0.conv.weight: decoder of an nnssl checkpoint" in log
    assert (out / "fold_2" / "checkpoint_final.pth").is_file()

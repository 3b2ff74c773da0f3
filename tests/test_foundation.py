"""Public 3D foundation models: nnssl / OpenMind checkpoints in, ours out.

No download: the nnssl checkpoint is built here in nnssl's documented layout (``AbstractTrainer.save_checkpoint``:
the whole ResEnc-L state dict with its ``decoder.encoder.*`` duplicates, ``nnssl_adaptation_plan`` as
``AdaptationPlan.serialize()`` writes it for ``BaseMAETrainer``, trainer name, init args, optimizer and logging
entries), with random weights of the ResEnc-L of ``nnssl.architectures.architecture_registry.get_res_enc_l``
built with dynamic-network-architectures. ResEnc-L is built once per module.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from model_factory import _plans  # noqa: E402
from torch import nn

from nnunetv2_selma.checkpoints import (  # noqa: E402
    load_pretrained_weights,
    read_checkpoint,
    save_pretrained_checkpoint,
)
from nnunetv2_selma.network import build_network  # noqa: E402
from nnunetv2_selma.nnssl_format import check_adaptation_plan, export_nnssl_checkpoint  # noqa: E402
from nnunetv2_selma.training.planner import PRESETS  # noqa: E402

#: an adaptation plan as nnssl's BaseMAETrainer serialises it (and as the OpenMind releases publish it)
PUBLISHED_PLAN = {
    "architecture_plans": {"arch_class_name": "ResEncL", "arch_kwargs": None, "arch_kwargs_requiring_import": None},
    "pretrain_plan": {
        "dataset_name": "Dataset745_OpenMind", "plans_name": "nnsslPlans",
        "original_median_spacing_after_transp": [1, 1, 1], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"onemmiso": {
            "data_identifier": "nnsslPlans_onemmiso", "preprocessor_name": "DefaultPreprocessor",
            "spacing_style": "onemmiso", "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False], "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_mask": "resample_data_or_seg_to_shape",
            "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "spacing": [1, 1, 1], "patch_size": [160, 160, 160]}},
        "experiment_planner_used": "nnsslPlanner",
    },
    "pretrain_num_input_channels": 1,
    "recommended_downstream_patchsize": [160, 160, 160],
    "key_to_encoder": "encoder.stages",
    "key_to_stem": "encoder.stem",
    "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
    "key_to_lpe": None,
}


def nnssl_resenc_l(input_channels: int = 1, num_classes: int = 1) -> ResidualEncoderUNet:
    """nnssl's get_res_enc_l, written out with dynamic-network-architectures."""
    return ResidualEncoderUNet(
        input_channels=input_channels, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320],
        conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6, strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
        n_blocks_per_stage=[1, 3, 4, 6, 6, 6], num_classes=num_classes, n_conv_per_stage_decoder=[1] * 5,
        conv_bias=True, norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def nnssl_checkpoint(weights: dict, plan: dict | None) -> dict:
    """The dict nnssl's AbstractTrainer.save_checkpoint writes."""
    ckpt = {"network_weights": weights, "optimizer_state": {"state": {}, "param_groups": []},
            "grad_scaler_state": None, "logging": {"train_losses": [0.5, 0.4]}, "_best_ema": 0.4,
            "current_epoch": 1000, "init_args": {"configuration_name": "onemmiso", "fold": "all"},
            "trainer_name": "BaseMAETrainer_BS8"}
    if plan is not None:
        ckpt["nnssl_adaptation_plan"] = plan
    return ckpt


def preset_plans(preset: str, channels: int = 1) -> dict:
    p = PRESETS[preset]
    plans = _plans("Dataset999_Foundation", f"nnUNetSelmaPlans_{preset}", p.patch_size, channels)
    plans["configurations"]["3d_fullres"]["architecture"] = p.architecture()
    return plans


def architecture(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]["architecture"]


@pytest.fixture(scope="module")
def openmind(tmp_path_factory) -> dict:
    """A ResEnc-L nnssl checkpoint on disk (random weights, nnssl's key layout and plan)."""
    torch.manual_seed(16)
    net = nnssl_resenc_l()
    with torch.no_grad():  # norms away from their 1/0 init, so a copy is distinguishable from a fresh network
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("openmind") / "checkpoint_final.pth"
    torch.save(nnssl_checkpoint(net.state_dict(), PUBLISHED_PLAN), path)
    return {"path": path, "weights": {k: v.clone() for k, v in net.state_dict().items()}, "network": net}


def test_preset_l_is_nnssl_resenc_l_in_every_hyperparameter():
    plans = preset_plans("L")
    # the plan check passes with nothing to note, and both build the same tensors
    assert check_adaptation_plan(PUBLISHED_PLAN, architecture(plans)["network_class_name"],
                                 architecture(plans)["arch_kwargs"]) == []
    with torch.device("meta"):
        ours = build_network(plans, num_output_channels=1).state_dict()
        theirs = nnssl_resenc_l().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert PRESETS["L"].patch_size == tuple(PUBLISHED_PLAN["recommended_downstream_patchsize"])


def test_openmind_checkpoint_loads_stem_and_encoder_into_preset_l_for_two_channels(openmind):
    weights = openmind["weights"]
    assert any(k.startswith("decoder.encoder.") for k in weights)  # nnssl's layout: the duplicates are there
    plans = preset_plans("L", channels=2)
    torch.manual_seed(0)
    net = build_network(plans, num_input_channels=2, num_output_channels=2)
    lines, details = [], []
    report = load_pretrained_weights(net, openmind["path"], log=lines.append, detail=details.append,
                                     architecture=architecture(plans))
    assert report["source"] == "nnssl"
    state = net.state_dict()
    stem = "encoder.stem.convs.0.conv.weight"
    for key, value in state.items():
        if key.startswith("encoder.") and key != stem and key != "encoder.stem.convs.0.all_modules.0.weight":
            assert torch.equal(value, weights[key]), key
    # the first convolution: repeated per channel and divided by 2 (as nnU-Net master)
    assert torch.equal(state[stem], weights[stem].repeat(1, 2, 1, 1, 1) / 2)
    assert stem in report["adapted"]
    # decoder at random: not the checkpoint's
    assert not torch.equal(state["decoder.stages.0.convs.0.conv.weight"],
                           weights["decoder.stages.0.convs.0.conv.weight"])
    assert report["skipped"]["decoder.stages.0.convs.0.conv.weight"].startswith("decoder of an nnssl checkpoint")
    assert len(lines) == 1 and "nnssl BaseMAETrainer_BS8, ResEncL" in lines[0]
    assert "decoder starts at random" in lines[0]
    assert any("loaded  encoder.stages.5" in d for d in details)


def test_mismatching_plan_is_refused_naming_the_hyperparameter(openmind, tmp_path):
    wrong = copy.deepcopy(architecture(preset_plans("L")))
    wrong["arch_kwargs"]["n_blocks_per_stage"] = [1, 3, 4, 6, 6, 8]
    with pytest.raises(ValueError, match=r"differs from this plans' network in n_blocks_per_stage: checkpoint "
                                         r"\[1, 3, 4, 6, 6, 6\], plans \[1, 3, 4, 6, 6, 8\]"):
        check_adaptation_plan(PUBLISHED_PLAN, wrong["network_class_name"], wrong["arch_kwargs"])
    # through the loader, on the cpu preset: the first difference (n_stages) is named, nothing is loaded
    plans = preset_plans("cpu")
    net = build_network(plans)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="in n_stages: checkpoint 6, plans 4.*preset L"):
        load_pretrained_weights(net, openmind["path"], log=lambda *a: None, architecture=architecture(plans))
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    # a plan whose kwargs say the same with other spellings passes (class paths, ints for lists)
    same = copy.deepcopy(PUBLISHED_PLAN)
    same["architecture_plans"] = {"arch_class_name": "ResidualEncoderUNet", "arch_kwargs": {
        **architecture(preset_plans("L"))["arch_kwargs"], "nonlin": "torch.nn.modules.activation.LeakyReLU",
        "n_conv_per_stage_decoder": 2}, "arch_kwargs_requiring_import": ["conv_op", "norm_op", "nonlin"]}
    arch_l = architecture(preset_plans("L"))
    notes = check_adaptation_plan(same, arch_l["network_class_name"], arch_l["arch_kwargs"])
    assert len(notes) == 1 and "n_conv_per_stage_decoder" in notes[0]


def test_primus_missing_plan_and_truncated_file_are_refused(openmind, tmp_path):
    plans = preset_plans("L")
    primus = copy.deepcopy(PUBLISHED_PLAN)
    primus.update(architecture_plans={"arch_class_name": "PrimusM", "arch_kwargs": None,
                                      "arch_kwargs_requiring_import": None},
                  key_to_encoder="eva", key_to_stem="down_projection", keys_to_in_proj=["down_projection.proj"],
                  key_to_lpe="eva.pos_embed")
    torch.save(nnssl_checkpoint({"eva.pos_embed": torch.zeros(1, 8, 4),
                                 "down_projection.proj.weight": torch.zeros(4, 1, 8, 8, 8)}, primus),
               tmp_path / "primus.pth")
    with torch.device("meta"):
        net = build_network(plans)
    with pytest.raises(ValueError, match="PrimusM checkpoint is a transformer"):
        load_pretrained_weights(net, tmp_path / "primus.pth", log=lambda *a: None, architecture=architecture(plans))
    small = nnssl_resenc_l().encoder.stem.state_dict()
    torch.save(nnssl_checkpoint({f"encoder.stem.{k}": v for k, v in small.items()}, None), tmp_path / "noplan.pth")
    with pytest.raises(ValueError, match="noplan.pth: an nnssl checkpoint .* without 'nnssl_adaptation_plan'"):
        read_checkpoint(tmp_path / "noplan.pth")
    data = Path(openmind["path"]).read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="truncated.pth: unreadable checkpoint .* truncated"):
        read_checkpoint(tmp_path / "truncated.pth")


def test_export_to_nnssl_and_back(openmind, tmp_path):
    # preset L: ours written as nnssl names ResEnc-L, read back exactly
    ours = tmp_path / "ours_L.pth"
    save_pretrained_checkpoint(ours, openmind["network"], {
        "method": "mae", "architecture": architecture(preset_plans("L")), "patch_size": [160, 160, 160],
        "plans_name": "nnUNetSelmaPlans_L", "iterations_done": 10})
    exported = tmp_path / "nnssl_L.pth"
    plan = export_nnssl_checkpoint(ours, exported)
    assert plan["architecture_plans"] == PUBLISHED_PLAN["architecture_plans"]
    raw = torch.load(exported, map_location="cpu", weights_only=True)  # what nnU-Net master does
    assert raw["nnssl_adaptation_plan"]["key_to_lpe"] is None and raw["trainer_name"] == "nnunetv2_selma.mae"
    assert set(raw["network_weights"]) == set(openmind["weights"])  # nnssl's key layout, duplicates included
    assert all(torch.equal(raw["network_weights"][k], v) for k, v in openmind["weights"].items())
    assert raw["selma"]["plans_name"] == "nnUNetSelmaPlans_L"

    # cpu preset: "ResidualEncoderUNet" with its arguments; load back equal through the plan check
    plans = preset_plans("cpu")
    torch.manual_seed(1)
    small = build_network(plans, num_output_channels=1)
    save_pretrained_checkpoint(tmp_path / "ours_cpu.pth", small, {"method": "mae", "patch_size": [32, 32, 32]})
    with pytest.raises(ValueError, match="does not record its network.*--plans"):
        export_nnssl_checkpoint(tmp_path / "ours_cpu.pth", tmp_path / "x.pth")
    from nnunetv2_selma.cli.export_checkpoint import main

    plans_file = tmp_path / "plans.json"
    plans_file.write_text(json.dumps(plans))
    assert main([str(tmp_path / "ours_cpu.pth"), str(tmp_path / "nnssl_cpu.pth"), "--format", "nnssl",
                 "--plans", str(plans_file)]) == 0
    plan = read_checkpoint(tmp_path / "nnssl_cpu.pth").nnssl_plan
    assert plan["architecture_plans"]["arch_class_name"] == "ResidualEncoderUNet"
    assert plan["architecture_plans"]["arch_kwargs"]["features_per_stage"] == [8, 16, 32, 64]
    assert plan["pretrain_plan"]["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]
    target = build_network(plans, num_output_channels=2)
    load_pretrained_weights(target, tmp_path / "nnssl_cpu.pth", log=lambda *a: None,
                            architecture=architecture(plans))
    expected = small.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in target.state_dict().items() if k.startswith("encoder."))
    # --init (whole network) from the exported file restores every tensor, heads included
    again = build_network(plans, num_output_channels=1)
    load_pretrained_weights(again, tmp_path / "nnssl_cpu.pth", log=lambda *a: None,
                            architecture=architecture(plans), whole_network=True)
    assert all(torch.equal(v, expected[k]) for k, v in again.state_dict().items())


@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    return tiny_store


def test_pretrain_init_continues_from_our_and_nnssl_checkpoints(store, tmp_path):
    """--init: the run starts from the checkpoint (a learning rate of 1e-12 leaves it there), records it,
    and the cache key changes with it."""
    from nnunetv2_selma.cli.pretrain import main
    from nnunetv2_selma.pretraining.cache import pretraining_cache_key
    from nnunetv2_selma.pretraining.loop import PretrainingSchedule
    from nnunetv2_selma.pretraining.methods import get_method
    from nnunetv2_selma.training.ssl_trainers import nnUNetTrainerSelmaMAE

    plans = preset_plans("cpu")
    plans_file = tmp_path / "plans.json"
    plans_file.write_text(json.dumps(plans))
    torch.manual_seed(3)
    start = build_network(plans, num_output_channels=1)
    save_pretrained_checkpoint(tmp_path / "start.pth", start, {"method": "mae", "architecture": architecture(plans),
                                                               "patch_size": [32, 32, 32]})
    export_nnssl_checkpoint(tmp_path / "start.pth", tmp_path / "start_nnssl.pth")
    expected = start.state_dict()
    for name in ("start.pth", "start_nnssl.pth"):
        out = tmp_path / f"run_{name}"
        assert main(["--store", str(store), "--plans", str(plans_file), "-o", str(out), "--iterations", "1",
                     "--batch-size", "1", "--lr", "1e-12", "--num-workers", "0", "-device", "cpu", "--no-progress",
                     "--init", str(tmp_path / name)]) == 0
        final = read_checkpoint(out / "checkpoint_final.pth")
        assert final.metadata["init"]["source"] == ("selma" if name == "start.pth" else "nnssl")
        for key, value in expected.items():
            if value.is_floating_point() and "running" not in key:
                assert torch.allclose(final.weights[key], value, atol=1e-6), key
        assert f"Pretrained weights from {tmp_path / name}" in (out / "pretraining_log.txt").read_text()
    # the trainer flag's cache key records the checkpoint it starts from
    assert nnUNetTrainerSelmaMAE.pretraining_init is None
    schedule = PretrainingSchedule(iterations=5)
    keys = {pretraining_cache_key(plans, "3d_fullres", "s", get_method("mae"), schedule, init)
            for init in (None, tmp_path / "start.pth", tmp_path / "start_nnssl.pth")}
    assert len(keys) == 3


def test_export_command_errors_name_the_file(openmind, tmp_path, capsys):
    from nnunetv2_selma.cli.export_checkpoint import main

    assert main([str(tmp_path / "missing.pth"), str(tmp_path / "o.pth"), "--format", "nnssl"]) == 1
    assert "error: pretrained checkpoint" in capsys.readouterr().err
    assert main([str(openmind["path"]), str(tmp_path / "o.pth"), "--format", "nnssl"]) == 1
    assert "already an nnssl checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()


def _resave_entry_by_entry(path: Path, destination: Path) -> None:
    """The file as releases before shared saving wrote it: every state-dict name in its own storage."""
    raw = torch.load(path, map_location="cpu", weights_only=False)
    raw["network_weights"] = {k: v.clone() for k, v in raw["network_weights"].items()}
    torch.save(raw, destination)


def test_checkpoints_store_each_network_tensor_once(openmind, tmp_path):
    """Preset L (ResEnc-L): our checkpoint and its nnssl export hold the parameters once (the decoder's
    references to the encoder and each convolution's second name add nothing), and every loader gives the
    network's tensors back."""
    network = openmind["network"]
    plans = preset_plans("L")
    parameter_bytes = 4 * sum(p.numel() for p in network.parameters())
    ours, exported = tmp_path / "ours_L.pth", tmp_path / "nnssl_L.pth"
    save_pretrained_checkpoint(ours, network, {"method": "mae", "architecture": architecture(plans),
                                               "patch_size": [160, 160, 160], "plans_name": "nnUNetSelmaPlans_L"})
    export_nnssl_checkpoint(ours, exported)
    for path in (ours, exported):
        assert abs(path.stat().st_size / parameter_bytes - 1) < 0.1, (path.name, path.stat().st_size, parameter_bytes)
    expected = network.state_dict()

    target = build_network(plans, num_output_channels=1)

    def reset() -> None:
        with torch.no_grad():
            for value in target.state_dict().values():
                value.zero_()

    # ours, whole network (--init): every tensor, heads included
    reset()
    load_pretrained_weights(target, ours, log=lambda *a: None, whole_network=True)
    assert all(torch.equal(v, expected[k]) for k, v in target.state_dict().items())
    # nnU-Net's -pretrained_weights: everything but the heads
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights as stock_loader

    reset()
    stock_loader(target, str(ours), verbose=False)
    assert all(torch.equal(v, expected[k]) for k, v in target.state_dict().items() if ".seg_layers." not in k)
    # nnssl's layout: every name of the network, read as nnU-Net master reads it; then our nnssl path
    raw = torch.load(exported, map_location="cpu", weights_only=True)["network_weights"]
    assert set(raw) == set(expected) and all(torch.equal(raw[k], v) for k, v in expected.items())
    reset()
    load_pretrained_weights(target, exported, log=lambda *a: None, architecture=architecture(plans))
    assert all(torch.equal(v, expected[k]) for k, v in target.state_dict().items() if k.startswith("encoder."))


def test_old_entry_by_entry_checkpoints_load_and_export_small(tmp_path):
    plans = preset_plans("cpu")
    torch.manual_seed(5)
    network = build_network(plans, num_output_channels=1)
    expected = network.state_dict()
    save_pretrained_checkpoint(tmp_path / "new.pth", network, {"method": "mae", "architecture": architecture(plans),
                                                               "patch_size": [32, 32, 32]})
    _resave_entry_by_entry(tmp_path / "new.pth", tmp_path / "old.pth")
    assert (tmp_path / "old.pth").stat().st_size > 2 * (tmp_path / "new.pth").stat().st_size
    # the old file loads as before
    again = build_network(plans, num_output_channels=1)
    load_pretrained_weights(again, tmp_path / "old.pth", log=lambda *a: None, whole_network=True)
    assert all(torch.equal(v, expected[k]) for k, v in again.state_dict().items())
    # exporting it stores each network tensor once, values unchanged
    export_nnssl_checkpoint(tmp_path / "old.pth", tmp_path / "old_nnssl.pth")
    assert (tmp_path / "old_nnssl.pth").stat().st_size < 1.1 * (tmp_path / "new.pth").stat().st_size
    raw = torch.load(tmp_path / "old_nnssl.pth", map_location="cpu", weights_only=True)["network_weights"]
    assert all(torch.equal(raw[k], v) for k, v in expected.items())
    assert raw["decoder.encoder.stem.convs.0.conv.weight"] is raw["encoder.stem.convs.0.conv.weight"]


def test_exported_plan_writes_noresample_spacing_none_and_our_loader_reads_both_forms(tmp_path):
    from nnunetv2_selma.nnssl_format import pretrain_spacing

    plans = preset_plans("cpu")
    network = build_network(plans, num_output_channels=1)
    save_pretrained_checkpoint(tmp_path / "ours.pth", network, {"method": "mae", "architecture": architecture(plans),
                                                                "patch_size": [32, 32, 32]})
    export_nnssl_checkpoint(tmp_path / "ours.pth", tmp_path / "nnssl.pth")
    raw = torch.load(tmp_path / "nnssl.pth", map_location="cpu", weights_only=True)
    config = raw["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["3d_fullres"]
    assert config["spacing_style"] == "noresample" and config["spacing"] is None  # as nnssl's planner writes it
    # read back through our loader: the plan, its spacing, and the loader's summary
    plan = read_checkpoint(tmp_path / "nnssl.pth").nnssl_plan
    assert pretrain_spacing(plan) is None
    lines = []
    load_pretrained_weights(build_network(plans, num_output_channels=2), tmp_path / "nnssl.pth", log=lines.append,
                            architecture=architecture(plans))
    assert "at the data's own spacing (not resampled)" in lines[0]
    # the form earlier exports wrote ([1, 1, 1] with noresample) reads the same; a resampled plan gives its spacing
    raw["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["3d_fullres"]["spacing"] = [1.0, 1.0, 1.0]
    torch.save(raw, tmp_path / "earlier.pth")
    assert pretrain_spacing(read_checkpoint(tmp_path / "earlier.pth").nnssl_plan) is None
    assert pretrain_spacing(PUBLISHED_PLAN) == [1.0, 1.0, 1.0]


def test_export_never_replaces_a_file_without_overwrite_and_never_its_input(tmp_path, capsys):
    from nnunetv2_selma.cli.export_checkpoint import main

    plans = preset_plans("cpu")
    save_pretrained_checkpoint(tmp_path / "in.pth", build_network(plans, num_output_channels=1),
                               {"method": "mae", "architecture": architecture(plans), "patch_size": [32, 32, 32]})
    before = (tmp_path / "in.pth").read_bytes()
    (tmp_path / "out.pth").write_bytes(b"a user's file")
    assert main([str(tmp_path / "in.pth"), str(tmp_path / "out.pth"), "--format", "nnssl"]) == 1
    assert "out.pth already exists; choose a new file or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out.pth").read_bytes() == b"a user's file"
    for out in (tmp_path / "in.pth", tmp_path / "." / "in.pth"):  # the input itself, even with --overwrite
        assert main([str(tmp_path / "in.pth"), str(out), "--format", "nnssl", "--overwrite"]) == 1
        assert "is the input checkpoint itself" in capsys.readouterr().err
        assert (tmp_path / "in.pth").read_bytes() == before
    assert main([str(tmp_path / "in.pth"), str(tmp_path / "out.pth"), "--format", "nnssl", "--overwrite"]) == 0
    assert read_checkpoint(tmp_path / "out.pth").source == "nnssl"


def test_export_of_a_finetuned_nnunet_checkpoint_is_its_own_encoder_without_head(tmp_path, capsys):
    from model_factory import make_model_folder

    from nnunetv2_selma.cli.export_checkpoint import main

    folder = make_model_folder(tmp_path / "results", dataset_name="Dataset581_Finetuned", trainer="nnUNetTrainer")
    final = folder / "fold_0" / "checkpoint_final.pth"
    finetuned = torch.load(final, map_location="cpu", weights_only=False)["network_weights"]
    for plans_args in ([], ["--plans", str(folder / "plans.json")]):
        out = tmp_path / f"export{len(plans_args)}.pth"
        assert main([str(final), str(out), "--format", "nnssl", *plans_args]) == 0
        assert "nnssl checkpoint of Dataset581_Finetuned" in capsys.readouterr().out
        raw = torch.load(out, map_location="cpu", weights_only=True)
        assert raw["nnssl_adaptation_plan"]["pretrain_plan"]["dataset_name"] == "Dataset581_Finetuned"
        assert raw["trainer_name"] == "nnUNetTrainer"
        assert "fine-tuned nnU-Net nnUNetTrainer on Dataset581_Finetuned" in raw["selma"]["method"]
        assert not any(".seg_layers." in k for k in raw["network_weights"])
        assert set(raw["network_weights"]) == {k for k in finetuned if ".seg_layers." not in k}
        assert all(torch.equal(v, finetuned[k]) for k, v in raw["network_weights"].items())
    # it fine-tunes another task: stem and encoder load, the new head starts fresh
    plans = json.loads((folder / "plans.json").read_text())
    target = build_network(plans, num_output_channels=3)
    load_pretrained_weights(target, out, log=lambda *a: None, architecture=architecture(plans))
    assert all(torch.equal(v, finetuned[k]) for k, v in target.state_dict().items() if k.startswith("encoder."))


def test_export_and_init_messages_name_the_fix(tmp_path, capsys):
    from nnunetv2_selma.cli.export_checkpoint import main

    plans = preset_plans("cpu")
    network = build_network(plans, num_output_channels=1)
    source = tmp_path / "run" / "checkpoint_final.pth"
    save_pretrained_checkpoint(source, network, {"method": "mae", "architecture": architecture(plans),
                                                 "patch_size": [32, 32, 32]})
    (tmp_path / "a_file").write_text("")
    for out, expected in ((tmp_path, f"{tmp_path} is a folder; give the file to write"),
                          (tmp_path / "a_file" / "o.pth", f"{tmp_path / 'a_file'} is a file, not a folder")):
        assert main([str(source), str(out), "--format", "nnssl"]) == 1
        err = capsys.readouterr().err
        assert expected in err and "Errno" not in err
    assert main([str(source.parent), str(tmp_path / "o.pth"), "--format", "nnssl"]) == 1
    err = capsys.readouterr().err
    assert f"is a folder; give the checkpoint file in it (e.g. {source})" in err and "Errno" not in err
    # the pretraining loop's resume state (the keys save_latest writes)
    latest = tmp_path / "run" / "checkpoint_latest.pth"
    torch.save({"network": network.state_dict(), "optimizer": {}, "scheduler": {}, "grad_scaler": None,
                "sampler": {"seed": 1, "iteration": 3}, "history": {"loss": [1.0]}, "method": "mae",
                "schedule": {}, "world_size": 1, "init": None}, latest)
    assert main([str(latest), str(tmp_path / "o.pth"), "--format", "nnssl"]) == 1
    err = capsys.readouterr().err
    assert "resume state of an nnUNetv2_selma_pretrain run" in err and f"Give {source}" in err
    with pytest.raises(ValueError, match="resume state .*checkpoint_final.pth"):  # --init reads it the same way
        load_pretrained_weights(build_network(plans), latest, log=lambda *a: None, whole_network=True)
    assert not (tmp_path / "o.pth").exists()

"""Self-supervised pretraining stage: masking, loop, resume, DDP (gloo), cache and trainer flag.

Everything runs on CPU with the ``cpu`` SELMA plans preset (32^3 patches, 4-stage ResEnc U-Net)
on a store ingested from the project's synthetic unannotated volumes. Dataset IDs 540-559.
"""

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
import torch

from nnunetv2_selma.checkpoints import load_pretrained_weights
from nnunetv2_selma.network import build_network
from nnunetv2_selma.pretraining.data import PretrainingBatches
from nnunetv2_selma.pretraining.loop import (
    FINAL,
    LATEST,
    LOG,
    PROGRESS,
    PretrainingSchedule,
    build_pretraining_network,
    pretrain,
    weights_digest,
)
from nnunetv2_selma.pretraining.masking import EncoderMaskHooks, masked_instance_norm, random_block_mask
from nnunetv2_selma.pretraining.methods import MaskedImageModeling, auto_block_size, get_method

DATASET_ID = 540
DATASET_NAME = f"Dataset{DATASET_ID}_SelmaSSL"
PLANS_ID = "nnUNetSelmaPlans_cpu"
TRAINER = "nnUNetTrainerSelmaMAE_1epoch_2it"


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    # one BLAS/OpenMP thread per process: the test machine has 2 shared cores
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, **extra)
    return env


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    return tiny_store


@pytest.fixture(scope="module")
def plans() -> Path:
    """A tiny raw dataset planned and preprocessed with the SELMA ``cpu`` preset (real nnU-Net)."""
    import SimpleITK

    raw = Path(os.environ["nnUNet_raw"]) / DATASET_NAME
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:40, :40, :40]
    for i in range(6):
        centre = rng.integers(12, 28, size=3)
        seg = ((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 < 49).astype(np.uint8)
        img = (100.0 + 400.0 * seg + rng.normal(0, 30, seg.shape)).clip(0).astype(np.uint16)
        SimpleITK.WriteImage(SimpleITK.GetImageFromArray(img), str(raw / "imagesTr" / f"case{i:03d}_0000.nii.gz"))
        SimpleITK.WriteImage(SimpleITK.GetImageFromArray(seg), str(raw / "labelsTr" / f"case{i:03d}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "LSM"}, "labels": {"background": 0, "foreground": 1},
        "numTraining": 6, "file_ending": ".nii.gz"}))
    subprocess.run([sys.executable, "-c", "from nnunetv2_selma.cli.plan import main; "
                    f"main(['-d', '{DATASET_ID}', '--preset', 'cpu', '-np', '1'])"],
                   check=True, env=_env(nnUNet_def_n_proc="1"), timeout=300)
    path = Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME / f"{PLANS_ID}.json"
    assert path.is_file()
    return path


def test_block_mask_ratio_and_encoder_stays_empty(plans):
    rng = np.random.default_rng(0)
    mask = random_block_mask((32, 32, 48), 16, 0.75, rng, batch_size=3)
    assert mask.shape == (3, 1, 32, 32, 48) and mask.dtype == bool
    # 2*2*3 = 12 blocks, 9 masked: exactly 75 % of the voxels, constant within a block
    assert np.allclose(mask.reshape(3, -1).mean(1), 0.75)
    assert (mask[:, :, :16, :16, :16] == mask[:, :, :1, :1, :1]).all()
    with pytest.raises(ValueError, match="mask_ratio"):
        random_block_mask((32, 32, 32), 16, 1.0, rng)

    network = build_network(plans, num_output_channels=1)
    hooks = EncoderMaskHooks(network)
    outputs = []
    capture = [s.register_forward_hook(lambda m, a, o: outputs.append(o.detach())) for s in network.encoder.stages]
    mask = torch.from_numpy(random_block_mask((32, 32, 32), 16, 0.75, np.random.default_rng(1)))
    visible = 1.0 - mask.float()
    hooks.visible = visible
    with torch.no_grad():
        network(torch.randn(1, 1, 32, 32, 32) * visible)
    # full- and half-resolution stages: masked blocks are exactly zero, visible ones are not
    for out in outputs[:2]:
        m = torch.nn.functional.interpolate(mask.float(), size=out.shape[2:], mode="nearest").bool()
        assert out.masked_select(m.expand_as(out)).abs().max() == 0
        assert out.masked_select(~m.expand_as(out)).abs().max() > 0
    for h in capture:
        h.remove()
    hooks.remove()


def test_sparse_normalisation_uses_visible_voxels_only(plans):
    # the function: equal to instance norm of the visible half alone, zero on the masked half
    norm = torch.nn.InstanceNorm3d(4, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 4, 8, 6, 6) * 3 + 5
    visible = torch.zeros(2, 1, 8, 6, 6)
    visible[:, :, :3] = 1.0
    y = masked_instance_norm(x, visible, norm)
    with torch.no_grad():
        assert torch.allclose(y[:, :, :3], norm(x[:, :, :3]), atol=1e-5)
    assert y[:, :, 3:].abs().max() == 0

    # the hooks: every encoder normalisation of a masked forward pass sees visible statistics
    # (per channel mean = bias, zero at masked voxels); dense masking (before 0.2) does not
    mask = torch.from_numpy(random_block_mask((32, 32, 32), 8, 0.75, np.random.default_rng(3)))
    visible = 1.0 - mask.float()
    for sparse in (True, False):
        network = build_network(plans, num_output_channels=1)
        hooks = EncoderMaskHooks(network, sparse=sparse)
        seen = []
        norms = [m for m in network.encoder.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
        # clone: the LeakyReLU after each norm works in place
        capture = [m.register_forward_hook(lambda m, a, o, seen=seen: seen.append((m, o.detach().clone())))
                   for m in norms]
        hooks.visible = visible
        with torch.no_grad():
            network(torch.randn(1, 1, 32, 32, 32) * visible + 2.0 * visible)
        for h in capture:
            h.remove()
        hooks.remove()
        module, out = seen[0]  # the stem's normalisation, full resolution
        v = visible.bool().expand_as(out)
        visible_mean = (out * v).sum((2, 3, 4)) / v.sum((2, 3, 4))
        if sparse:
            assert out.masked_select(~v).abs().max() == 0
            assert torch.allclose(visible_mean[0], module.bias, atol=1e-4)
        else:
            assert not torch.allclose(visible_mean[0], module.bias, atol=1e-2)


def test_mae_block_size_follows_the_patch():
    assert auto_block_size((32, 32, 32)) == 8 and auto_block_size((160, 160, 160)) == 16
    assert auto_block_size((128, 128, 128)) == 16 and auto_block_size((16, 64, 64)) == 4
    method = MaskedImageModeling()
    batch = method.make_batch(np.zeros((2, 1, 32, 32, 32), np.float32), np.random.default_rng(0))
    # 4 x 4 x 4 blocks of 8^3: 48 of 64 masked
    grid = batch["mask"][:, 0, ::8, ::8, ::8]
    assert grid.shape == (2, 4, 4, 4) and (grid.reshape(2, -1).sum(1) == 48).all()
    assert MaskedImageModeling(**method.params()).params() == method.params()


def test_sampler_is_deterministic_per_iteration(store, plans):
    method = MaskedImageModeling()
    a = PretrainingBatches(store, (32, 32, 32), 2, method, seed=3, start_iteration=0)
    b = PretrainingBatches(store, (32, 32, 32), 2, method, seed=3, start_iteration=5)
    batch_a = a.batch(5)
    batch_b = next(iter(b))
    assert int(batch_b["iteration"]) == 5
    np.testing.assert_array_equal(batch_a["image"], batch_b["image"])
    np.testing.assert_array_equal(batch_a["mask"], batch_b["mask"])
    assert batch_a["image"].shape == (2, 1, 32, 32, 32) and batch_a["image"].dtype == np.float32
    assert not np.array_equal(a.batch(6)["image"], batch_a["image"])


def _fixed_loss(plans, store, weights=None, n: int = 3) -> float:
    """Masked-reconstruction loss on fixed batches and masks, for initial (seed 7) or given weights."""
    from nnunetv2_selma.pretraining.loop import build_pretraining_network

    method = get_method("mae")
    network = build_pretraining_network(plans, "3d_fullres", method, seed=7)
    if weights is not None:
        network.load_state_dict(weights)
    data = PretrainingBatches(store, (32, 32, 32), 2, method, seed=999, augment=False)
    network.eval()
    with torch.no_grad():
        losses = [float(method.loss(network, {k: torch.from_numpy(v) for k, v in data.batch(i).items()
                                             if k != "iteration"})) for i in range(n)]
    return float(np.mean(losses))


def test_loss_falls_and_finetuning_network_is_initialised(store, plans, tmp_path):
    schedule = PretrainingSchedule(iterations=16, batch_size=2, learning_rate=3e-3, checkpoint_every=8,
                                   num_workers=1, seed=7)
    method = get_method("mae")
    final = pretrain(store, plans, tmp_path, method=method, schedule=schedule, device="cpu", show_progress=False)
    assert final == tmp_path / FINAL and (tmp_path / PROGRESS).is_file() and (tmp_path / LOG).is_file()

    pretrained = torch.load(final, map_location="cpu", weights_only=True)["network_weights"]
    before, after = _fixed_loss(plans, store), _fixed_loss(plans, store, pretrained)
    print(f"masked reconstruction loss on fixed batches: {before:.3f} -> {after:.3f}")
    assert after < 0.9 * before, (before, after)

    # fine-tuning network (2 classes, deep supervision): every non-head tensor comes from the checkpoint
    finetune = build_network(plans, num_output_channels=2, deep_supervision=True)
    report = load_pretrained_weights(finetune, final, log=lambda *a: None)
    non_head = [k for k in finetune.state_dict() if ".seg_layers." not in k]
    assert set(non_head) <= set(report["loaded"])
    for key in non_head:
        torch.testing.assert_close(finetune.state_dict()[key], pretrained[key], rtol=0, atol=0)

    # stock nnU-Net loader accepts the checkpoint too (the -pretrained_weights path)
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights as stock_loader

    stock_loader(build_network(plans, num_output_channels=2, deep_supervision=True), str(final), verbose=False)


def test_continue_after_kill_resumes_from_saved_iteration(store, plans, tmp_path, capfd):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "nnunetv2_selma.cli.pretrain", "--store", str(store), "--plans", str(plans),
           "-o", str(out), "--iterations", "6", "--checkpoint-every", "2", "--num-workers", "0",
           "--device", "cpu", "--no-progress", "--lr", "3e-3"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / LATEST).is_file():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = torch.load(out / LATEST, map_location="cpu", weights_only=False)
    saved = killed["sampler"]["iteration"]
    assert 2 <= saved < 6 and not (out / FINAL).exists()
    # rerun without --c: refused, the killed run's checkpoint kept (it was replaced at the first checkpoint)
    from nnunetv2_selma.cli.pretrain import main

    latest = (out / LATEST).read_bytes()
    capfd.readouterr()
    assert main([str(c) for c in cmd[3:]]) == 1
    err = capfd.readouterr().err
    assert f"error: {out / LATEST}: exists, the checkpoint of an earlier pretraining run that did not finish" in err
    assert "Pass --c to continue that run, --overwrite to start afresh" in err
    assert (out / LATEST).read_bytes() == latest

    subprocess.run(cmd + ["--continue"], env=_env(), check=True, timeout=180, stdout=subprocess.DEVNULL)
    log = (out / LOG).read_text()
    assert f"resumed at iteration {saved} of 6" in log
    done = torch.load(out / LATEST, map_location="cpu", weights_only=False)
    assert done["sampler"]["iteration"] == 6 and len(done["history"]["loss"]) == 6
    assert done["history"]["loss"][:saved] == killed["history"]["loss"]
    assert done["scheduler"]["last_epoch"] == 6
    assert torch.load(out / FINAL, map_location="cpu", weights_only=True)["selma"]["iterations_done"] == 6

    # the same run without interruption ends with bitwise the same weights (CPU, fixed seeds, same batches)
    straight = tmp_path / "straight"
    cmd_straight = [straight if c == str(out) else c for c in cmd]
    subprocess.run([str(c) for c in cmd_straight], env=_env(), check=True, timeout=180, stdout=subprocess.DEVNULL)
    resumed_w = torch.load(out / FINAL, map_location="cpu", weights_only=True)["network_weights"]
    straight_w = torch.load(straight / FINAL, map_location="cpu", weights_only=True)["network_weights"]
    assert resumed_w.keys() == straight_w.keys()
    assert all(torch.equal(resumed_w[k], straight_w[k]) for k in straight_w)
    assert torch.load(straight / LATEST, map_location="cpu", weights_only=False)["history"]["loss"] == \
        done["history"]["loss"]


def test_checkpoints_and_json_records_get_the_umask_mode_not_0600(tmp_path):
    from nnunetv2_selma.atomic import write_json_atomic
    from nnunetv2_selma.checkpoints import atomic_torch_save

    old = os.umask(0o022)
    try:
        atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "c.pth")
        write_json_atomic(tmp_path / "r.json", {"a": 1})
        os.umask(0o027)
        write_json_atomic(tmp_path / "group.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "c.pth").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "group.json").stat().st_mode & 0o777 == 0o640


def test_start_checks_every_store_file_and_leaves_nothing_behind(store, plans, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    # the nucleus volume is never sampled when only cfos is wanted: check what will be sampled
    nucleus = next(copy.glob("volumes/nucleus/**/*.b2nd"))
    nucleus.unlink()
    schedule = PretrainingSchedule(iterations=1, batch_size=1, num_workers=0)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"1 file\(s\) listed in manifest.json are missing .*{nucleus.name}"):
        pretrain(copy, plans, out, schedule=schedule, device="cpu", show_progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match="no volume of structure"):
        pretrain(copy, plans, out, schedule=PretrainingSchedule(iterations=1, structures=["vessel"]),
                 device="cpu", show_progress=False)
    with pytest.raises((RuntimeError, ValueError), match="nope"):  # a configuration the plans lack
        pretrain(store, plans, out, schedule=schedule, configuration="nope", device="cpu", show_progress=False)
    with pytest.raises(FileNotFoundError, match="nnUNetv2_selma_ingest"):
        pretrain(tmp_path / "no_store", plans, out, schedule=schedule, device="cpu", show_progress=False)
    assert not out.exists()


def test_continue_without_an_earlier_run_says_so_on_the_console(store, plans, tmp_path, capfd):
    from nnunetv2_selma.cli.pretrain import main

    out = tmp_path / "run"
    rc = main(["--store", str(store), "--plans", str(plans), "-o", str(out), "--iterations", "1",
               "--batch-size", "1", "--num-workers", "0", "--device", "cpu", "--no-progress", "--continue",
               "--structures", "cfos"])
    assert rc == 0
    err = capfd.readouterr().err
    assert f"--continue given but {out / LATEST} does not exist: starting from iteration 0" in err
    assert "does not exist: starting from iteration 0" in (out / LOG).read_text()


def test_ddp_two_gloo_processes(store, plans, tmp_path):
    schedule = PretrainingSchedule(iterations=3, batch_size=2, checkpoint_every=3, num_workers=0)
    final = pretrain(store, plans, tmp_path, schedule=schedule, device="cpu", num_processes=2, show_progress=False)
    assert final.is_file()
    ckpt = torch.load(tmp_path / LATEST, map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["sampler"]["iteration"] == 3 and len(ckpt["history"]["loss"]) == 3
    assert "2 process(es)" in (tmp_path / LOG).read_text()
    # both replicas hold bitwise identical weights after 3 steps on different data: gradients were synchronised
    digests = torch.load(final, map_location="cpu", weights_only=True)["selma"]["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert f"weights identical on all 2 ranks (digest {digests[0]:#018x})" in (tmp_path / LOG).read_text()
    # ... and they moved away from the (seeded, shared) initialisation
    initial = build_pretraining_network(plans, "3d_fullres", get_method("mae"), schedule.seed)
    assert weights_digest(initial) != digests[0]


def _train(fold: int, store: Path) -> subprocess.CompletedProcess:
    from nnunetv2_selma.nnunet_ext import shim_folder

    return subprocess.run(
        [str(Path(sys.executable).parent / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", str(fold),
         "-tr", TRAINER, "-p", PLANS_ID, "-device", "cpu"],
        # nnUNet_n_proc_DA=0: nnU-Net loads data in-process (no worker start-up on the 2-core machine)
        env=_env(nnUNet_extTrainer=str(shim_folder()), nnUNet_selma_store=str(store), nnUNet_n_proc_DA="0"),
        capture_output=True, text=True, timeout=400,
    )


def test_trainer_flag_pretrains_once_and_reuses_cache(store, plans):
    first = _train(0, store)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    cache = Path(os.environ["nnUNet_results"]) / "nnUNetv2_selma_pretraining"
    keys = [p for p in cache.iterdir() if p.is_dir()]
    assert len(keys) == 1
    checkpoint = keys[0] / FINAL
    mtime = checkpoint.stat().st_mtime_ns
    assert "pretraining into cache" in first.stdout

    second = _train(1, store)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"reusing cached pretraining checkpoint {checkpoint}" in second.stdout
    assert checkpoint.stat().st_mtime_ns == mtime
    assert [p for p in cache.iterdir() if p.is_dir()] == keys
    results = Path(os.environ["nnUNet_results"]) / DATASET_NAME / f"{TRAINER}__{PLANS_ID}__3d_fullres"
    for fold in (0, 1):
        assert (results / f"fold_{fold}" / "checkpoint_final.pth").is_file()
        log = next((results / f"fold_{fold}").glob("training_log_*.txt")).read_text()
        assert "fine-tuning from the pretraining checkpoint" in log


def test_cache_key_ignores_dataset_and_fold_but_not_method_store_or_schedule(plans):
    from nnunetv2_selma.pretraining.cache import pretraining_cache_key

    plans_dict = json.loads(Path(plans).read_text())
    other_dataset = {**plans_dict, "dataset_name": "Dataset541_Other"}
    schedule = PretrainingSchedule(iterations=5)
    key = pretraining_cache_key(plans_dict, "3d_fullres", "store-a", get_method("mae"), schedule)
    assert key == pretraining_cache_key(other_dataset, "3d_fullres", "store-a", get_method("mae"),
                                        PretrainingSchedule(iterations=5, num_workers=7, checkpoint_every=1))
    assert key != pretraining_cache_key(plans_dict, "3d_fullres", "store-b", get_method("mae"), schedule)
    assert key != pretraining_cache_key(plans_dict, "3d_fullres", "store-a", get_method("mae", mask_ratio=0.6),
                                        schedule)
    assert key != pretraining_cache_key(plans_dict, "3d_fullres", "store-a", get_method("denoise"), schedule)
    assert key != pretraining_cache_key(plans_dict, "3d_fullres", "store-a", get_method("mae"),
                                        PretrainingSchedule(iterations=6))


def test_second_method_plugs_in(store, plans, tmp_path):
    schedule = PretrainingSchedule(iterations=2, batch_size=2, checkpoint_every=2, num_workers=0)
    final = pretrain(store, plans, tmp_path, method=get_method("denoise", noise_std=0.3), schedule=schedule,
                     device="cpu", show_progress=False)
    meta = torch.load(final, map_location="cpu", weights_only=True)["selma"]
    assert meta["method"] == "denoise" and meta["method_params"] == {"noise_std": 0.3}
    with pytest.raises(ValueError, match="unknown pretraining method"):
        get_method("simclr")


def test_cache_is_filled_once_under_concurrent_requests(store, plans, tmp_path):
    import threading

    from nnunetv2_selma.pretraining.cache import get_or_pretrain

    schedule = PretrainingSchedule(iterations=2, batch_size=2, checkpoint_every=2, num_workers=0)
    logs: list[list[str]] = [[], []]
    results: list[Path | None] = [None, None]

    def request(i: int) -> None:
        # flock locks belong to open file descriptions, so two threads contend like two processes
        results[i] = get_or_pretrain(store, plans, get_method("mae"), schedule, device="cpu", cache_root=tmp_path,
                                     log=logs[i].append, show_progress=False)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] and results[0].is_file()
    text = [" | ".join(lines) for lines in logs]
    assert sum("pretraining into cache" in t for t in text) == 1
    assert sum("reusing cached pretraining checkpoint" in t for t in text) == 1


def test_rerun_without_continue_keeps_checkpoint_latest_of_a_stopped_run_unless_overwrite(store, plans, tmp_path,
                                                                                          capfd):
    """A run that stopped before checkpoint_final.pth left checkpoint_latest.pth only; a rerun without --c
    started afresh and replaced it at its first checkpoint: the stopped run was lost."""
    from nnunetv2_selma.cli.pretrain import main

    out = tmp_path / "run"
    args = ["--store", str(store), "--plans", str(plans), "-o", str(out), "--iterations", "1", "--batch-size", "1",
            "--num-workers", "0", "--device", "cpu", "--no-progress", "--structures", "cfos"]
    assert main(args) == 0
    (out / FINAL).unlink()  # the state of a run stopped after its last checkpoint_latest.pth
    latest = (out / LATEST).read_bytes()
    capfd.readouterr()
    assert main([*args, "--seed", "1"]) == 1
    err = capfd.readouterr().err
    assert f"error: {out / LATEST}: exists, the checkpoint of an earlier pretraining run that did not finish; " \
           f"nothing was overwritten" in err
    assert "--c" in err and "--overwrite" in err
    assert (out / LATEST).read_bytes() == latest and not (out / FINAL).exists()
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    assert (out / LATEST).read_bytes() != latest and (out / FINAL).is_file()


def test_rerun_without_continue_keeps_checkpoint_final_unless_overwrite(store, plans, tmp_path, capfd):
    from nnunetv2_selma.cli.pretrain import main

    out = tmp_path / "run"
    args = ["--store", str(store), "--plans", str(plans), "-o", str(out), "--iterations", "1", "--batch-size", "1",
            "--num-workers", "0", "--device", "cpu", "--no-progress", "--structures", "cfos"]
    assert main(args) == 0
    first = (out / FINAL).read_bytes()
    capfd.readouterr()
    assert main([*args, "--seed", "1"]) == 1
    err = capfd.readouterr().err
    assert f"error: {out / FINAL}: exists, the result of an earlier pretraining run; nothing was overwritten" in err
    assert "--c" in err and "--overwrite" in err
    assert (out / FINAL).read_bytes() == first
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    assert (out / FINAL).read_bytes() != first


def test_overwrite_run_stopped_before_its_first_checkpoint_leaves_no_earlier_run_to_continue(store, plans, tmp_path,
                                                                                            capfd):
    """--overwrite left the earlier run's checkpoint_latest.pth (and checkpoint_final.pth) in place until its
    own first save: stopped before it, a later --c resumed the earlier run. They go before training starts."""
    from nnunetv2_selma.cli.pretrain import main

    out = tmp_path / "run"
    common = ["--store", str(store), "--plans", str(plans), "-o", str(out), "--batch-size", "1", "--num-workers",
              "0", "--device", "cpu", "--no-progress", "--structures", "cfos"]
    earlier = [*common, "--iterations", "2", "--checkpoint-every", "1"]
    assert main(earlier) == 0 and (out / LATEST).is_file() and (out / FINAL).is_file()
    assert main([*earlier, "--c", "--overwrite"]) == 1
    assert "--c (continue the run there) and --overwrite (discard it and start afresh) given together" \
        in capfd.readouterr().err

    # a long run whose first checkpoint comes at its end, killed while it trains
    cmd = [sys.executable, "-m", "nnunetv2_selma.cli.pretrain", *common, "--iterations", "10000",
           "--checkpoint-every", "10000", "--overwrite"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while (out / LOG).read_text().count("patches, schedule") < 2:  # its start line: training begins next
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None  # still training when killed
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (out / LATEST).exists() and not (out / FINAL).exists() and not (out / PROGRESS).exists()
    log = (out / LOG).read_text()
    assert f"--overwrite: removed the earlier run's {LATEST}, {FINAL}, {PROGRESS}; starting afresh" in log

    # --c with the earlier run's own arguments: nothing of it is left to continue
    capfd.readouterr()
    assert main([*earlier, "--c"]) == 0
    assert f"--continue given but {out / LATEST} does not exist: starting from iteration 0" in capfd.readouterr().err
    assert "resumed at iteration" not in (out / LOG).read_text()

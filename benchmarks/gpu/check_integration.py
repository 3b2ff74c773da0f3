"""GPU check, section 2: fine-tuning per preset and the nnU-Net integration on cuda.

Prints PASS/FAIL lines and a preset table (AMP step time, peak memory); writes ``$OUT/finetuning.json``.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from nnunetv2_selma.checkpoints import save_pretrained_checkpoint
from nnunetv2_selma.network import build_network
from nnunetv2_selma.synthetic.volumes import render_patch
from nnunetv2_selma.training.planner import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_pretrain_pipeline import preset_plans  # noqa: E402
from gpu_checks import check, results, run  # noqa: E402

OUT = Path(os.environ["OUT"])
torch.backends.cudnn.benchmark = True  # as nnU-Net trainers set it
TR, P = "nnUNetTrainerSelma_1epoch_2it", "nnUNetSelmaPlans_cpu"

# --- preset table on the GPU: params, one AMP fine-tuning step (deep supervision, SGD) at the preset's
# batch size, peak memory
presets = {}
for name, p in PRESETS.items():
    net = build_network(preset_plans(name, Path("/tmp/w")), num_output_channels=2, deep_supervision=True).cuda()
    opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True)
    x = torch.randn(p.batch_size, 1, *p.patch_size, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t = time.time()
        with torch.autocast("cuda", dtype=torch.float16):
            out = net(x)
            loss = sum(o.float().mean() for o in out)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.time() - t)
    n = sum(q.numel() for q in net.parameters())
    print(f"PRESET {name}: patch {p.patch_size} stages {p.n_stages} features {p.features_per_stage} "
          f"params {n / 1e6:.2f} M peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
          f"step {min(times[1:]) * 1000:.0f} ms (fp16 AMP, batch {p.batch_size})", flush=True)
    presets[name] = {"patch": list(p.patch_size), "params_M": n / 1e6, "batch": p.batch_size,
                     "peak_GiB": torch.cuda.max_memory_allocated() / 2**30, "step_ms_min": min(times[1:]) * 1000,
                     "step_ms_median": float(np.median(times[1:])) * 1000}
    json.dump({"presets": presets}, open(OUT / "finetuning.json", "w"), indent=1)
    del net, opt, x, out, loss
    torch.cuda.empty_cache()

# --- dataset + plans
root = Path(os.environ["nnUNet_raw"]) / "Dataset520_GpuCheck"
for sub in ("imagesTr", "labelsTr", "imagesTs"):
    (root / sub).mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
for i in range(7):
    ch, mask = render_patch("microglia", (48, 48, 48), rng)
    d = "imagesTr" if i < 5 else "imagesTs"
    sitk.WriteImage(sitk.GetImageFromArray(ch[0]), str(root / d / f"case_{i:03d}_0000.nii.gz"))
    if i < 5:
        sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
generate_dataset_json(str(root), {0: "LSM"}, {"background": 0, "microglia": 1}, 5, ".nii.gz", dataset_name="GpuCheck")
r = run(["nnUNetv2_selma_plan", "-d", "520", "--preset", "cpu", "-np", "4"], label="plan")
check("plan", r.returncode == 0)
plans = Path(os.environ["nnUNet_preprocessed"]) / root.name / f"{P}.json"
ssl = build_network(plans, num_output_channels=1).cuda()  # a network living on the GPU
ck = Path("/tmp/w/ssl.pth")
save_pretrained_checkpoint(ck, ssl, {"method": "gpu-check"})
sd = torch.load(ck, map_location="cpu", weights_only=True)["network_weights"]
check("save_pretrained_checkpoint of a CUDA network writes CPU tensors",
      all(v.device.type == "cpu" for v in sd.values()))
check("save_pretrained_checkpoint of a CUDA network keeps shared tensors shared (decoder.encoder.* is encoder.*)",
      sd["decoder.encoder.stem.convs.0.conv.weight"] is sd["encoder.stem.convs.0.conv.weight"]
      and ck.stat().st_size < 1.1 * 4 * sum(p.numel() for p in ssl.parameters()) + 200_000)
enc = Path("/tmp/w/enc.pth")
save_pretrained_checkpoint(enc, {k: v for k, v in ssl.state_dict().items() if k.startswith("encoder.")}, {})

# --- GPU fine-tuning with the real command
r = run(["nnUNetv2_train", "520", "3d_fullres", "0", "-tr", TR, "-p", P, "-pretrained_weights", str(ck)],
        label="train fold 0 on cuda")
out = Path(os.environ["nnUNet_results"]) / root.name / f"{TR}__{P}__3d_fullres"
log = "".join(f.read_text() for f in (out / "fold_0").glob("training_log_*.txt")) if out.exists() else ""
check("nnUNetv2_train on cuda with -pretrained_weights", r.returncode == 0 and "loaded  encoder.stem" in log)
final = out / "fold_0" / "checkpoint_final.pth"
if final.exists():
    devs = {v.device.type for v in torch.load(final, map_location=None, weights_only=False)["network_weights"].values()}
    print("checkpoint_final.pth tensors saved on", devs)
    code = ("import torch; from nnunetv2_selma.network import build_network as b; "
            "from nnunetv2_selma.checkpoints import load_pretrained_weights as l; "
            f"r = l(b({str(plans)!r}), {str(final)!r}, log=lambda *a: None); print('LOADED', len(r['loaded']))")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = run([sys.executable, "-c", code], env=env, label="our loader, GPU-saved checkpoint, no GPU visible")
    check("GPU-saved checkpoint_final loads on a CPU-only process (ours)", r.returncode == 0 and "LOADED" in r.stdout)
    code2 = ("from nnunetv2_selma.network import build_network as b; "
             "from nnunetv2.run.load_pretrained_weights import load_pretrained_weights as l; "
             f"l(b({str(plans)!r}), {str(final)!r}); print('STOCK LOADED')")
    r = run([sys.executable, "-c", code2], env=env, label="stock loader, same file, no GPU visible")
    stock = "loads" if r.returncode == 0 else r.stderr.strip().splitlines()[-1][:300]
    print("stock nnU-Net loader without GPU:", stock)

# --- nnU-Net's DDP path (run_ddp via mp.spawn, world size 1 on the one GPU) with our trainer and an
# encoder-only checkpoint given as -pretrained_weights
code = ("import os, torch.multiprocessing as mp; os.environ['MASTER_ADDR']='localhost'; "
        "os.environ['MASTER_PORT']='29517'; from nnunetv2.run.run_training import run_ddp; "
        f"mp.spawn(run_ddp, args=('520', '3d_fullres', 1, {TR!r}, {P!r}, False, False, False, {str(enc)!r}, "
        "False, False, 1), nprocs=1, join=True)")
r = run([sys.executable, "-c", code], label="run_ddp world size 1")
log1 = "".join(f.read_text() for f in (out / "fold_1").glob("training_log_*.txt")) if (out / "fold_1").exists() else ""
check("nnU-Net DDP path (run_ddp) with our trainer + encoder-only -pretrained_weights",
      r.returncode == 0 and "decoder tensors not in the encoder-only checkpoint" in log1)

# --- predict on GPU
pred = Path("/tmp/w/pred")
r = run(["nnUNetv2_predict", "-i", str(root / "imagesTs"), "-o", str(pred), "-d", "520", "-c", "3d_fullres",
         "-f", "0", "-tr", TR, "-p", P], label="predict cuda")
segs = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in sorted(pred.glob("*.nii.gz"))]
check("nnUNetv2_predict on cuda", r.returncode == 0 and len(segs) == 2
      and all(s.shape == (48, 48, 48) and set(np.unique(s)) <= {0, 1} for s in segs))
print("SUMMARY", sum(ok for _, ok in results), "/", len(results), "passed")
json.dump({"presets": presets, "checks": results}, open(OUT / "finetuning.json", "w"), indent=1)

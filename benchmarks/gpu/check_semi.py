"""GPU check, section 3b: the semi-supervised trainers on cuda (they have never run on a GPU here).

On a generated nuclei dataset and a store of two generated unannotated volumes: ``nnUNetv2_train`` with
pseudo-labels and restyled copies (AMP, the grad scaler, the teacher under autocast, the Fourier restyling on
the GPU), the teacher saved in the checkpoint, ``--c`` resuming it, nnU-Net's DDP path (``run_ddp``) with the
semi trainer, and the fine-tuning time against the plain trainer on the same data. Prints PASS/FAIL lines;
writes ``$OUT/semi.json``. ``SEMI_CHECK_DEVICE=cpu`` runs the same check without a GPU (a dry run).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from gpu_checks import check, results, run, seconds
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

from nnunetv2_selma.store.ingest import ingest_store
from nnunetv2_selma.synthetic.download import write_unannotated_volume
from nnunetv2_selma.synthetic.volumes import render_patch
from nnunetv2_selma.training.semi_trainers import TEACHER_KEY

OUT = Path(os.environ.get("OUT", "/tmp/gpu_out"))
DEVICE = os.environ.get("SEMI_CHECK_DEVICE", "cuda")
W = Path(os.environ.get("SEMI_CHECK_WORK", "/tmp/w_semi"))
P = "nnUNetSelmaPlans_cpu"
SEMI, PLAIN = "nnUNetTrainerSelmaSemiPLStyleCopies_1epoch_2it", "nnUNetTrainerSelma_1epoch_2it"

for sub in ("raw", "pre", "res"):
    (W / sub).mkdir(parents=True, exist_ok=True)
env = {"nnUNet_raw": str(W / "raw"), "nnUNet_preprocessed": str(W / "pre"), "nnUNet_results": str(W / "res"),
       "nnUNet_selma_store": str(W / "store")}
os.environ.update(env)
if not (W / "store").is_dir():
    for i, structure in enumerate(("nucleus", "cfos")):
        write_unannotated_volume(W / "download" / f"unannotated_{structure}" / f"sample{i}", (48, 96, 96), structure,
                                 seed=i, picture=False)
    report = ingest_store(W / "download", W / "store", progress=False)
    check("store of two generated volumes", report.ok, str(report.failed))
root = W / "raw" / "Dataset522_SELMA3D_Nuclei"
for sub in ("imagesTr", "labelsTr"):
    (root / sub).mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
n_cases = 6  # nnU-Net's default 5-fold split needs at least 5 training cases
for i in range(n_cases):
    ch, mask = render_patch("nuclei", (48, 48, 48), rng)
    sitk.WriteImage(sitk.GetImageFromArray(ch[0]), str(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(root / "labelsTr" / f"case_{i:03d}.nii.gz"))
generate_dataset_json(str(root), {0: "LSM"}, {"background": 0, "nucleus": 1}, n_cases, ".nii.gz",
                      dataset_name="SELMA3D_Nuclei")
r = run(["nnUNetv2_selma_plan", "-d", "522", "--preset", "cpu", "-np", "2"], "plan")
check("plan", r.returncode == 0)

out = {tr: W / "res" / root.name / f"{tr}__{P}__3d_fullres" for tr in (SEMI, PLAIN)}
r_plain = run(["nnUNetv2_train", "522", "3d_fullres", "0", "-tr", PLAIN, "-p", P, "-device", DEVICE], "train plain")
r = run(["nnUNetv2_train", "522", "3d_fullres", "0", "-tr", SEMI, "-p", P, "-device", DEVICE], "train semi")
log = "".join(f.read_text() for f in (out[SEMI] / "fold_0").glob("training_log_*.txt"))
check(f"nnUNetv2_train -tr {SEMI} on {DEVICE}", r.returncode == 0 and "semi-supervised: store" in log
      and "labelled patches restyled" in log and "structures ['nucleus']" in log)
final = out[SEMI] / "fold_0" / "checkpoint_final.pth"
if final.exists():
    ck = torch.load(final, map_location="cpu", weights_only=False)
    teacher = ck.get(TEACHER_KEY) or {}
    check("the teacher is saved in checkpoint_final.pth with finite weights", teacher
          and all(torch.isfinite(v).all() for v in teacher.values() if v.dtype.is_floating_point))
print(f"TIMING fine-tuning 1 epoch x 2 iterations (start-up included): plain {seconds.get('train plain', 0):.1f} s, "
      f"semi {seconds.get('train semi', 0):.1f} s", flush=True)

# --c: the finished run continues from checkpoint_final and restores its teacher
r = run(["nnUNetv2_train", "522", "3d_fullres", "0", "-tr", SEMI, "-p", P, "-device", DEVICE, "--c"], "continue")
log = "".join(f.read_text() for f in (out[SEMI] / "fold_0").glob("training_log_*.txt"))
check("--c of the semi trainer restores the teacher",
      r.returncode == 0 and "teacher restored from the checkpoint" in log)

# nnU-Net's DDP path (world size 1 on the one GPU) with the semi trainer
if DEVICE == "cuda":
    code = ("import os, torch.multiprocessing as mp; os.environ['MASTER_ADDR']='localhost'; "
            "os.environ['MASTER_PORT']='29519'; from nnunetv2.run.run_training import run_ddp; "
            f"mp.spawn(run_ddp, args=('522', '3d_fullres', 1, {SEMI!r}, {P!r}, False, False, False, None, "
            "False, False, 1), nprocs=1, join=True)")
    r = run([sys.executable, "-c", code], "run_ddp semi")
    log1 = "".join(f.read_text() for f in (out[SEMI] / "fold_1").glob("training_log_*.txt")) \
        if (out[SEMI] / "fold_1").exists() else ""
    check("nnU-Net DDP path (run_ddp) with the semi trainer", r.returncode == 0 and "semi-supervised: store" in log1)
print("SUMMARY", sum(ok for _, ok in results), "/", len(results), "passed", flush=True)
OUT.mkdir(parents=True, exist_ok=True)
json.dump({"device": DEVICE, "checks": results, "seconds": seconds}, open(OUT / "semi.json", "w"), indent=1)

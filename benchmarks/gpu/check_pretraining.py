"""GPU check, section 1: pretraining on cuda (AMP, torch.compile, encoder masking hooks), preset L.

Prints the loss at start and end, median iteration time and data wait, peak memory, then the
data pipeline's throughput against the network's for several worker counts. Writes
``$OUT/pretraining.json``, the loss curve and the log.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_pretrain_pipeline import make_store, preset_plans  # noqa: E402

from nnunetv2_selma.pretraining.benchmark import benchmark_pretraining  # noqa: E402
from nnunetv2_selma.pretraining.loop import PretrainingSchedule, pretrain  # noqa: E402

out = Path(os.environ["OUT"])
work = Path("/tmp/ssl_check")
work.mkdir(exist_ok=True)
res: dict = {}
t = time.time()
store = make_store(work, (192, 320, 320))
res["store_seconds"] = time.time() - t
print("store ready", round(res["store_seconds"], 1), "s", flush=True)
plans = preset_plans("L", work)

os.environ["nnUNet_compile"] = "true"
t = time.time()
pretrain(store, plans, work / "run", schedule=PretrainingSchedule(iterations=40, batch_size=2, checkpoint_every=20,
                                                                     num_workers=8), device="cuda", show_progress=False)
history = torch.load(work / "run" / "checkpoint_latest.pth", weights_only=False)["history"]
res["pretrain_L_compiled"] = {
    "wall_s_incl_compile": time.time() - t,
    "loss_first5": history["loss"][:5], "loss_last5": history["loss"][-5:],
    "iteration_s_median_last20": float(np.median(history["iteration_time"][-20:])),
    "data_wait_s_median_last20": float(np.median(history["data_wait"][-20:])),
    "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30,
}
print(json.dumps(res, indent=1), flush=True)
for name in ("progress.png", "pretraining_log.txt"):
    shutil.copy(work / "run" / name, out / f"pretraining_{name}")
json.dump(res, open(out / "pretraining.json", "w"), indent=1)

os.environ["nnUNet_compile"] = "false"
for workers in (4, 12):
    torch.cuda.reset_peak_memory_stats()
    r = benchmark_pretraining(store, plans, iterations=20, batch_size=2, device="cuda", num_workers=workers)
    res[f"throughput_L_nocompile_workers{workers}"] = r
    print(json.dumps(r), flush=True)
    json.dump(res, open(out / "pretraining.json", "w"), indent=1)

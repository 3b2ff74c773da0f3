"""GPU check, section 3: whole-volume block inference on cuda beside stock ``nnUNetPredictor``.

Uses the model fine-tuned on cuda in section 2 (preset ``cpu``: a tiny network, so the figure is an
upper bound of the overhead of blocking, not of a ResEnc-L's speed). Writes ``$OUT/inference.json``.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from nnunetv2_selma.inference.whole_volume import predict_large
from nnunetv2_selma.synthetic.volumes import LightSheetScene

OUT = Path(os.environ["OUT"])
model = Path("/tmp/w/res/Dataset520_GpuCheck/nnUNetTrainerSelma_1epoch_2it__nnUNetSelmaPlans_cpu__3d_fullres")
shape = (192, 256, 256)
(volume,), _ = LightSheetScene("cfos", shape, seed=3).render(0, shape[0])
work = Path("/tmp/inf_check")
work.mkdir(exist_ok=True)
np.save(work / "vol.npy", volume)
import SimpleITK as sitk  # noqa: E402

sitk.WriteImage(sitk.GetImageFromArray(volume), str(work / "vol.nii.gz"))
res = {"shape": shape, "model": model.name}

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: E402

predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cuda"),
                            verbose=False, verbose_preprocessing=False, allow_tqdm=False)
predictor.initialize_from_trained_model_folder(str(model), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
torch.cuda.synchronize()
t = time.time()
stock = predictor.predict_single_npy_array(volume[None].astype(np.float32), {"spacing": [1.0, 1.0, 1.0]})
torch.cuda.synchronize()
res["stock_seconds"] = time.time() - t
t = time.time()
predict_large(work / "vol.nii.gz", work / "ours.b2nd", model, folds=(0,), block_size=(96, 128, 128), device="cuda",
              progress=False)
res["ours_seconds"] = time.time() - t
import blosc2  # noqa: E402

ours = blosc2.open(str(work / "ours.b2nd"))[:]
res["voxel_agreement"] = float((ours == stock).mean())
res["stock_Mvox_per_s"] = volume.size / res["stock_seconds"] / 1e6
res["ours_Mvox_per_s"] = volume.size / res["ours_seconds"] / 1e6
res["ours_over_stock_time"] = res["ours_seconds"] / res["stock_seconds"]
print(json.dumps(res, indent=1), flush=True)
json.dump(res, open(OUT / "inference.json", "w"), indent=1)

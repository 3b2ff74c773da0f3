"""Size of a pretraining checkpoint of preset L on disk, against the bytes of its distinct tensors.

``python benchmarks/bench_checkpoint_size.py [--preset L] [--folder /tmp/ck]`` builds the pretraining
network of a preset (random weights), saves it as ``nnUNetv2_selma_pretrain`` does
(``save_pretrained_checkpoint``), exports that to nnssl's format (``export_nnssl_checkpoint``) and
writes the same state dict entry by entry (every name its own copy, as a plain loop of ``.clone()``
would). Prints one line per file: MB and the ratio to the distinct tensors' bytes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from model_factory import _plans  # noqa: E402

from nnunetv2_selma.checkpoints import save_pretrained_checkpoint  # noqa: E402
from nnunetv2_selma.network import build_network  # noqa: E402
from nnunetv2_selma.nnssl_format import export_nnssl_checkpoint  # noqa: E402
from nnunetv2_selma.training.planner import PRESETS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="L")
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    plans = _plans("Dataset999_Size", f"nnUNetSelmaPlans_{args.preset}", preset.patch_size, 1)
    plans["configurations"]["3d_fullres"]["architecture"] = preset.architecture()
    network = build_network(plans, num_output_channels=1)
    state = network.state_dict()
    distinct = {(v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)): v.numel() * v.element_size()
                for v in state.values()}
    unique = sum(distinct.values())
    folder = args.folder or Path(tempfile.mkdtemp(prefix="checkpoint_size_"))
    ours, nnssl, naive = folder / "pretrained.pth", folder / "nnssl.pth", folder / "entry_by_entry.pth"
    meta = {"method": "mae", "architecture": plans["configurations"]["3d_fullres"]["architecture"],
            "patch_size": list(preset.patch_size), "plans_name": f"nnUNetSelmaPlans_{args.preset}"}
    save_pretrained_checkpoint(ours, network, meta)
    export_nnssl_checkpoint(ours, nnssl, overwrite=True)
    torch.save({"network_weights": {k: v.clone() for k, v in state.items()}, "selma": meta}, naive)
    print(f"preset {args.preset}: {len(state)} state-dict names, {len(distinct)} distinct tensors, "
          f"{unique / 1e6:.0f} MB")
    for path in (ours, nnssl, naive):
        size = path.stat().st_size
        print(f"{path.name:22s} {size / 1e6:8.0f} MB  {size / unique:5.2f}x distinct tensors")


if __name__ == "__main__":
    main()

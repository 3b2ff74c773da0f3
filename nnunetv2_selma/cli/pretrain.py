"""``nnUNetv2_selma_pretrain``: self-supervised pretraining once, fine-tuning many times.

The final checkpoint (``OUT/checkpoint_final.pth``) loads with stock
``nnUNetv2_train ... -pretrained_weights OUT/checkpoint_final.pth`` for any dataset planned with the
same SELMA plans preset.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run :func:`nnunetv2_selma.pretraining.loop.pretrain`."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_pretrain",
        description="Self-supervised pretraining (default: Spark3D-style masked image modelling) of the network "
                    "described by a SELMA plans file, on patches from a pretraining store. Writes "
                    "checkpoint_latest.pth every --checkpoint-every iterations, checkpoint_final.pth (stock "
                    "-pretrained_weights format), pretraining_log.txt and progress.png into -o.")
    parser.add_argument("--store", required=True, help="pretraining store folder (nnUNetv2_selma_ingest -o)")
    parser.add_argument("--plans", required=True,
                        help="plans .json of the fine-tuning, e.g. "
                             "$nnUNet_preprocessed/DatasetXXX/nnUNetSelmaPlans_M.json")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="plans configuration (default 3d_fullres)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--method", default="mae", help="pretraining method: mae (default) or denoise")
    parser.add_argument("--block-size", type=int, default=16, help="mae: masking block edge in voxels (default 16)")
    parser.add_argument("--mask-ratio", type=float, default=0.75, help="mae: fraction of blocks masked (default 0.75)")
    parser.add_argument("--noise-std", type=float, default=0.5, help="denoise: noise std (default 0.5)")
    parser.add_argument("--iterations", type=int, default=10000, help="optimizer steps (default 10000)")
    parser.add_argument("--batch-size", type=int, default=2, help="global batch size, split over GPUs (default 2)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    parser.add_argument("--warmup-fraction", type=float, default=0.05, help="linear warm-up fraction (default 0.05)")
    parser.add_argument("--seed", type=int, default=12345, help="initialisation and sampler seed")
    parser.add_argument("--structures", nargs="+", default=None, help="only sample volumes of these structures")
    parser.add_argument("--no-augment", action="store_true", help="disable the light augmentation")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="save checkpoint_latest.pth every N its")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="data-loading processes per GPU (default nnUNet_n_proc_DA or min(8, cpus-1))")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="DDP processes: GPUs on cuda (NCCL); with --device cpu, gloo processes")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--continue", dest="continue_training", action="store_true",
                        help="resume from OUT/checkpoint_latest.pth (same iteration, optimizer, scheduler, sampler)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log file only)")
    args = parser.parse_args(argv)

    import torch

    from nnunetv2_selma.pretraining.loop import PretrainingSchedule, pretrain
    from nnunetv2_selma.pretraining.methods import get_method

    params = {"mae": {"block_size": args.block_size, "mask_ratio": args.mask_ratio},
              "denoise": {"noise_std": args.noise_std}}.get(args.method, {})
    method = get_method(args.method, **params)
    schedule = PretrainingSchedule(
        iterations=args.iterations, batch_size=args.batch_size, learning_rate=args.lr,
        warmup_fraction=args.warmup_fraction, seed=args.seed, structures=args.structures,
        augment=not args.no_augment, checkpoint_every=args.checkpoint_every, num_workers=args.num_workers,
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    final = pretrain(args.store, args.plans, args.output, method=method, schedule=schedule,
                     configuration=args.configuration, device=device, num_processes=args.num_gpus,
                     continue_training=args.continue_training, show_progress=not args.no_progress)
    print(f"pretraining checkpoint: {final}\n"
          f"fine-tune with: nnUNetv2_train DATASET {args.configuration} FOLD -tr nnUNetTrainerSelma "
          f"-p PLANS -pretrained_weights {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``nnUNetv2_selma_pretrain``: self-supervised pretraining once, fine-tuning many times.

The final checkpoint (``OUT/checkpoint_final.pth``) loads with stock
``nnUNetv2_train ... -pretrained_weights OUT/checkpoint_final.pth`` for any dataset planned with the
same SELMA plans preset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nnunetv2_selma.cli._args import (
    add_debug_flag,
    cli_command,
    nonneg_int,
    open_fraction,
    positive_float,
    positive_int,
    unit_fraction,
)


def _plans_file(dataset: str, plans_identifier: str | None) -> Path:
    """``$nnUNet_preprocessed/<dataset name>/<plans_identifier>.json``, as ``nnUNetv2_train -d -p`` finds it."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_preprocessed:
        raise ValueError("-d given but nnUNet_preprocessed is not set; set it (as for nnUNetv2_train) or give "
                         "--plans FILE")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"-d {dataset}: no such dataset in {nnUNet_preprocessed} or nnUNet_raw ({e})") from e
    return Path(nnUNet_preprocessed) / name / f"{plans_identifier or 'nnUNetPlans'}.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_pretrain",
        description="Self-supervised pretraining (default: Spark3D-style masked image modelling) of the network "
                    "described by a SELMA plans file, on patches from a pretraining store. Writes "
                    "checkpoint_latest.pth every --checkpoint-every iterations, checkpoint_final.pth (stock "
                    "-pretrained_weights format), pretraining_log.txt and progress.png into -o.")
    parser.add_argument("--store", required=True, help="pretraining store folder (nnUNetv2_selma_ingest -o)")
    plans = parser.add_mutually_exclusive_group(required=True)
    plans.add_argument("--plans", default=None,
                       help="plans .json of the fine-tuning, e.g. "
                            "$nnUNet_preprocessed/DatasetXXX/nnUNetSelmaPlans_M.json (or give -d and -p)")
    plans.add_argument("-d", "--dataset", default=None,
                       help="dataset name or ID whose plans -p to use, as nnUNetv2_train: "
                            "$nnUNet_preprocessed/<dataset>/<-p>.json")
    parser.add_argument("-p", "--plans-identifier", dest="plans_identifier", default=None,
                        help="plans identifier with -d, as nnUNetv2_train -p (e.g. nnUNetSelmaPlans_cpu, the name "
                             "nnUNetv2_selma_plan printed; nnU-Net's default nnUNetPlans)")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="plans configuration (default 3d_fullres)")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("--method", default="mae", help="pretraining method: mae (default) or denoise")
    parser.add_argument("--block-size", type=positive_int, default=None,
                        help="mae: masking block edge in voxels (default: min(16, smallest patch edge // 4))")
    parser.add_argument("--mask-ratio", type=open_fraction, default=0.75,
                        help="mae: fraction of blocks masked (default 0.75)")
    parser.add_argument("--noise-std", type=positive_float, default=0.5, help="denoise: noise std (default 0.5)")
    parser.add_argument("--iterations", type=positive_int, default=10000, help="optimizer steps (default 10000)")
    parser.add_argument("--batch-size", type=positive_int, default=2,
                        help="global batch size, split over GPUs (default 2)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    parser.add_argument("--warmup-fraction", type=unit_fraction, default=0.05,
                        help="linear warm-up fraction (default 0.05)")
    parser.add_argument("--seed", type=nonneg_int, default=12345, help="initialisation and sampler seed")
    parser.add_argument("--structures", nargs="+", default=None, help="only sample volumes of these structures")
    parser.add_argument("--no-augment", action="store_true", help="disable the light augmentation")
    parser.add_argument("--checkpoint-every", type=positive_int, default=500,
                        help="save checkpoint_latest.pth every N its")
    parser.add_argument("--num-workers", type=nonneg_int, default=None,
                        help="data-loading processes per GPU, 0 = in this process "
                             "(default nnUNet_n_proc_DA or min(8, cpus-1))")
    parser.add_argument("-num_gpus", "--num-gpus", dest="num_gpus", type=positive_int, default=1,
                        help="DDP processes, as nnUNetv2_train -num_gpus: GPUs on cuda (NCCL); with -device cpu, "
                             "gloo processes (default 1)")
    parser.add_argument("-device", "--device", dest="device", default=None, choices=("cuda", "cpu"),
                        help="cuda or cpu, as nnUNetv2_train -device (default: cuda if available; nnU-Net's: cuda)")
    parser.add_argument("--c", "--continue", dest="continue_training", action="store_true",
                        help="resume from OUT/checkpoint_latest.pth (same iteration, optimizer, scheduler, sampler), "
                             "as nnUNetv2_train --c")
    parser.add_argument("--init", default=None, metavar="CHECKPOINT",
                        help="start from this checkpoint instead of a random initialisation (domain-adaptive "
                             "pretraining): one of ours or an nnssl / OpenMind ResEnc-L checkpoint_final.pth, whose "
                             "adaptation plan must match the plans' network (preset L); decoder and head are "
                             "loaded too where they match")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an -o that holds checkpoint_final.pth or checkpoint_latest.pth of an "
                             "earlier run (removed before training starts, so a later --c cannot resume that run); "
                             "without it (or --c) such an -o is refused")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log file only)")
    add_debug_flag(parser)
    return parser


@cli_command
def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run :func:`nnunetv2_selma.pretraining.loop.pretrain`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.plans_identifier is not None and args.dataset is None:
        parser.error("argument -p: given without -d (give -d DATASET -p PLANS_IDENTIFIER, or --plans FILE)")
    plans_file = args.plans if args.plans is not None else _plans_file(args.dataset, args.plans_identifier)

    # imported on use: the pretraining stack loads torch and nnU-Net (about 8 s), which --help and argument
    # errors do not need
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
    final = pretrain(args.store, plans_file, args.output, method=method, schedule=schedule,
                     configuration=args.configuration, device=device, num_processes=args.num_gpus,
                     continue_training=args.continue_training, show_progress=not args.no_progress,
                     init=args.init, overwrite=args.overwrite)
    print(f"pretraining checkpoint: {final}\n"
          f"fine-tune with: nnUNetv2_train DATASET {args.configuration} FOLD -tr nnUNetTrainerSelma "
          f"-p PLANS -pretrained_weights {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

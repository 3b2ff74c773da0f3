"""``nnUNetv2_selma_export_checkpoint IN.pth OUT.pth --format nnssl``: our pretraining checkpoints for nnssl users.

The output carries nnssl's ``nnssl_adaptation_plan``, so nnU-Net master's ``nnUNetv2_train_pretrained``
(``nnUNetv2_preprocess_like_nnssl -pc OUT.pth``) and nnssl tools fine-tune from light-sheet weights.
"""

from __future__ import annotations

import argparse
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command


@cli_command
def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run :func:`nnunetv2_selma.nnssl_format.export_nnssl_checkpoint`."""
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_export_checkpoint",
        description="Write a pretraining checkpoint of nnUNetv2_selma_pretrain (or of the trainer flag's cache) in "
                    "another tool's format. --format nnssl: nnssl's checkpoint layout with an adaptation plan "
                    "('ResEncL' for presets M and L, 'ResidualEncoderUNet' with its arguments otherwise).")
    parser.add_argument("input", metavar="IN.pth",
                        help="our pretraining checkpoint (checkpoint_final.pth), or an nnU-Net training's "
                             "checkpoint_final.pth (exported without its segmentation head)")
    parser.add_argument("output", metavar="OUT.pth", help="file to write (never IN.pth)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.pth if it exists")
    parser.add_argument("--format", required=True, choices=("nnssl",), help="output format (nnssl)")
    parser.add_argument("--plans", default=None,
                        help="plans .json the checkpoint was pretrained with; only needed for checkpoints that do "
                             "not record their network (older releases)")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="plans configuration (default 3d_fullres)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    # imported on use: the checkpoint formats load torch (about 6 s), which --help and argument errors do not need
    from nnunetv2_selma.nnssl_format import export_nnssl_checkpoint

    plan = export_nnssl_checkpoint(args.input, args.output, plans=args.plans, configuration=args.configuration,
                                   overwrite=args.overwrite)
    name = plan["architecture_plans"]["arch_class_name"]
    print(f"wrote {args.output}: nnssl checkpoint of {plan['pretrain_plan']['dataset_name']}, architecture {name}, "
          f"{plan['pretrain_num_input_channels']} input channel(s), recommended downstream patch "
          f"{plan['recommended_downstream_patchsize']}\n"
          f"fine-tune with nnU-Net master: nnUNetv2_preprocess_like_nnssl -d DATASET -n NAME -pc {args.output} "
          f"-am like_pretrained, then nnUNetv2_train_pretrained DATASET 3d_fullres FOLD -p ptPlans__NAME...")
    return 0


if __name__ == "__main__":
    sys.exit(main())

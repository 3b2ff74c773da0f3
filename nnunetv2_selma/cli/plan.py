"""``nnUNetv2_selma_plan``: fingerprint, plan with a SELMA preset and preprocess nnU-Net datasets."""

from __future__ import annotations

import argparse
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command, positive_int
from nnunetv2_selma.training.planner import PRESETS, plan_and_preprocess


@cli_command
def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run :func:`nnunetv2_selma.training.planner.plan_and_preprocess`."""
    presets = ", ".join(f"{p.name}: patch {'x'.join(map(str, p.patch_size))}, {p.n_stages} stages, "
                        f"features {list(p.features_per_stage)} ({p.description})" for p in PRESETS.values())
    parser = argparse.ArgumentParser(
        description="Plan and preprocess nnU-Net datasets with the SELMA plans preset: the same "
                    "residual-encoder U-Net, patch size, spacing 1 (no resampling) and z-score "
                    "normalisation for every dataset. Writes plans nnUNetSelmaPlans_<preset>.json. "
                    f"Presets: {presets}."
    )
    parser.add_argument("-d", nargs="+", type=positive_int, required=True, help="dataset IDs")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="network size (default: cpu)")
    parser.add_argument("-np", type=positive_int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="run nnU-Net's dataset integrity check first")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    for dataset_id in args.d:
        try:
            maybe_convert_to_dataset_name(dataset_id)
        except RuntimeError as e:  # nnU-Net's message is a page listing every environment variable
            raise ValueError(f"-d {dataset_id}: no dataset with this ID in nnUNet_raw ({nnUNet_raw}); convert it "
                             f"first (nnUNetv2_selma_convert) or check the nnUNet_raw environment variable") from e
    identifier = plan_and_preprocess(args.d, args.preset, num_processes=args.np,
                                     verify_dataset_integrity=args.verify_dataset_integrity,
                                     preprocess=not args.no_pp)
    print(f"Plans written as {identifier}: use -p {identifier} with nnUNetv2_train / nnUNetv2_predict")


if __name__ == "__main__":
    sys.exit(main())

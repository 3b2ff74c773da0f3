"""``nnUNetv2_selma_plan``: fingerprint, plan with a SELMA preset and preprocess nnU-Net datasets."""

from __future__ import annotations

import argparse

from nnunetv2_selma.training.planner import PRESETS, plan_and_preprocess


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and run :func:`nnunetv2_selma.training.planner.plan_and_preprocess`."""
    presets = ", ".join(f"{p.name}: patch {'x'.join(map(str, p.patch_size))}, {p.n_stages} stages, "
                        f"features {list(p.features_per_stage)} ({p.description})" for p in PRESETS.values())
    parser = argparse.ArgumentParser(
        description="Plan and preprocess nnU-Net datasets with the SELMA plans preset: the same "
                    "residual-encoder U-Net, patch size, spacing 1 (no resampling) and z-score "
                    "normalisation for every dataset. Writes plans nnUNetSelmaPlans_<preset>.json. "
                    f"Presets: {presets}."
    )
    parser.add_argument("-d", nargs="+", type=int, required=True, help="dataset IDs")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="network size (default: cpu)")
    parser.add_argument("-np", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--no_pp", action="store_true", help="plan only, do not preprocess")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="run nnU-Net's dataset integrity check first")
    args = parser.parse_args(argv)
    identifier = plan_and_preprocess(args.d, args.preset, num_processes=args.np,
                                     verify_dataset_integrity=args.verify_dataset_integrity,
                                     preprocess=not args.no_pp)
    print(f"Plans written as {identifier}: use -p {identifier} with nnUNetv2_train / nnUNetv2_predict")


if __name__ == "__main__":
    main()

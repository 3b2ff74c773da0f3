"""``nnUNetv2_selma_demo``: the whole pipeline on generated SELMA3D-like data, with a report."""

from __future__ import annotations

import argparse
import logging
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command, nonneg_int
from nnunetv2_selma.demo import PROFILES, StageError, run_demo


@cli_command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_demo",
        description="Generate a SELMA3D-like download and run the whole pipeline on it: convert, ingest, plan, "
                    "pretrain, fine-tune with and without pretraining, predict, whole-volume inference, evaluate, "
                    "report. Profiles: " + "; ".join(f"{k}: {v.description}" for k, v in PROFILES.items()))
    parser.add_argument("-o", "--output", default="selma_demo", help="output folder (default ./selma_demo; replaced)")
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES), help="size of the run (default quick)")
    parser.add_argument("-device", "--device", default="cpu", choices=("cpu", "cuda"), help="default cpu")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="seed of the synthetic data")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        report = run_demo(args.output, profile=args.profile, device=args.device, seed=args.seed)
    except StageError as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print(f"report written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

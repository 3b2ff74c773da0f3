"""``nnUNetv2_selma_export_submission``: trained model folders -> Grand Challenge Docker build context (thin)."""

from __future__ import annotations

import argparse
import logging
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command
from nnunetv2_selma.submission.export import DEFAULT_BASE_IMAGE, DEFAULT_BASE_PYTHON, export_submission
from nnunetv2_selma.submission.interface import EDITIONS


def _fold(text: str) -> int | str:
    if text == "all" or text.isdigit():
        return int(text) if text.isdigit() else text
    raise argparse.ArgumentTypeError(f"found fold {text!r}; expected a number or 'all'")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_selma_export_submission",
        description="Write a complete Docker build context for a SELMA3D Grand Challenge submission: Dockerfile on a "
                    "pinned PyTorch image, the project and its pinned dependencies as a local wheelhouse (no network "
                    "at run time), the models as resources, the entry point (python -m nnunetv2_selma.submission) "
                    "and test_run.sh (build, run with --network none, check the output).",
        epilog="Several models: the input file name's structure prefix (cfos, microglia, vessel, nuclei, plaques, "
               "or the model's name) picks the model; other names get --default. Run-time overrides: "
               "SELMA_INPUT_ROOT, SELMA_OUTPUT_ROOT, SELMA_MODELS_DIR, SELMA_EDITION, SELMA_DEVICE, "
               "SELMA_USE_MIRRORING, SELMA_TILE_STEP_SIZE.",
    )
    # extend: `-m cfos=A -m microglia=B` keeps both (nargs="+" alone keeps only the last -m)
    p.add_argument("-m", "--models", nargs="+", action="extend", required=True, metavar="[NAME=]MODEL_FOLDER",
                   help="nnU-Net training output folders (…/Trainer__Plans__3d_fullres); NAME= sets the structure "
                        "key (default: from the dataset name). Repeat -m or list several after one -m")
    p.add_argument("-o", "--output", required=True, help="build folder to create")
    p.add_argument("--edition", choices=sorted(EDITIONS), default="2024",
                   help="challenge edition (default 2024); 2026 writes Grand Challenge's invoke-API server "
                        "image with the weights separate in model/ and model.tar.gz")
    p.add_argument("-f", "--folds", nargs="+", type=_fold, default=None,
                   help="folds to pack (default: every fold with the checkpoint)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth", help="checkpoint file name")
    p.add_argument("--default", default=None, help="model for inputs without a known prefix (default: the first)")
    p.add_argument("--disable_tta", "--disable-mirroring", dest="disable_mirroring", action="store_true",
                   help="no test-time mirroring in the container (faster). Default: mirroring on, as "
                        "nnUNetv2_predict (whose --disable_tta this is)")
    p.add_argument("--base-image", default=DEFAULT_BASE_IMAGE, help=f"base image (default {DEFAULT_BASE_IMAGE})")
    p.add_argument("--base-python", default=DEFAULT_BASE_PYTHON,
                   help=f"CPython major.minor of the base image (default {DEFAULT_BASE_PYTHON})")
    wheels = p.add_mutually_exclusive_group()
    wheels.add_argument("--wheelhouse", default=None, help="reuse the wheels of this folder (no download)")
    wheels.add_argument("--no-wheels", action="store_true",
                        help="write requirements.txt only; add the wheels before docker build")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing build folder written by this command (it holds .selma_submission); "
                        "any other folder is refused")
    add_debug_flag(p)
    return p


@cli_command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # a ValueError ends as "error: ..." and status 1 through cli_command, as every command's
    out = export_submission(args.models, args.output, edition=args.edition, folds=args.folds,
                            checkpoint=args.checkpoint, default=args.default,
                            use_mirroring=not args.disable_mirroring, base_image=args.base_image,
                            base_python=args.base_python, wheelhouse=args.wheelhouse,
                            build_wheels=not args.no_wheels, overwrite=args.overwrite)
    print(f"build context written to {out}; run {out}/test_run.sh INPUT_IMAGE to build and test it"
          + ("; upload model.tar.gz separately as the algorithm's Model" if args.edition == "2026" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

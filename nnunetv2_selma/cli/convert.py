"""``nnUNetv2_selma_convert``: SELMA3D annotated patches -> nnU-Net raw datasets (thin wrapper)."""

from __future__ import annotations

import argparse
import logging
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command, positive_float, positive_int
from nnunetv2_selma.dataset_conversion.annotated import (
    DEFAULT_FIRST_ID,
    DEFAULT_IDS_TEXT,
    AnnotatedLayoutError,
    ConversionError,
    convert_download,
)
from nnunetv2_selma.dataset_conversion.challenge_inputs import challenge_inputs_to_nnunet, predictions_to_challenge


def _id_pair(text: str) -> tuple[str, int]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value.strip().isdigit():
        raise argparse.ArgumentTypeError(f"found {text!r}; expected SUBSET=ID, e.g. VessAP_vessel=502")
    return key, int(value)


def _channel(text: str) -> int:
    names = {"wga": 0, "evansblue": 1, "evans_blue": 1}
    if text.lower() in names:
        return names[text.lower()]
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"found {text!r}; expected 0, 1, WGA or EvansBlue")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnUNetv2_selma_convert",
        description="Convert the annotated patches of a SELMA3D download (challenge, BioImage Archive or "
                    "2025/2026 prefixed layout, found automatically) into one nnU-Net raw dataset per structure, "
                    "DatasetNNN_SELMA3D_<Structure>, in $nnUNet_raw.",
        epilog=f"Default dataset IDs: {DEFAULT_IDS_TEXT}.",
    )
    p.add_argument("-i", "--input", default=None,
                   help="root folder of the SELMA3D download (annotated patches -> nnU-Net raw datasets)")
    p.add_argument("-o", "--output", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--ids", nargs="+", type=_id_pair, default=[], metavar="SUBSET=ID",
                   help="dataset ID per subset, structure or 'combined', e.g. VessAP_vessel=502 combined=720")
    p.add_argument("--first-id", type=positive_int, default=DEFAULT_FIRST_ID,
                   help=f"shift all default IDs so that the first is this one (default {DEFAULT_FIRST_ID})")
    p.add_argument("--vessel-channel", nargs="+", type=_channel, default=None, metavar="C",
                   help="keep only these channels of multi-channel (vessel) subsets: 0/WGA, 1/EvansBlue "
                        "(default: both)")
    p.add_argument("--combined", action="store_true",
                   help="also write one dataset of all single-channel structures (label 'structure')")
    p.add_argument("--spacing", nargs=3, type=positive_float, default=None, metavar=("Z", "Y", "X"),
                   help="voxel spacing to write (default 1 1 1: SELMA3D gives none)")
    p.add_argument("--subsets", nargs="+", default=None, help="convert only these subsets (names as on disk)")
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets of the same name")
    p.add_argument("-v", "--verbose", action="store_true", help="log every file")
    test = p.add_argument_group(
        "challenge test inputs (instead of -i)",
        "nnUNetv2_predict finds only CASE_0000.nii.gz files ('0 cases' in a folder of cfos_001.mha): "
        "--test-inputs IN -o NNUNET_IN writes IN's .mha/.tif inputs as CASE_0000.nii.gz (+ _0001 for a "
        "second channel, e.g. a 4D vessel input) at unit spacing; after nnUNetv2_predict -i NNUNET_IN -o PRED, "
        "--back PRED --test-inputs NNUNET_IN -o OUT writes the predictions under the inputs' names, formats "
        "and geometry (binary 0/1 masks)")
    test.add_argument("--test-inputs", default=None, metavar="FOLDER",
                      help="challenge-style test inputs (or, with --back, the folder written from them)")
    test.add_argument("--back", default=None, metavar="PREDICTIONS",
                      help="nnUNetv2_predict output folder to turn back into challenge-named files (needs "
                           "--test-inputs and -o)")
    test.add_argument("--dtype", choices=("uint8", "int8"), default="uint8",
                      help="pixel type of the --back masks (default uint8, the 2024 edition; 2025: int8)")
    add_debug_flag(p)
    return p


@cli_command
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.test_inputs is not None or args.back is not None:
        return _convert_test_inputs(parser, args)
    if args.input is None:
        parser.error("-i/--input is required (or --test-inputs for challenge test inputs)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        # the per-file remapping lines are worth seeing even without -v
        logging.getLogger("nnunetv2_selma.dataset_conversion").setLevel(logging.INFO)
    try:
        out = convert_download(args.input, raw_dir=args.output, ids=dict(args.ids), vessel_channels=args.vessel_channel,
                               combined=args.combined, spacing=args.spacing, overwrite=args.overwrite,
                               first_id=args.first_id, subsets=args.subsets)
    except (AnnotatedLayoutError, ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for structure, folder in out.items():
        print(f"{structure}: {folder}")
    return 0


def _convert_test_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """--test-inputs IN -o NNUNET_IN, or --back PRED --test-inputs NNUNET_IN -o OUT."""
    if args.input is not None:
        parser.error("-i converts annotated patches; --test-inputs/--back convert test inputs: give one of them")
    if args.test_inputs is None or args.output is None:
        parser.error("--test-inputs FOLDER and -o FOLDER are both required here")
    try:
        if args.back is not None:
            written = predictions_to_challenge(args.back, args.test_inputs, args.output, dtype=args.dtype)
            print(f"{len(written)} prediction(s) written to {args.output} under the test inputs' names")
        else:
            inputs = challenge_inputs_to_nnunet(args.test_inputs, args.output)
            print(f"{len(inputs)} case(s) written to {args.output} as CASE_0000.nii.gz "
                  f"({inputs[0].n_channels} channel(s)); next: nnUNetv2_predict -i {args.output} -o PRED ..., "
                  f"then nnUNetv2_selma_convert --back PRED --test-inputs {args.output} -o OUT")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

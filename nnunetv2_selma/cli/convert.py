"""``nnUNetv2_selma_convert``: SELMA3D annotated patches -> nnU-Net raw datasets (thin wrapper)."""

from __future__ import annotations

import argparse
import logging
import sys

from nnunetv2_selma.dataset_conversion.annotated import (
    DEFAULT_FIRST_ID,
    DEFAULT_IDS_TEXT,
    AnnotatedLayoutError,
    ConversionError,
    convert_download,
)


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
    p.add_argument("-i", "--input", required=True, help="root folder of the SELMA3D download")
    p.add_argument("-o", "--output", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    p.add_argument("--ids", nargs="+", type=_id_pair, default=[], metavar="SUBSET=ID",
                   help="dataset ID per subset, structure or 'combined', e.g. VessAP_vessel=502 combined=720")
    p.add_argument("--first-id", type=int, default=DEFAULT_FIRST_ID,
                   help=f"shift all default IDs so that the first is this one (default {DEFAULT_FIRST_ID})")
    p.add_argument("--vessel-channel", nargs="+", type=_channel, default=None, metavar="C",
                   help="keep only these channels of multi-channel (vessel) subsets: 0/WGA, 1/EvansBlue "
                        "(default: both)")
    p.add_argument("--combined", action="store_true",
                   help="also write one dataset of all single-channel structures (label 'structure')")
    p.add_argument("--spacing", nargs=3, type=float, default=None, metavar=("Z", "Y", "X"),
                   help="voxel spacing to write (default 1 1 1: SELMA3D gives none)")
    p.add_argument("--subsets", nargs="+", default=None, help="convert only these subsets (names as on disk)")
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets of the same name")
    p.add_argument("-v", "--verbose", action="store_true", help="log every file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())

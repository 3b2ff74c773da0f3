"""``nnUNetv2_selma_evaluate`` (score one prediction folder) and ``nnUNetv2_selma_rank`` (rank several)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command, positive_int
from nnunetv2_selma.evaluation.folders import evaluate_folders, rank_predictions
from nnunetv2_selma.evaluation.leaderboard import CATEGORY_ALIASES, EDITION_NAMES, NAN_LEFT_OUT_RULE


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--edition", required=True, choices=EDITION_NAMES, help="whose metrics to compute")
    parser.add_argument("--category", choices=sorted(CATEGORY_ALIASES), default=None,
                        help="force every case into this structure category instead of reading it from the case name")
    parser.add_argument("-np", "--num-processes", type=positive_int, default=min(4, os.cpu_count() or 1),
                        help="worker processes, one case each (default: min(4, CPUs))")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score a missing prediction as an empty mask (with a warning) instead of failing")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_debug_flag(parser)


@cli_command
def main(argv: list[str] | None = None) -> int:
    """Score a folder of predictions (e.g. ``nnUNetv2_predict`` output) against the references."""
    parser = argparse.ArgumentParser(prog="nnUNetv2_selma_evaluate", description=main.__doc__)
    parser.add_argument("-ref", required=True, help="folder of reference masks")
    parser.add_argument("-pred", required=True, help="folder of predicted masks (non-image files are ignored)")
    parser.add_argument("-o", "--output", required=True, help="result JSON; a per-case CSV is written next to it")
    parser.add_argument("--csv", default=None, help="per-case CSV path (default: the -o path with suffix .csv)")
    _common(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = evaluate_folders(args.ref, args.pred, args.edition, args.output, category=args.category,
                              num_processes=args.num_processes, allow_missing=args.allow_missing,
                              csv_path=args.csv, progress=not args.no_progress)
    for key, value in result["aggregates"].items():
        print(f"{key:28s} {value:.4f}")
    print(f"wrote {args.output}")


@cli_command
def rank_main(argv: list[str] | None = None) -> int:
    """Rank several prediction folders (or evaluation result JSONs) the way the challenge ranked teams."""
    parser = argparse.ArgumentParser(prog="nnUNetv2_selma_rank", description=rank_main.__doc__)
    parser.add_argument("-ref", default=None, help="folder of reference masks (needed for prediction folders)")
    parser.add_argument("-pred", required=True, nargs="+", help="prediction folders or result JSONs, one per team")
    parser.add_argument("--names", nargs="+", default=None, help="team names (default: folder names)")
    parser.add_argument("-o", "--output", required=True, help="ranking JSON; a CSV table is written next to it")
    _common(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    ranking = rank_predictions(args.pred, args.edition, args.output, reference_folder=args.ref, names=args.names,
                               category=args.category, num_processes=args.num_processes,
                               allow_missing=args.allow_missing, progress=not args.no_progress)
    for team in ranking["order"]:
        t = ranking["teams"][team]
        print(f"{t['rank']:5.1f}  {team:30s} mean rank {t['score']:.3f}")
    if "left_out" in ranking:
        print(f"note: {NAN_LEFT_OUT_RULE}")
        for team in ranking["order"]:
            left = ranking["left_out"][team]
            print(f"  {team}: " + ("; ".join(f"{key} leaves out {len(c)} NaN case(s) ({', '.join(c[:5])}"
                                             f"{', ...' if len(c) > 5 else ''})" for key, c in left.items())
                                   or "no NaN case left out"))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    sys.exit(main())

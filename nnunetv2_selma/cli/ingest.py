"""``nnUNetv2_selma_ingest``: unannotated SELMA3D volumes -> streaming pretraining store."""

from __future__ import annotations

import argparse
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command, positive_int
from nnunetv2_selma.store.ingest import DEFAULT_BLOCKS, DEFAULT_CHUNKS, ingest_store


@cli_command
def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run :func:`nnunetv2_selma.store.ingest.ingest_store`.

    Returns 0, or 1 when any volume failed (each failure is printed with its file and reason).
    """
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_ingest",
        description="Stream every unannotated_<structure>/<sample>/<channel>/ slice folder (and single 3D files) "
                    "below DOWNLOAD_ROOT into a chunked blosc2 pretraining store. Rerun to resume.")
    parser.add_argument("-i", required=True, help="SELMA3D download root (searched for unannotated_* folders)")
    parser.add_argument("-o", required=True, help="store folder (created; manifest.json, volumes/, ingest.log)")
    parser.add_argument("-np", type=positive_int, default=1, help="volumes ingested in parallel (default 1)")
    parser.add_argument("--chunks", type=positive_int, nargs=3, default=list(DEFAULT_CHUNKS), metavar=("Z", "Y", "X"),
                        help=f"blosc2 chunk shape; chunks[0] slices are held in memory (default {DEFAULT_CHUNKS})")
    parser.add_argument("--blocks", type=positive_int, nargs=3, default=list(DEFAULT_BLOCKS), metavar=("Z", "Y", "X"),
                        help=f"blosc2 block shape (default {DEFAULT_BLOCKS})")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    report = ingest_store(args.i, args.o, num_processes=args.np, chunks=tuple(args.chunks), blocks=tuple(args.blocks))
    print(f"store {report.store}: {len(report.written)} written, {len(report.kept)} kept (verified), "
          f"{len(report.failed)} failed")
    for f in report.failed:
        print(f"FAILED {f['name']}: {f['reason']}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""``nnUNetv2_selma_predict_large``: segment a whole volume (any size) block by block, resumably."""

from __future__ import annotations

import argparse
import logging
import sys

from nnunetv2_selma.cli._args import (
    add_debug_flag,
    block_edges,
    cli_command,
    device_name,
    finite_float,
    fold,
    positive_int,
    step_fraction,
)
from nnunetv2_selma.inference.objects import measure_objects
from nnunetv2_selma.inference.whole_volume import predict_large


@cli_command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_predict_large",
        description="Segment a volume of any size with an nnU-Net model, in blocks whose result equals "
                    "nnUNetPredictor on the whole volume. Memory is bounded by the block; a killed run "
                    "restarted with the same command resumes.")
    parser.add_argument("-i", "--input", required=True, nargs="+",
                        help="input volume (one per channel): folder of 2D TIFF slices, 3D .tif, .nii.gz, .mha, "
                             ".b2nd or OME-Zarr")
    parser.add_argument("-o", "--output", required=True,
                        help="output: a folder for TIFF slices (no suffix), .tif, .b2nd, .nii.gz, .mha, .ome.zarr "
                             "(uint8; OME-Zarr with a multiscale pyramid, opens in napari)")
    parser.add_argument("-m", "--model", required=True, help="nnU-Net model folder (Trainer__Plans__Configuration)")
    parser.add_argument("-f", "--folds", nargs="+", type=fold, default=["0"],
                        help="folds to ensemble (default: 0)")
    parser.add_argument("--block", type=positive_int, nargs="+", default=None,
                        help="block core edge: one int or three (z y x), each >= 1; default: fits ~2 GB (peak < 3 GB)")
    parser.add_argument("-device", "--device", type=device_name, default="cpu",
                        help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("-step_size", "--step-size", type=step_fraction, default=0.5, dest="step_size",
                        help="tile step as a fraction of the patch size, in (0, 1] (default 0.5, as nnUNetv2_predict)")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--mirror", "--tta", dest="mirror", action="store_true", default=False,
                     help="test-time mirroring. Default here: off (it costs 8x on a whole brain); "
                          "nnUNetv2_predict's default: on")
    tta.add_argument("--disable_tta", dest="mirror", action="store_false",
                     help="no test-time mirroring (the default here; nnUNetv2_predict's spelling)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="start a local dask.distributed cluster with N >= 1 worker processes (one GPU each)")
    parser.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    parser.add_argument("--stats", type=finite_float, nargs="+", default=None, metavar="MEAN STD",
                        help="intensity mean and std (> 0) per channel (skip measuring them)")
    parser.add_argument("--tissue-mask", default="auto", metavar="auto|none|PATH",
                        help="zero the labels outside the tissue: auto (default: ingest's tissue mask of the input, "
                             "dilated by one mask voxel = 8+ voxels; removes only a clearly dark outside, keeps "
                             "everything in a volume that is tissue everywhere, keeps objects touching the tissue "
                             "whole), none (labels as nnUNetPredictor), or a mask volume PATH (non-zero = tissue; "
                             "the input's shape or smaller by a whole factor per axis; used voxel by voxel)")
    parser.add_argument("--objects", nargs="?", const="", default=None, metavar="DIR",
                        help="then count and measure the objects of the output (nnUNetv2_selma_objects, intensities "
                             "from the inputs) into DIR (default: <output>.objects)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    args = parser.parse_args(argv)

    block = block_edges(parser, args.block)
    stats = None
    if args.stats is not None:
        if len(args.stats) != 2 * len(args.input):
            parser.error(f"argument --stats: found {len(args.stats)} numbers; expected a MEAN STD pair per input "
                         f"channel ({2 * len(args.input)} numbers)")
        stats = [(args.stats[2 * i], args.stats[2 * i + 1]) for i in range(len(args.input))]
        for c, (_, std) in enumerate(stats):
            if std <= 0:
                parser.error(f"argument --stats: found std {std} for channel {c}; expected a std > 0")
    if args.workers is not None and args.scheduler is not None:
        parser.error("argument --workers: not allowed with --scheduler (give one: a local cluster or an existing one)")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # "NumExpr defaulting to N threads"
    output = predict_large(args.input if len(args.input) > 1 else args.input[0], args.output, args.model,
                           folds=args.folds, block_size=block, device=args.device, tile_step_size=args.step_size,
                           use_mirroring=args.mirror, workers=args.workers, scheduler=args.scheduler,
                           checkpoint_name=args.checkpoint, intensity_stats=stats, progress=not args.quiet,
                           tissue_mask=args.tissue_mask)
    print(output)
    if args.objects is not None:
        objects_dir = args.objects or output.with_name(output.name + ".objects")
        print(measure_objects(output, objects_dir, images=args.input, workers=args.workers,
                              scheduler=args.scheduler, progress=not args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())

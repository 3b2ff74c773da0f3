"""``nnUNetv2_selma_predict_large``: segment a whole volume (any size) block by block, resumably."""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_predict_large",
        description="Segment a volume of any size with an nnU-Net model, in blocks whose result equals "
                    "nnUNetPredictor on the whole volume. Memory is bounded by the block; a killed run "
                    "restarted with the same command resumes.")
    parser.add_argument("-i", "--input", required=True, nargs="+",
                        help="input volume (one per channel): folder of 2D TIFF slices, 3D .tif, .nii.gz, .mha, "
                             ".b2nd or OME-Zarr")
    parser.add_argument("-o", "--output", required=True,
                        help="output: a folder for TIFF slices (no suffix), .tif, .b2nd, .nii.gz, .mha (uint8)")
    parser.add_argument("-m", "--model", required=True, help="nnU-Net model folder (Trainer__Plans__Configuration)")
    parser.add_argument("-f", "--folds", nargs="+", default=["0"], help="folds to ensemble (default: 0)")
    parser.add_argument("--block", type=int, nargs="+", default=None,
                        help="block core edge: one int or three (z y x); default: fits ~2 GB (peak < 3 GB)")
    parser.add_argument("-device", "--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("-step_size", "--step-size", type=float, default=0.5, dest="step_size",
                        help="tile step as a fraction of the patch size (default 0.5, as nnUNetv2_predict)")
    parser.add_argument("--mirror", action="store_true",
                        help="test-time mirroring (nnUNetv2_predict does it by default; here it is opt-in)")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--workers", type=int, default=None,
                        help="start a local dask.distributed cluster with N worker processes (one GPU each)")
    parser.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    parser.add_argument("--stats", type=float, nargs="+", default=None, metavar="MEAN STD",
                        help="intensity mean and std per channel (skip measuring them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    block = None
    if args.block is not None:
        if len(args.block) not in (1, 3):
            parser.error(f"--block takes 1 or 3 integers; got {len(args.block)}")
        block = args.block[0] if len(args.block) == 1 else tuple(args.block)
    stats = None
    if args.stats is not None:
        if len(args.stats) != 2 * len(args.input):
            parser.error(f"--stats takes a MEAN STD pair per input channel; got {len(args.stats)} numbers")
        stats = [(args.stats[2 * i], args.stats[2 * i + 1]) for i in range(len(args.input))]

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nnunetv2_selma.inference.whole_volume import predict_large

    output = predict_large(args.input if len(args.input) > 1 else args.input[0], args.output, args.model,
                           folds=args.folds, block_size=block, device=args.device, tile_step_size=args.step_size,
                           use_mirroring=args.mirror, workers=args.workers, scheduler=args.scheduler,
                           checkpoint_name=args.checkpoint, intensity_stats=stats, progress=not args.quiet)
    print(output)


if __name__ == "__main__":
    main()

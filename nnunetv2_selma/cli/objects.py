"""``nnUNetv2_selma_objects``: count and measure the objects (connected components) of a mask of any size."""

from __future__ import annotations

import argparse
import logging
import sys

from nnunetv2_selma.cli._args import add_debug_flag, block_edges, cli_command, connectivity, positive_int
from nnunetv2_selma.inference.objects import measure_objects


@cli_command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_objects",
        description="Connected components of a mask of any size, block by block (labels consistent across "
                    "block seams, equal to scipy.ndimage.label on the whole mask): objects.csv, summary.json, "
                    "a density map (TIFF or OME-Zarr) and a MIP picture with the density over it. A killed run "
                    "restarted with the same command resumes. OME-Zarr outputs (--labels OUT.ome.zarr, "
                    "--density-format ome-zarr) are multiscale and open in napari: "
                    "napari --plugin napari-ome-zarr OUT.ome.zarr")
    parser.add_argument("-i", "--input", required=True,
                        help="mask (non-zero = foreground): folder of 2D TIFF slices, 3D .tif, .b2nd, .nii.gz, .mha "
                             "or OME-Zarr, e.g. the output of nnUNetv2_selma_predict_large")
    parser.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--image", nargs="+", default=[],
                        help="intensity volume(s) of the mask's shape: mean and max intensity per object and image")
    parser.add_argument("--block", type=positive_int, nargs="+", default=None,
                        help="block edge: one int or three (z y x), each >= 1 (default 256: ~0.2-0.5 GB per block)")
    dask = parser.add_mutually_exclusive_group()
    dask.add_argument("--workers", type=positive_int, default=None,
                      help="run the blocks on a local dask.distributed cluster of N >= 1 processes")
    dask.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    parser.add_argument("--min-voxels", type=positive_int, default=1,
                        help="drop objects with fewer voxels (default 1: keep all)")
    parser.add_argument("--connectivity", type=connectivity, default=26,
                        help="6 (faces), 18 (+edges) or 26 (+corners, the default)")
    parser.add_argument("--labels", default=None,
                        help="also write uint32 instance labels here (.tif, .b2nd, .ome.zarr, .nii.gz, .mha, or a "
                             "folder of TIFF slices: a path without suffix). .ome.zarr: a multiscale OME-Zarr that "
                             "napari opens as a Labels layer")
    parser.add_argument("--density-voxels", type=positive_int, default=25,
                        help="edge of a density-map voxel, in voxels (default 25)")
    parser.add_argument("--density-format", choices=("tif", "ome-zarr"), default=None,
                        help="density map as OUT/density.tif or OUT/density.ome.zarr (multiscale, scaled to overlay "
                             "the mask in napari); default: ome-zarr when --labels is an .ome.zarr, else tif")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace objects.csv, the density map and density_mip.png already in -o (a user's "
                             "files or another objects run's) and what --labels already holds, and discard a "
                             "killed run of other options in -o (it resumes only with the same options); without "
                             "it they are refused")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    block = block_edges(parser, args.block)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(measure_objects(args.input, args.output, images=args.image, block_size=block,
                          connectivity=args.connectivity, min_voxels=args.min_voxels, labels=args.labels,
                          density_voxels=args.density_voxels, workers=args.workers, scheduler=args.scheduler,
                          progress=not args.quiet, density_format=args.density_format,
                          overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(main())

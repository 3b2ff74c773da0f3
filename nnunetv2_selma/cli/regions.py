"""``nnUNetv2_selma_regions``: objects per brain region and hemisphere, the brain registered to a BrainGlobe atlas."""

from __future__ import annotations

import argparse
import logging

from nnunetv2_selma.cli._args import add_debug_flag, cli_command, positive_float, positive_int


@cli_command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_selma_regions",
        description="Count the objects of nnUNetv2_selma_objects per brain region and hemisphere: the whole-brain "
                    "channel is downsampled to the atlas resolution (slab by slab), registered to a BrainGlobe atlas "
                    "with itk-elastix (affine + B-spline), and every object centroid is mapped into atlas space. "
                    "Writes regions.csv, points_atlas_space.csv, summary.json, the atlas on the brain and pictures. "
                    "A rerun of the same command skips the steps already done. Needs the [atlas] extra: "
                    "pip install 'nnunetv2-selma[atlas]'")
    parser.add_argument("-i", "--input", required=True,
                        help="objects folder of nnUNetv2_selma_objects (or predict_large --objects): objects.csv")
    parser.add_argument("--image", required=True,
                        help="whole-brain registration channel (usually autofluorescence) the objects were found in: "
                             "folder of TIFF slices, 3D .tif, .nii.gz, OME-Zarr or .b2nd")
    parser.add_argument("--voxel-size", type=positive_float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="micrometres per voxel in the image's axis order (required: SELMA3D stores none)")
    parser.add_argument("--orientation", required=True,
                        help="BrainGlobe orientation of the image axes (z y x), three letters naming where each "
                             "axis starts: a/p, s/i, l/r, e.g. psl")
    parser.add_argument("--atlas", default="allen_mouse_25um", help="BrainGlobe atlas name (default allen_mouse_25um)")
    parser.add_argument("--brainglobe-dir", default=None,
                        help="folder brainglobe-atlasapi keeps its atlases in (its brainglobe_dir; default its own): "
                             "a local or custom atlas works offline")
    parser.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    parser.add_argument("--affine-iterations", type=positive_int, default=400, help="elastix affine iterations per "
                        "resolution (default 400)")
    parser.add_argument("--bspline-iterations", type=positive_int, default=400, help="elastix B-spline iterations "
                        "per resolution (default 400)")
    parser.add_argument("--bspline-grid", type=positive_float, default=8,
                        help="B-spline control point spacing in atlas voxels (default 8: 200 um at 25 um)")
    parser.add_argument("--slab", type=positive_int, default=None,
                        help="image planes read at once (default: as many as fit in 256 MiB, at most 32)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.voxel_size is None:
        parser.error("--voxel-size Z Y X is required (micrometres, image axis order; SELMA3D stores none)")

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from nnunetv2_selma.regions.pipeline import count_regions

    print(count_regions(args.input, args.image, args.voxel_size, args.orientation, args.output, atlas=args.atlas,
                        brainglobe_dir=args.brainglobe_dir, affine_iterations=args.affine_iterations,
                        bspline_iterations=args.bspline_iterations, bspline_grid_voxels=args.bspline_grid,
                        slab_planes=args.slab, progress=not args.quiet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

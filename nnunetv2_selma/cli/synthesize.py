"""``nnUNetv2_selma_synthesize OUT_DIR``: write a synthetic SELMA3D download (seeded, deterministic)."""

from __future__ import annotations

import argparse
import logging
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command, nonneg_int, positive_float, positive_int
from nnunetv2_selma.synthetic.download import DEFAULT_CASES_PER_SUBSET, LAYOUTS, PATCH_FORMATS, write_download


@cli_command
def main(argv: list[str] | None = None) -> int:
    """Parse arguments and call :func:`nnunetv2_selma.synthetic.download.write_download`."""
    p = argparse.ArgumentParser(prog="nnUNetv2_selma_synthesize", description=__doc__)
    p.add_argument("out_dir", help="folder to create (must be absent or empty unless --overwrite)")
    p.add_argument("--layout", choices=LAYOUTS, default="challenge", help="annotated-patch layout")
    p.add_argument("--cases", type=positive_int, default=DEFAULT_CASES_PER_SUBSET,
                   help=f"annotated patches per subset (default {DEFAULT_CASES_PER_SUBSET}: nnU-Net's 5-fold "
                        "cross-validation needs at least 5 cases; with fewer, train only fold 'all')")
    p.add_argument("--patch-scale", type=positive_float, default=0.25,
                   help="scale of the real 2024 patch shapes (1 = real)")
    p.add_argument("--unannotated-shape", type=positive_int, nargs=3, default=(64, 128, 128), metavar=("Z", "Y", "X"))
    p.add_argument("--unannotated-per-structure", type=nonneg_int, default=1)
    p.add_argument("--dtype", choices=("uint16", "int16"), default="uint16", help="unannotated slice dtype")
    p.add_argument("--format", choices=PATCH_FORMATS, default=".nii.gz", help="annotated patch file format")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--slab", type=positive_int, default=32, help="planes rendered at once for unannotated volumes")
    p.add_argument("--contrast", type=positive_float, default=1.0,
                   help="object brightness multiplier (default 1.0); 0.25 draws dim, low-SNR objects (harder)")
    p.add_argument("--no-test-inputs", action="store_true", help="skip the challenge-style test inputs")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    add_debug_flag(p)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = write_download(a.out_dir, layout=a.layout, cases_per_subset=a.cases, patch_scale=a.patch_scale,
                                 unannotated_shape=tuple(a.unannotated_shape),
                                 unannotated_per_structure=a.unannotated_per_structure,
                                 unannotated_dtype=a.dtype, seed=a.seed, test_inputs=not a.no_test_inputs,
                                 file_format=a.format, overwrite=a.overwrite, slab=a.slab,
                                 contrast=a.contrast)
    except (FileExistsError, ValueError) as e:
        p.error(str(e))
    print(f"wrote {summary['root']} in {summary['seconds']} s: {summary['counts']}")
    if a.cases < DEFAULT_CASES_PER_SUBSET:
        print(f"note: {a.cases} case(s) per subset: nnUNetv2_train folds 0-4 need at least 5 (KFold(5)); "
              "train fold 'all' instead, or synthesize with --cases 5")
    print(f"pictures: {len(summary['pictures'])} preview*.png files, e.g. {summary['pictures'][0]}")


if __name__ == "__main__":
    sys.exit(main())

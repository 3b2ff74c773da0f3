"""``nnUNetv2_selma_setup_trainers``: make ``nnUNetv2_train/predict -tr nnUNetTrainerSelma...`` find our trainers."""

from __future__ import annotations

import argparse
import sys

from nnunetv2_selma.cli._args import add_debug_flag, cli_command
from nnunetv2_selma.nnunet_ext import export_line, install_pth, remove_pth, shim_folder


@cli_command
def main(argv: list[str] | None = None) -> int:
    """Write (default), remove, or print the set-up that adds our trainer folder to ``nnUNet_extTrainer``."""
    parser = argparse.ArgumentParser(
        description="Register the nnunetv2-selma trainers with nnU-Net. By default writes a .pth file into "
                    "this environment's site-packages so that every new Python process appends "
                    f"{shim_folder()} to nnUNet_extTrainer. With --print, prints the shell line for the manual "
                    'way instead: eval "$(nnUNetv2_selma_setup_trainers --print)"'
    )
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="only print the export line (nothing is written)")
    parser.add_argument("--site-dir", default=None, help="site-packages folder to write to (default: this "
                        "interpreter's)")
    parser.add_argument("--remove", action="store_true", help="remove the .pth file again")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.print_only:
        print(export_line())
    elif args.remove:
        removed = remove_pth(args.site_dir)
        print(f"removed {removed}" if removed else "nothing to remove")
    else:
        target = install_pth(args.site_dir)
        print(f"wrote {target}: new shells find the nnunetv2-selma trainers (nnUNet_extTrainer += {shim_folder()})")


if __name__ == "__main__":
    sys.exit(main())

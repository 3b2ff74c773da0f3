"""``python -m nnunetv2_selma.submission``: the challenge container's entry point."""

import sys

from nnunetv2_selma.submission.entrypoint import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

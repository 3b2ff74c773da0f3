"""Text templates of the Docker build context (``@@NAME@@`` placeholders, filled by :mod:`.export`).

Kept as Python strings rather than data files so they ship inside the wheel without package-data
configuration.
"""

from __future__ import annotations

DOCKERFILE = """\
# SELMA3D @@EDITION@@ algorithm container, written by nnUNetv2_selma_export_submission.
# Build:  docker build -t selma-submission .      Run: see test_run.sh (no network at run time).
FROM @@BASE_IMAGE@@

ENV PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    nnUNet_compile=false \\
    nnUNet_def_n_proc=1 \\
    nnUNet_n_proc_DA=0 \\
    SELMA_EDITION=@@EDITION@@ \\
    SELMA_MODELS_DIR=/opt/app/resources \\
    SELMA_INPUT_ROOT=/input \\
    SELMA_OUTPUT_ROOT=/output

# The wheels were built for CPython @@PYTHON_VERSION@@; fail the build early on another interpreter.
RUN python -c "import sys; v = '%d.%d' % sys.version_info[:2]; assert v == '@@PYTHON_VERSION@@', \\
    'base image Python ' + v + ' but wheels are for @@PYTHON_VERSION@@: rebuild them or change the base image'"

# Grand Challenge recommends running as a non-root user.
RUN groupadd -r user && useradd -m --no-log-init -r -g user user

WORKDIR /opt/app
# Everything is installed from the wheelhouse of this context: no index, no network. torch comes
# from the base image; --no-deps because requirements.txt already pins the whole closure.
COPY wheelhouse/ /tmp/wheelhouse/
RUN python -m pip install --no-index --no-deps --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt \\
    && rm -rf /tmp/wheelhouse

COPY --chown=user:user resources/ /opt/app/resources/
USER user
RUN python -c "import nnunetv2_selma.submission.entrypoint, nnunetv2.inference.predict_from_raw_data"

ENTRYPOINT ["python", "-m", "nnunetv2_selma.submission"]
"""

TEST_RUN_SH = """\
#!/usr/bin/env bash
# Build the SELMA3D @@EDITION@@ algorithm image and run it the way Grand Challenge does: one input
# image mounted read-only, no network, GPU when the host has one; then check the output's geometry.
#
# usage: ./test_run.sh INPUT_IMAGE(.mha|.tif|.tiff) [OUTPUT_DIR]
# env:   IMAGE_TAG (default selma-submission-@@EDITION@@), MEMORY (default 30g)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ]; then
    echo "usage: $0 INPUT_IMAGE [OUTPUT_DIR]" >&2
    exit 2
fi
INPUT="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
OUTPUT_DIR="${2:-$HERE/test_output}"
IMAGE_TAG="${IMAGE_TAG:-selma-submission-@@EDITION@@}"
MEMORY="${MEMORY:-30g}"
INPUT_SLUG="@@INPUT_SLUG@@"
OUTPUT_SLUG="@@OUTPUT_SLUG@@"

if [ ! -f "$INPUT" ]; then
    echo "input image $INPUT not found" >&2
    exit 2
fi

docker build -t "$IMAGE_TAG" "$HERE"

INPUT_ROOT="$(mktemp -d)"
trap 'rm -rf "$INPUT_ROOT"' EXIT
mkdir -p "$INPUT_ROOT/images/$INPUT_SLUG"
cp "$INPUT" "$INPUT_ROOT/images/$INPUT_SLUG/"
chmod -R a+rX "$INPUT_ROOT"
mkdir -p "$OUTPUT_DIR"
chmod a+rwx "$OUTPUT_DIR"
rm -f "$OUTPUT_DIR/images/$OUTPUT_SLUG/output.mha"

GPU_FLAGS=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    GPU_FLAGS=(--gpus all)
fi

docker run --rm --network none ${GPU_FLAGS[@]+"${GPU_FLAGS[@]}"} \\
    --memory "$MEMORY" --memory-swap "$MEMORY" --shm-size 2g --pids-limit 256 \\
    -v "$INPUT_ROOT:/input:ro" -v "$OUTPUT_DIR:/output" \\
    "$IMAGE_TAG"

OUTPUT="$OUTPUT_DIR/images/$OUTPUT_SLUG/output.mha"
if [ ! -f "$OUTPUT" ]; then
    echo "FAILED: the container wrote no $OUTPUT" >&2
    exit 1
fi

# Check shape, geometry and values with the image's own SimpleITK.
docker run --rm --network none --entrypoint python \\
    -v "$INPUT_ROOT:/input:ro" -v "$OUTPUT_DIR:/output:ro" "$IMAGE_TAG" -c '
import sys, numpy as np
from nnunetv2_selma.io import read_image
from pathlib import Path
inp = next(p for p in Path("/input/images/'"$INPUT_SLUG"'").iterdir())
a, ga = read_image(inp)
b, gb = read_image("/output/images/'"$OUTPUT_SLUG"'/output.mha")
problems = []
if a.shape != b.shape: problems.append(f"shape {b.shape} != input {a.shape}")
for k in ("spacing", "origin", "direction"):
    if not np.allclose(ga[k], gb[k]): problems.append(f"{k} {gb[k]} != input {ga[k]}")
if not set(np.unique(b).tolist()) <= {0, 1}: problems.append(f"values {np.unique(b)} not in {{0, 1}}")
print("output", b.shape, b.dtype, "foreground voxels", int((b > 0).sum()))
sys.exit("FAILED: " + "; ".join(problems) if problems else 0)
'
echo "OK: $OUTPUT"
"""

README = """\
# SELMA3D @@EDITION@@ submission build context

Written by `nnUNetv2_selma_export_submission`. Contents:

- `Dockerfile`: @@BASE_IMAGE@@ + the wheels of `wheelhouse/` (installed without network) + `resources/`.
- `wheelhouse/`: `requirements.txt` (pinned closure of nnunetv2-selma, torch excluded: the base
  image provides it) and the wheels. @@WHEEL_NOTE@@
- `resources/models.json`: which model segments which input (structure prefix of the input
  file name; default `@@DEFAULT@@`), folds, mirroring.
- `resources/<model>/`: `plans.json`, `dataset.json`, `fold_X/<checkpoint>` (weights only).
- `test_run.sh INPUT_IMAGE`: build, run with `--network none` (and `--gpus all` when available),
  check the output's shape, geometry and values.

Input: `/input/images/@@INPUT_SLUG@@/<one image>.mha|.tif|.tiff`.
Output: `/output/images/@@OUTPUT_SLUG@@/output.mha` (binary, the input's geometry).

Save the image for upload: `docker save selma-submission-@@EDITION@@ | gzip -c > submission.tar.gz`.
"""


def fill(template: str, **values: object) -> str:
    """Replace every ``@@KEY@@`` of ``template``; KeyError naming any placeholder left unfilled."""
    out = template
    for key, value in values.items():
        out = out.replace(f"@@{key}@@", str(value))
    if "@@" in out:
        start = out.index("@@")
        raise KeyError(f"template placeholder left unfilled near {out[start:start + 30]!r}")
    return out

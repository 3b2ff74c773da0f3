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
from nnunetv2_selma.volumes.images import read_image
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


DOCKERFILE_INVOKE = """\
# SELMA3D @@EDITION@@ algorithm container (Grand Challenge invoke API), written by
# nnUNetv2_selma_export_submission. The weights are NOT in the image: upload model.tar.gz as the
# algorithm's Model; Grand Challenge extracts it to /opt/ml/model (test_run.sh mounts model/ there).
# Build:  docker build -t selma-submission-@@EDITION@@ .      Test: ./test_run.sh IMAGE [IMAGE ...]
FROM @@BASE_IMAGE@@

ENV PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    nnUNet_compile=false \\
    nnUNet_def_n_proc=1 \\
    nnUNet_n_proc_DA=0 \\
    SELMA_EDITION=@@EDITION@@ \\
    SELMA_MODELS_DIR=/opt/ml/model \\
    SELMA_INPUT_ROOT=/input \\
    SELMA_OUTPUT_ROOT=/output \\
    SELMA_PORT=@@PORT@@

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

USER user
RUN python -c "import nnunetv2_selma.submission.server, nnunetv2.inference.predict_from_raw_data"

# Grand Challenge runs the image as an HTTP server because of this label (invoke API).
LABEL org.grand-challenge.api-method="invoke"
EXPOSE @@PORT@@
ENTRYPOINT ["python", "-m", "nnunetv2_selma.submission.server"]
"""

TEST_RUN_INVOKE_SH = """\
#!/usr/bin/env bash
# Build the SELMA3D @@EDITION@@ image and drive it the way Grand Challenge's invoke API does: the
# image must carry org.grand-challenge.api-method=invoke; one container is started with model/
# mounted read-only at /opt/ml/model, no network; GET /health is polled until 200; then, for each
# INPUT_IMAGE in turn, the input is provisioned under /input (with an inputs.json), POST /invoke
# must answer 201, and the output is copied out and checked (shape, geometry, int8 values 0/1).
# Requests are sent from inside the container (it has no network), with the image's own Python.
#
# usage: ./test_run.sh INPUT_IMAGE [INPUT_IMAGE ...]      (.mha|.tif|.tiff)
# env:   IMAGE_TAG (default selma-submission-@@EDITION@@), MEMORY (default 30g), OUTPUT_DIR
#        (default ./test_output), HEALTH_ATTEMPTS (default 30, 5 s apart), INVOKE_TIMEOUT (default 300 s)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -lt 1 ]; then
    echo "usage: $0 INPUT_IMAGE [INPUT_IMAGE ...]" >&2
    exit 2
fi
IMAGE_TAG="${IMAGE_TAG:-selma-submission-@@EDITION@@}"
MEMORY="${MEMORY:-30g}"
OUTPUT_DIR="${OUTPUT_DIR:-$HERE/test_output}"
HEALTH_ATTEMPTS="${HEALTH_ATTEMPTS:-30}"
INVOKE_TIMEOUT="${INVOKE_TIMEOUT:-300}"
INPUT_SLUG="@@INPUT_SLUG@@"
OUTPUT_SLUG="@@OUTPUT_SLUG@@"
PORT="@@PORT@@"
CONTAINER="selma-invoke-test-$$"

for f in "$@"; do
    [ -f "$f" ] || { echo "input image $f not found" >&2; exit 2; }
done
[ -f "$HERE/model/models.json" ] || { echo "$HERE/model/models.json not found: export again" >&2; exit 2; }

docker build -t "$IMAGE_TAG" "$HERE"
LABEL_VALUE="$(docker inspect --format '{{index .Config.Labels "org.grand-challenge.api-method"}}' "$IMAGE_TAG")"
if [ "$LABEL_VALUE" != "invoke" ]; then
    echo "FAILED: image label org.grand-challenge.api-method is '$LABEL_VALUE', expected 'invoke'" >&2
    exit 1
fi

STAGE_IN="$(mktemp -d)"
STAGE_OUT="$(mktemp -d)"
chmod a+rwx "$STAGE_IN" "$STAGE_OUT"
cleanup() {
    docker logs "$CONTAINER" > "$OUTPUT_DIR/container.log" 2>&1 || true
    docker rm -f "$CONTAINER" >/dev/null 2>&1 || true
    # files written by the container's user: remove them from inside an image
    docker run --rm --user root --entrypoint /bin/sh -v "$STAGE_OUT:/output" "$IMAGE_TAG" -c "rm -rf /output/*" \\
        >/dev/null 2>&1 || true
    rm -rf "$STAGE_IN" "$STAGE_OUT"
}
mkdir -p "$OUTPUT_DIR"
trap cleanup EXIT

GPU_FLAGS=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    GPU_FLAGS=(--gpus all)
fi
chmod -R a+rX "$HERE/model"
docker run --detach --name "$CONTAINER" --network none ${GPU_FLAGS[@]+"${GPU_FLAGS[@]}"} \\
    --memory "$MEMORY" --memory-swap "$MEMORY" --shm-size 2g --pids-limit 256 \\
    -v "$HERE/model:/opt/ml/model:ro" -v "$STAGE_IN:/input:ro" -v "$STAGE_OUT:/output" --tmpfs /tmp \\
    "$IMAGE_TAG" >/dev/null

# http METHOD PATH TIMEOUT -> prints the status code (000 when nothing answered)
http() {
    docker exec "$CONTAINER" python -c '
import sys, urllib.request, urllib.error
req = urllib.request.Request("http://127.0.0.1:'"$PORT"'" + sys.argv[2], method=sys.argv[1],
                             data=b"" if sys.argv[1] == "POST" else None)
try:
    with urllib.request.urlopen(req, timeout=float(sys.argv[3])) as r: print(r.status)
except urllib.error.HTTPError as e: print(e.code); print(e.read().decode())
except Exception: print("000")
' "$1" "$2" "$3" | tail -n 5 || echo 000
}

for ((i = 1; i <= HEALTH_ATTEMPTS; i++)); do
    status="$(http GET /health 10 | head -n 1)"
    [ "$status" = "200" ] && break
    if [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" != "true" ]; then
        docker logs "$CONTAINER" >&2; echo "FAILED: the container exited before /health answered" >&2; exit 1
    fi
    echo "health attempt $i/$HEALTH_ATTEMPTS: $status; retrying in 5 s"
    sleep 5
done
[ "$status" = "200" ] || { docker logs "$CONTAINER" >&2; echo "FAILED: /health never answered 200" >&2; exit 1; }

n=0
for f in "$@"; do
    n=$((n + 1))
    name="$(basename "$f")"
    rm -rf "${STAGE_IN:?}"/* && mkdir -p "$STAGE_IN/images/$INPUT_SLUG"
    cp "$f" "$STAGE_IN/images/$INPUT_SLUG/"
    printf '[{"socket": {"slug": "%s", "relative_path": "images/%s"}, "image": {"name": "%s"}}]' \\
        "$INPUT_SLUG" "$INPUT_SLUG" "$name" > "$STAGE_IN/inputs.json"
    chmod -R a+rX "$STAGE_IN"
    docker exec --user root "$CONTAINER" /bin/sh -c "rm -rf /output/*"
    answer="$(http POST /invoke "$INVOKE_TIMEOUT")"
    if [ "$(echo "$answer" | head -n 1)" != "201" ]; then
        docker logs --tail 50 "$CONTAINER" >&2
        echo "FAILED: POST /invoke for $name answered: $answer (expected 201)" >&2
        exit 1
    fi
    docker exec --user root "$CONTAINER" /bin/sh -c "chmod -R a+rX /output"
    dest="$OUTPUT_DIR/case_$n"
    rm -rf "$dest" && mkdir -p "$dest" && cp -r "$STAGE_OUT/." "$dest/"
    docker exec "$CONTAINER" python -c '
import sys, numpy as np
from pathlib import Path
from nnunetv2_selma.volumes.images import read_image
inp = next(Path("/input/images/'"$INPUT_SLUG"'").iterdir())
a, ga = read_image(inp)
b, gb = read_image("/output/images/'"$OUTPUT_SLUG"'/output.mha")
problems = []
if a.shape != b.shape: problems.append(f"shape {b.shape} != input {a.shape}")
if b.dtype != np.int8: problems.append(f"dtype {b.dtype}, expected int8")
for k in ("spacing", "origin", "direction"):
    if not np.allclose(ga[k], gb[k]): problems.append(f"{k} {gb[k]} != input {ga[k]}")
if not set(np.unique(b).tolist()) <= {0, 1}: problems.append(f"values {np.unique(b)} not in {{0, 1}}")
print("'"$name"': output", b.shape, b.dtype, "foreground voxels", int((b > 0).sum()))
sys.exit("FAILED: " + "; ".join(problems) if problems else 0)
'
done
echo "OK: $n invocation(s) answered 201; outputs under $OUTPUT_DIR; upload model.tar.gz as the algorithm's Model"
"""

README_INVOKE = """\
# SELMA3D @@EDITION@@ submission build context (Grand Challenge invoke API)

Written by `nnUNetv2_selma_export_submission --edition @@EDITION@@`. Contents:

- `Dockerfile`: @@BASE_IMAGE@@ + the wheels of `wheelhouse/` (installed without network), label
  `org.grand-challenge.api-method="invoke"`, entry point `python -m nnunetv2_selma.submission.server`
  (an HTTP server on port @@PORT@@: `GET /health` 200 once the models are loaded, `POST /invoke`
  segments the provisioned case and answers 201). The weights are not in the image.
- `model/`: `models.json` (which model segments which input: structure prefix of the input file
  name; default `@@DEFAULT@@`) and `<model>/plans.json`, `dataset.json`, `fold_X/<checkpoint>`.
- `model.tar.gz`: `model/`'s contents, to upload as the algorithm's Model; Grand Challenge extracts it
  to `/opt/ml/model`.
- `wheelhouse/`: `requirements.txt` (pinned closure, torch from the base image) and the wheels.
  @@WHEEL_NOTE@@
- `test_run.sh INPUT_IMAGE [INPUT_IMAGE ...]`: build, check the label, start one container
  (`--network none`, `model/` at `/opt/ml/model`), poll `/health`, invoke once per image, check
  each output's shape, geometry and int8 values.

Input: `/input/images/@@INPUT_SLUG@@/<one image>.mha|.tif|.tiff`.
Output: `/output/images/@@OUTPUT_SLUG@@/output.mha` (int8 0/1, the input's geometry).

Save the image for upload: `docker save selma-submission-@@EDITION@@ | gzip -c > submission.tar.gz`;
upload `model.tar.gz` separately as the algorithm's Model.
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

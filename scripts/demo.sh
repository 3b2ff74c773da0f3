#!/usr/bin/env bash
# The main job: sets up ./.venv when missing, then runs the whole pipeline on generated
# SELMA3D-like data (synthesise -> convert -> ingest -> plan -> pretrain -> fine-tune ->
# predict -> whole-volume inference -> evaluate -> report). Output in ./selma_demo by default.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
exec nnUNetv2_selma_demo "$@"

#!/usr/bin/env bash
# Creates ./.venv with the project and its pinned dependencies when it is missing or stale.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (a no-op when up to date).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SELMA_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.selma-installed"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv (first run: nnU-Net and torch take a few minutes)"
  "$python" -m venv "$venv"
fi
# reinstall when pyproject.toml changed since the last install
if [ ! -f "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$here[test,zarr,atlas]"
  # register our trainers with nnU-Net for every later shell of this environment (a .pth file)
  "$venv/bin/nnUNetv2_selma_setup_trainers"
  touch "$stamp"
fi
export PATH="$venv/bin:$PATH"

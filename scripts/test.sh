#!/usr/bin/env bash
# The test command: sets up ./.venv when missing, then runs ruff and the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-2}" nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
ruff check nnunetv2_selma tests benchmarks
set +e
python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: that is a failure of this command, not a pass
[ "$rc" -eq 5 ] && echo "no test was collected" >&2
exit "$rc"

#!/bin/bash
# The one GPU device check of nnunetv2-selma: everything GPU-specific, timed, in one call.
#   bash ../shared/gpu/make_device_bundle.sh      # once: packs nnunetv2 & co. into .gpu/site.tar.xz
#   device call: carry [".gpu/site.tar.xz"], command "bash benchmarks/gpu_check.sh"
# Sections (each prints PASS/FAIL lines and writes JSON/PNGs under $OUT; a failing section does not
# stop the next):
#   1. pretraining, preset L, torch.compile + AMP: it/s, data wait, peak memory, loss; data-pipeline
#      throughput against network throughput (does the GPU wait?)
#   2. fine-tuning step per preset (cpu, M, L): AMP step time and peak memory; real nnUNetv2_train on
#      cuda with -pretrained_weights; GPU-saved checkpoints loading without a GPU; nnU-Net's DDP path
#      (run_ddp) with our trainer; nnUNetv2_predict on cuda
#   3. whole-volume block inference on cuda against stock nnUNetPredictor
#   3b. the semi-supervised trainers (pseudo-labels and restyled copies) through real nnUNetv2_train on cuda:
#      teacher in the checkpoint, --c resume, nnU-Net's DDP path, time against the plain trainer
#      (check_semi.py; runs on cpu with SEMI_CHECK_DEVICE=cpu)
#   4. the label-efficiency study's gpu profile (bench_ssl_benefit.py --profile gpu), reduced to fit;
#      a second call on a warm machine resumes it
set -uo pipefail
T0=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
mkdir -p /tmp/site && tar xJf .gpu/site.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD
W=/tmp/w; mkdir -p $W/raw $W/pre $W/res /tmp/bin
export nnUNet_raw=$W/raw nnUNet_preprocessed=$W/pre nnUNet_results=$W/res nnUNet_n_proc_DA=8 nnUNet_def_n_proc=8
export nnUNet_extTrainer=$PWD/nnunetv2_selma/nnunet_ext
# console scripts of the bundle's packages (the bundle is unpacked, not pip-installed)
# (guarded: nnU-Net's worker processes are spawned and re-import the main module)
mk() { printf '#!/usr/bin/env python3\nimport sys\nfrom %s import %s\nif __name__ == "__main__":\n    sys.exit(%s())\n' "$2" "$3" "$3" > /tmp/bin/$1; chmod +x /tmp/bin/$1; }
mk nnUNetv2_train nnunetv2.run.run_training run_training_entry
mk nnUNetv2_predict nnunetv2.inference.predict_from_raw_data predict_entry_point
mk nnUNetv2_selma_plan nnunetv2_selma.cli.plan main
mk nnUNetv2_selma_convert nnunetv2_selma.cli.convert main
mk nnUNetv2_selma_ingest nnunetv2_selma.cli.ingest main
mk nnUNetv2_selma_pretrain nnunetv2_selma.cli.pretrain main
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
echo "setup $(( $(date +%s) - T0 )) s"
# seconds each section may take (the device lends ~10 minutes a call); a section cut short still
# leaves what it wrote under $OUT
for spec in ${SECTIONS:-pretraining:150 integration:150 inference:60 semi:60 ssl_benefit:160}; do
  part=${spec%%:*}; limit=${spec##*:}
  t=$(date +%s)
  echo "=== section $part (limit $limit s)"
  timeout "$limit" python3 benchmarks/gpu/check_$part.py 2>&1 | tee "$OUT/check_$part.log"
  echo "=== section $part took $(( $(date +%s) - t )) s"
done
echo "total $(( $(date +%s) - T0 )) s"

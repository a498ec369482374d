#!/usr/bin/env bash
# The GPU evidence suite in one device call, from the repository root on the GPU machine:
#   bash benchmarks/gpu/run.sh [OUTPUT_FOLDER]        # default: $OUT/gpu on the device machine
# 1. installs the wheels carried in .whl/ (benchmarks/gpu/fetch_wheels.sh) offline into /tmp/site;
# 2. runs `flowblending-accel bench --suite gpu` under a hard time limit (SUITE_SECONDS, default 480): each
#    section is time-boxed and written when it ends, and the limit's SIGTERM still writes what was measured.
set -uo pipefail
output="${1:-${OUT:-benchmarks/results}/gpu}"
mkdir -p "$output"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)" || exit 1
timeout -k 30 "${SUITE_SECONDS:-480}" python3 -m flowblending_accel.cli bench --suite gpu --output "$output" \
  --overwrite 2>&1 | tee "$output/suite.log"
exit "${PIPESTATUS[0]}"

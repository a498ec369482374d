#!/usr/bin/env bash
# One part of the GPU evidence suite: one short device call, from the repository root on the GPU machine.
#   bash benchmarks/gpu/run.sh PART [--resume DIR ...]       PART: smoke, wan, compile, individual or ltx
# 1. installs the wheels carried in .whl/ (benchmarks/gpu/fetch_wheels.sh) offline into /tmp/site, and
#    checks that diffusers, torchao and the two pipelines import (their own warnings show here);
# 2. runs the part: it prints its estimated wall time, then runs each section in its own process with its
#    own time box, appending every measured row to $OUT/PART.jsonl (and its output to $OUT/PART.log) as it is
#    measured. The part's 240 s budget counts from this script's start, the install included.
# SUITE=rehearsal runs the same part on tiny presets on a CPU (what the tests do); OUT defaults to
# flowblending-suite/$SUITE.
set -uo pipefail
started=$(date +%s)
part="${1:?name a part: smoke, wan, compile, individual or ltx (see benchmarks/gpu/README.md)}"
shift
suite="${SUITE:-gpu}"
output="${OUT:-flowblending-suite/$suite}"
mkdir -p "$output"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
python3 -c "import torch, diffusers, torchao; from diffusers import WanPipeline, LTXPipeline
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'torchao', torchao.__version__)" \
  || exit 1
if [ "$suite" = gpu ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
fi
# The part stops itself within its budget (240 s on the GPU; 480 s in the rehearsal, which shares a busy CPU:
# plan.py); this outer limit, a minute more from the start, the install included, only catches a part runner
# that could not.
budget=240
[ "$suite" = gpu ] || budget=480
left=$((budget + 60 - ($(date +%s) - started)))
timeout -k 10 "$left" python3 -m flowblending_accel.cli bench --suite "$suite" --part "$part" --output "$output" \
  --started "$started" "$@"

#!/usr/bin/env bash
# Download, here (with network), the wheels the GPU suite needs beyond the GPU machine's own image (it has
# torch, transformers, safetensors, numpy, rich ... but no diffusers and no network), into .whl/ at the
# repository root. run.sh installs them there with pip --no-index. Python 3.12, x86-64 manylinux wheels.
#   bash benchmarks/gpu/fetch_wheels.sh          # about 10 MB; the device call carries .whl/
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
rm -f .whl/*.whl
# Pinned: the diffusers this project is tested with; torchao 0.18 needs torch >= 2.11 (the GPU image has
# 2.11); importlib_metadata < 9 needs nothing the image lacks (diffusers requires it).
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "diffusers==0.42.1" "torchao==0.18.0" "importlib_metadata==8.7.0"
du -ch .whl/*.whl | tail -1

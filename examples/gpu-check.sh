#!/usr/bin/env bash
# The GPU acceptance check (examples/gpu_check.py): one table of nami-2b sampling latency at
# 1024² and 2048² per attention backend, eager and compiled, beside the FLOP bound; backend
# agreement on a tiny converted release; no host sync inside a stage; nami-2b training steps
# (stage 3 and the 4:2:1 mix, checkpointing none and auto, compiled); a tiny model with a LoRA
# adapter at 64x128 in every mode; one nami-2b LoRA training step with its peak memory. About 8 minutes on one
# H100/H200; results also in $OUT/gpu-check.json (or ./gpu-check/).
#
# On a machine where `pip install -e .` worked, just run it. On a machine with no package index
# (torch present, diffusers missing), bring wheels in .whl/ first, built elsewhere with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata xformers
# and this script installs them into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec timeout 570 python3 examples/gpu_check.py --out "${OUT:-gpu-check}" "$@"

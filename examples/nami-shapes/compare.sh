#!/usr/bin/env bash
# Score an equal-wall-clock pair side by side (the README's NAMI vs flux-base table):
# shapes-GenEval per tag for both models, then sampling time per image for both modes at 64 px.
#   nami convert checkpoint runs/nami-shapes/checkpoints/step-00004000 --out runs/nami-46min
#   NAMI=runs/nami-46min FLUX=runs/flux-base-shapes/final bash examples/nami-shapes/compare.sh
set -euo pipefail
NAMI=${NAMI:?set NAMI to the NAMI model directory}
FLUX=${FLUX:?set FLUX to the flux-base model directory}
OUT=${OUT:-eval/compare}
IMAGES=${IMAGES:-2}

nami eval geneval --model "$NAMI" --out "$OUT/nami" --images-per-prompt "$IMAGES" --detector shapes
nami eval geneval --model "$FLUX" --out "$OUT/flux-base" --images-per-prompt "$IMAGES" --detector shapes
# Timing does not depend on the weights, so one interleaved run times both modes of this architecture:
# 10/10/10 NAMI steps against 30 flux-base steps, CFG 4, 20 text tokens, batches of 8 images.
nami bench latency --model "$NAMI" --modes flux-base,nami --resolutions 64 --steps 30 --cfg 4 \
  --text-tokens 20 --batch-size 8 --repeats 5 --device cpu --json "$OUT/latency.json"

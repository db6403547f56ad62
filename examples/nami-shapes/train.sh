#!/usr/bin/env bash
# Retrain the bundled nami-shapes model from scratch (CPU is fine; a GPU is much faster).
# 1. the shapes world: 60k scenes with captions, as pixels + MiniLM embeddings
# 2. Algorithm 1 with the paper's stage-ratio and LR phases, scaled to 12k steps
set -euo pipefail
DATA=${DATA:-data/shapes-60k}
RUN=${RUN:-runs/nami-shapes}

nami prepare-data shapes --n 60000 --seed 0 --out "$DATA" --stages 16,32,64 \
  --max-text-tokens 20 --shard-size 5000 --batch-size 256

nami train --data "$DATA" --out "$RUN" --config examples/nami-shapes/model.json --stages 16,32,64 \
  --steps 12000 --batch-size 64 \
  --ratio-schedule "0:4:2:1,5760:2:4:1,9600:1:2:4" --lr-schedule "0:5e-4,9600:2.5e-4" \
  --ema-decay 0.999 --save-every 250 --keep 4 --log-every 50 \
  --sample-steps 10,10,10 --sample-cfg 4 --seed 0 "$@"
# Interrupted or split into budgets (--time-budget MINUTES)? Run the same command with --resume latest.

#!/usr/bin/env bash
# Retrain the bundled nami-shapes model from scratch: the exact commands that trained it.
# 1. the shapes world: 60k scenes with captions, as pixels + MiniLM embeddings (about 2 minutes)
# 2. Algorithm 1 with the paper's stage-ratio and LR phases, scaled to 12k steps and capped at
#    100 minutes of training. bf16 autocast and --compile pay off on CPUs with AMX (Xeon 4th gen+)
#    and on GPUs; on other CPUs use --precision fp32 and drop --compile.
set -euo pipefail
DATA=${DATA:-data/shapes-60k}
RUN=${RUN:-runs/nami-shapes}

nami prepare-data shapes --n 60000 --seed 0 --out "$DATA" --stages 16,32,64 \
  --max-text-tokens 20 --shard-size 5000 --batch-size 256

TRAIN=(nami train --data "$DATA" --out "$RUN" --config examples/nami-shapes/model.json --stages 16,32,64
  --steps 12000 --batch-size 64 --precision bf16 --compile --lr-schedule "0:5e-4,9000:2.5e-4"
  --ema-decay 0.999 --save-every 250 --keep 4 --log-every 50
  --sample-steps 10,10,10 --sample-cfg 4 --seed 0)
"${TRAIN[@]}" --ratio-schedule "0:4:2:1,5000:2:4:1,8500:1:2:4" --time-budget 100 "$@"
# The shipped weights then trained 28 minutes more, resumed with the stage mix kept at 2:4:1:
"${TRAIN[@]}" --ratio-schedule "0:4:2:1,5000:2:4:1" --time-budget 28 --resume latest "$@"
# Interrupted, or want more? Run the same command with --resume latest (the budget counts per run),
# or start a new run from the shipped weights with --init nami_core/assets/nami-shapes.
# Then: python examples/nami-shapes/bundle.py "$RUN/final" nami_core/assets/nami-shapes

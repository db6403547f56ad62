#!/usr/bin/env bash
# The equal-compute baseline: the same model size and data, one full-resolution window with all blocks
# (paper Fig. 7 at small scale). Give it the same --time-budget as the NAMI run it is compared with.
set -euo pipefail
DATA=${DATA:-data/shapes-60k}
RUN=${RUN:-runs/flux-base-shapes}

nami train --data "$DATA" --out "$RUN" --config examples/nami-shapes/model.json --stages 16,32,64 \
  --mode flux-base --steps 12000 --batch-size 64 --lr-schedule "0:5e-4,9600:2.5e-4" \
  --ema-decay 0.999 --save-every 250 --keep 4 --log-every 50 \
  --sample-steps 30 --sample-cfg 4 --seed 0 "$@"

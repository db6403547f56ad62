#!/usr/bin/env bash
# The equal-compute baseline (paper Fig. 7 at small scale): the same model size, data and optimizer
# settings, one full-resolution window with all blocks at every step. Compare it with a NAMI run of
# the same --time-budget on the same machine (see the README's comparison table).
# The README's baseline ran BUDGET=46, then BUDGET=82 with --resume latest: 128 minutes, as NAMI's 100 + 28.
set -euo pipefail
DATA=${DATA:-data/shapes-60k}
RUN=${RUN:-runs/flux-base-shapes}
BUDGET=${BUDGET:-20}

nami train --data "$DATA" --out "$RUN" --config examples/nami-shapes/model.json --stages 16,32,64 \
  --mode flux-base --steps 12000 --batch-size 64 --dtype bf16 --compile \
  --lr-schedule "0:5e-4,9000:2.5e-4" \
  --ema-decay 0.999 --save-every 250 --keep 4 --log-every 50 \
  --sample-steps 30 --sample-cfg 4 --seed 0 --time-budget "$BUDGET" "$@"

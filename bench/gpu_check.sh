#!/usr/bin/env bash
# Every GPU figure the bench README asks for, as one prepared run for a machine with one CUDA GPU.
#
#   OUT=/path/to/results bash bench/gpu_check.sh [STEP...]   # default: image image-compile text train train4x
#   DEVICE=cpu PRESET=tiny bash bench/gpu_check.sh                                   # dry run on a CPU
#
# Each step has its own time limit (seconds, below), so a slow compile loses one step, not the whole run,
# and writes STEP.json and STEP.log under $OUT; summary.txt names the card, the versions and each step's
# exit status (124: it hit its limit). The default steps' limits add up to 9 minutes; train-compile (the
# compiled train step, minutes of inductor compilation) runs only when named. train4x runs only the
# checkpointing variant at 4x the train batch (256): its peak memory against the unchecked variant's at 64
# is the "4x the batch in the same memory" figure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-align-base}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(image image-compile text train train4x)
extra=()
train_batch=64
if [ "$DEVICE" = cpu ]; then
    extra=(--bf16 --compile --compile-backend eager --iters 1)
    train_batch=2
fi

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$OUT/summary.txt" 2>&1

run() {
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$PY" bench/bench.py --device "$DEVICE" --preset "$PRESET" "$@" "${extra[@]}" \
        --json "$OUT/$name.json" > "$OUT/$name.log" 2>&1
    echo "$name: exit $?" >> "$OUT/summary.txt"
}

for step in "${steps[@]}"; do
    case $step in
        image) run image 60 --groups image --no-compile ;;
        image-compile) run image-compile 200 --groups image --compile ;;
        text) run text 90 --groups text ;;
        train) run train 120 --groups train --no-compile --train-batch "$train_batch" ;;
        train4x) run train4x 70 --groups train --no-compile --train-batch $((4 * train_batch)) \
            --train-variants checkpointing ;;
        train-compile) run train-compile 240 --groups train --compile --train-batch "$train_batch" ;;
        *) echo "unknown step $step (image, image-compile, text, train, train4x, train-compile)" >&2; exit 2 ;;
    esac
done
cat "$OUT/summary.txt"

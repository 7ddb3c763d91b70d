#!/usr/bin/env bash
# Check dba-vqa on a GPU machine in under 8 minutes (each step has its own time limit):
#   1. the test suite, so the tests marked to need CUDA run too;
#   2. the attention benchmark in bf16 up to N=16384, full attention included;
#   3. a short training of a ViT-S/16 at 448 px (784 image tokens) with dba and with full attention,
#      printing samples/s and peak CUDA memory.
# Logs go to $OUT when it is set, else to runs/gpu_check. The exit status is non-zero when CUDA is
# missing or any step failed; the other steps still run.
# The ViT has random weights (pretrained: off) because GPU machines may have no hub access. Its
# accuracy means nothing, so the step measures speed and memory only.
set -uo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
    PYTHON=python3
fi
LOG_DIR=${OUT:-runs/gpu_check}
mkdir -p "$LOG_DIR"
export HF_HUB_OFFLINE=1

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: CUDA is not available to $PYTHON (torch.cuda.is_available() is False); run this script on a GPU machine" >&2
    exit 1
fi
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.get_device_name(0))' \
    | tee "$LOG_DIR/device.txt"
nvidia-smi >> "$LOG_DIR/device.txt" 2>&1 || true

failed=()
run_step() {
    # run_step NAME SECONDS COMMAND...: run with a time limit, log to $LOG_DIR/NAME.log, record failures.
    local name=$1 seconds=$2
    shift 2
    echo "== $name (limit ${seconds}s): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$seconds" "$@" > "$LOG_DIR/$name.log" 2>&1
    local status=$?
    tail -n 25 "$LOG_DIR/$name.log"
    echo "== $name: exit status $status after $((SECONDS - start))s"
    if [ "$status" -ne 0 ]; then
        failed+=("$name (exit status $status)")
    fi
}

# 1. Test suite, slow tests included.
run_step pytest 170 "$PYTHON" -m pytest -q -x -p no:cacheprovider tests

# 2. Attention benchmark: --device cuda runs bf16 autocast; full attention up to N=16384 too.
run_step bench_attention 110 "$PYTHON" scripts/bench_attention.py --device cuda \
    --lengths 1024 2048 4096 8192 16384 --max-full-length 16384 --repeats 5 \
    --json "$LOG_DIR/bench_attention.json" --plot "$LOG_DIR/bench_attention.png"

# 3. Short training at 448 px through the ablation harness: same data, seed and 40 steps for both.
# The run folders (checkpoints of a few hundred MB) stay outside $OUT; only the reports are copied.
ABLATION_DIR=runs/gpu_check/ablation_vit448
run_step train_vit448 150 "$PYTHON" scripts/ablate.py --config models/ablation_sort_of_clevr.yaml \
    model.image.name=vit_small_patch16_224 model.image.pretrained=off model.image.freeze_blocks=0 \
    model.image.lr_mult=1.0 model.image.feature_stage=-1 \
    model.fusion.dim=256 model.fusion.num_heads=8 model.fusion.depth=2 \
    data.batch_size=8 data.eval_batch_size=16 train.max_steps=40 train.device=cuda \
    'ablation.backends=[dba,full]' 'ablation.dba_variants=[]' 'ablation.image_sizes=[448]' 'ablation.seeds=[0]' \
    ablation.backend_options.dba.num_latents=32 ablation.backend_options.dba.reduced_dim=64 \
    ablation.sort_of_clevr.train_images=160 ablation.sort_of_clevr.val_images=16 ablation.sort_of_clevr.test_images=32 \
    ablation.speed_rounds=10 ablation.speed_warmup_rounds=2 "ablation.output_dir=$ABLATION_DIR"

if [ -f "$ABLATION_DIR/results.md" ]; then
    mkdir -p "$LOG_DIR/ablation_vit448"
    cp "$ABLATION_DIR"/results.* "$ABLATION_DIR"/*.png "$LOG_DIR/ablation_vit448/"
    echo "== samples/s and peak memory (ViT-S/16, 448 px):"
    sed -n '/## Accuracy and cost/,/## Accuracy per question family/p' "$ABLATION_DIR/results.md"
fi

if [ "${#failed[@]}" -ne 0 ]; then
    echo "failed steps: ${failed[*]}" >&2
    exit 1
fi
echo "all GPU checks passed; logs in $LOG_DIR"

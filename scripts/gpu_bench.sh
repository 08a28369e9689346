#!/usr/bin/env bash
# The GPU measurements of docs/performance.md in one command, for a machine that has PyTorch
# (for the eager reference) but need not have Rust: the `corenet` binary is built elsewhere with
# `CORENET_CUDA=1 scripts/setup.sh && cargo build --release -p corenet-cli --features nccl`
# (`nccl` implies `cuda`)
# and copied along with the repository.
#
#   scripts/gpu_bench.sh [compare|kernels|bench3b|smoke|all]     (default: all)
#
# compare  corenet bench against scripts/bench_pytorch_reference.py, interleaved, per size in
#          GPU_BENCH_SIZES ("MODEL:MICRO_BATCH ..."), bf16, T=GPU_BENCH_SEQ
# kernels  corenet bench of the first size with the other RMSNorm and KV-sharing kernels
#          (--rms-norm native, --gqa enable-gqa), to decide the CUDA defaults
# bench3b  corenet bench of OpenELM-3B with activation checkpointing (the reference has none)
# smoke    a short OpenELM-3B training run from recipes/openelm-3B.yaml on the sample shards:
#          stop with a checkpoint half-way, resume, finish; fails unless every step is logged
#
# Environment (defaults in brackets):
#   CORENET_BIN [target/release/corenet]   PYTHON [python3, must import torch]
#   GPU_BENCH_OUT [docs/bench/<date>-<gpu>] GPU_BENCH_DEVICE [cuda]   GPU_BENCH_REPS [3]
#   GPU_BENCH_SIZES ["OpenELM-270M:8 OpenELM-450M:8 OpenELM-1_1B:4"]   GPU_BENCH_SEQ [2048]
#   GPU_BENCH_STEPS [20]   GPU_BENCH_WARMUP [5]   GPU_BENCH_SPLIT [5] (compare, kernels)
#   GPU_BENCH_3B_BATCH [4]   GPU_BENCH_SAMPLE [data/sample]
#   GPU_BENCH_3B_SETS, GPU_BENCH_SMOKE_SETS: extra `--set` arguments for bench3b and the smoke
#   run (a CPU rehearsal, tests/gpu_bench_rehearsal.rs, shrinks the model with them);
#   GPU_BENCH_SMOKE_STEPS [12]
# Every report lands in GPU_BENCH_OUT as JSON (device, torch version, commit, command, tokens/s,
# MFU, peak memory) next to env.txt (nvidia-smi, driver) and the smoke run's metrics.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WHAT="${1:-all}"
BIN="${CORENET_BIN:-target/release/corenet}"
PYTHON="${PYTHON:-python3}"
DEVICE="${GPU_BENCH_DEVICE:-cuda}"
REPS="${GPU_BENCH_REPS:-3}"
SIZES="${GPU_BENCH_SIZES:-OpenELM-270M:8 OpenELM-450M:8 OpenELM-1_1B:4}"
SEQ="${GPU_BENCH_SEQ:-2048}"
STEPS="${GPU_BENCH_STEPS:-20}"
WARMUP="${GPU_BENCH_WARMUP:-5}"
SPLIT="${GPU_BENCH_SPLIT:-5}"
BATCH_3B="${GPU_BENCH_3B_BATCH:-4}"
SMOKE_STEPS="${GPU_BENCH_SMOKE_STEPS:-12}"
SAMPLE="${GPU_BENCH_SAMPLE:-data/sample}"
read -r -a SETS_3B <<<"${GPU_BENCH_3B_SETS:-}"
read -r -a SMOKE_SETS <<<"${GPU_BENCH_SMOKE_SETS:-}"

log() { echo "[gpu_bench] $*" >&2; }

if [[ ! -x "$BIN" ]]; then
    log "no corenet binary at $BIN (set CORENET_BIN)"
    exit 1
fi
# The binary's rpath names the build machine's torch; here libtorch comes from the local wheel.
if TORCH_LIB="$("$PYTHON" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"; then
    export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
    log "$PYTHON cannot import torch: the PyTorch reference needs it"
    exit 1
fi

gpu_slug() {
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '-' | tr 'A-Z' 'a-z'
    else
        echo "$DEVICE"
    fi
}
OUT="${GPU_BENCH_OUT:-docs/bench/$(date +%F)-$(gpu_slug)}"
mkdir -p "$OUT"

write_env() {
    {
        echo "date: $(date -u +%FT%TZ)"
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
        echo "binary: $(basename "$BIN"), sha256 $(sha256sum "$BIN" | cut -d' ' -f1)"
        echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
        if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi || true; fi
    } >"$OUT/env.txt" 2>&1
}

compare() {
    for size in $SIZES; do
        local model="${size%%:*}" batch="${size##*:}"
        log "compare $model B=$batch T=$SEQ"
        "$PYTHON" scripts/bench_compare.py --reps "$REPS" --rust-bin "$BIN" --python "$PYTHON" \
            --label "$model-b$batch" --out "$OUT/$model-bf16-b$batch" -- \
            --model "$model" --seq "$SEQ" --micro-batch "$batch" --precision bf16 \
            --device "$DEVICE" --steps "$STEPS" --warmup "$WARMUP" --split-steps "$SPLIT"
    done
}

# Rewrites a report's recorded command so it names no directory of this machine.
portable() {
    "$PYTHON" -c 'import sys; sys.path.insert(0, "scripts"); from bench_compare import make_portable; make_portable(sys.argv[1])' \
        "$1" >/dev/null
}

kernels() {
    local first="${SIZES%% *}"
    local model="${first%%:*}" batch="${first##*:}"
    mkdir -p "$OUT/kernels"
    for variant in "native auto" "composite enable-gqa" "native enable-gqa"; do
        local norm="${variant% *}" gqa="${variant#* }"
        local json="$OUT/kernels/$model-bf16-b$batch-$norm-$gqa.json"
        log "kernels $model B=$batch rms_norm=$norm gqa=$gqa"
        "$BIN" bench --model "$model" --seq "$SEQ" --micro-batch "$batch" --precision bf16 \
            --device "$DEVICE" --steps "$STEPS" --warmup "$WARMUP" --split-steps "$SPLIT" \
            --rms-norm "$norm" --gqa "$gqa" --json "$json"
        portable "$json"
    done
}

bench3b() {
    log "OpenELM-3B B=$BATCH_3B T=$SEQ with activation checkpointing"
    "$BIN" bench --model OpenELM-3B --seq "$SEQ" --micro-batch "$BATCH_3B" --precision bf16 \
        --device "$DEVICE" --activation-checkpointing --steps "$STEPS" --warmup 3 --split-steps 3 \
        --json "$OUT/OpenELM-3B-bf16-b$BATCH_3B-ckpt.json" "${SETS_3B[@]}"
    portable "$OUT/OpenELM-3B-bf16-b$BATCH_3B-ckpt.json"
}

smoke() {
    if [[ ! -f "$SAMPLE/sources.yaml" || ! -f "$SAMPLE/tokenizer.json" ]]; then
        log "$SAMPLE is missing: build it with scripts/demo.sh (or carry it to this machine)"
        exit 1
    fi
    local run="$OUT/smoke-3b" half=$((SMOKE_STEPS / 2))
    rm -rf "$run"
    local sets=(
        --set "run.dir=$run" --set "trainer.device=$DEVICE"
        --set "trainer.steps=$SMOKE_STEPS" --set trainer.global_batch=8
        --set trainer.micro_batch=4 --set "checkpoint.interval=$half"
        --set logging.interval=1 --set logging.progress=false
        --set schedule.warmup_iterations=2
        --set "data.tokenizer=$SAMPLE/tokenizer.json" --set data.workers=2
        --set "data.sources=[{name: refinedweb, paths: ['$SAMPLE/refinedweb/*.parquet'], text_key: content, weight: 665}, {name: dolma_books, paths: ['$SAMPLE/dolma/books/*.json.gz'], text_key: text, weight: 580}]"
        "${SMOKE_SETS[@]}"
    )
    log "3B smoke: $half steps, stop with a checkpoint"
    "$BIN" train recipes/openelm-3B.yaml "${sets[@]}" --resume none --stop-at "$half"
    log "3B smoke: resume and finish at $SMOKE_STEPS"
    "$BIN" train recipes/openelm-3B.yaml "${sets[@]}" --resume auto
    local lines
    lines=$(wc -l <"$run/metrics.jsonl")
    if [[ "$lines" -ne "$SMOKE_STEPS" ]]; then
        log "expected $SMOKE_STEPS metric lines in $run/metrics.jsonl, found $lines"
        exit 1
    fi
    rm -rf "$run/checkpoints"  # GBs of weights; the metrics and recipe stay as the record
    log "3B smoke ok: $run/metrics.jsonl"
}

write_env
case "$WHAT" in
    compare) compare ;;
    kernels) kernels ;;
    bench3b) bench3b ;;
    smoke) smoke ;;
    all) compare; kernels; bench3b; smoke ;;
    *) log "unknown part '$WHAT' (compare|kernels|bench3b|smoke|all)"; exit 2 ;;
esac
log "reports in $OUT"

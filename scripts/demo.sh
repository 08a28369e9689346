#!/usr/bin/env bash
# Sets up whatever is missing, then runs the main job: a tiny OpenELM-shaped pre-training run
# (recipes/tiny.yaml) over sample shards in all four formats, built from the public-domain corpus
# with a BPE tokenizer trained on it. Where set-up installed the CUDA libtorch (a machine with an
# NVIDIA driver, or CORENET_CUDA=1) the binary is built with --features cuda (and nccl), and with
# a driver present the job runs on the GPU (--set trainer.device=cuda); elsewhere on the CPU.
# Extra arguments go to `corenet train` after those (e.g. --set trainer.steps=100, or
# --set trainer.device=cpu).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
LOG_TAG="demo"
bash scripts/setup.sh
read -ra FEATURES <<<"$(cargo_gpu_features)"
read -ra DEVICE <<<"$(main_job_device_args)"
if ((${#FEATURES[@]})); then log "the CUDA libtorch is installed: building with ${FEATURES[*]}"; fi
if ((${#DEVICE[@]})); then log "an NVIDIA driver is present: the main job runs on the GPU (${DEVICE[*]})"; fi
cargo build --release -p corenet-cli "${FEATURES[@]}"
CORENET=./target/release/corenet
CORPUS=.cache/corpus/shakespeare
if [[ ! -f data/sample/sources.yaml ]]; then
    "$CORENET" data sample --corpus "$CORPUS" --out data/sample
fi
if [[ ! -f data/sample/tokenizer.json ]]; then
    "$CORENET" tokenizer train --files "$CORPUS/**/*.txt" --vocab-size 2000 --out data/sample/tokenizer.json
fi
RUN_DIR="runs/tiny-$(date +%Y%m%d-%H%M%S)"
"$CORENET" train recipes/tiny.yaml --set "run.dir=$RUN_DIR" "${DEVICE[@]}" "$@"
echo "metrics: $RUN_DIR/metrics.jsonl, TensorBoard: $RUN_DIR/tb, checkpoints: $RUN_DIR/checkpoints"

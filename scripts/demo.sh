#!/usr/bin/env bash
# Sets up whatever is missing, then runs the main job: a tiny OpenELM-shaped pre-training run on
# CPU (recipes/tiny.yaml) over sample shards in all four formats, built from the public-domain
# corpus with a BPE tokenizer trained on it. Extra arguments go to `corenet train`
# (e.g. --set trainer.steps=100).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release -p corenet-cli
CORENET=./target/release/corenet
CORPUS=.cache/corpus/shakespeare
if [[ ! -f data/sample/sources.yaml ]]; then
    "$CORENET" data sample --corpus "$CORPUS" --out data/sample
fi
if [[ ! -f data/sample/tokenizer.json ]]; then
    "$CORENET" tokenizer train --files "$CORPUS/**/*.txt" --vocab-size 2000 --out data/sample/tokenizer.json
fi
RUN_DIR="runs/tiny-$(date +%Y%m%d-%H%M%S)"
"$CORENET" train recipes/tiny.yaml --set "run.dir=$RUN_DIR" "$@"
echo "metrics: $RUN_DIR/metrics.jsonl, TensorBoard: $RUN_DIR/tb, checkpoints: $RUN_DIR/checkpoints"

#!/usr/bin/env bash
# Sets up whatever is missing, then runs the main job.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --release -p corenet-cli
./target/release/corenet model summary --model OpenELM-270M "$@"

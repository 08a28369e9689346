#!/usr/bin/env bash
# Sets up whatever is missing, then builds everything and runs the whole test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace "$@"

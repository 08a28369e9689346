include!("../build/libtorch.rs");

fn main() {
    libtorch_link();
    build_shim();
}

/// Compiles `csrc/shim.cpp` (c10d process groups, `_fused_adamw_`, `_foreach_norm`) against the
/// libtorch headers torch-sys found, plus the Gloo headers from `GLOO_INCLUDE` (the pip wheel has
/// none). Links nothing extra: c10d and Gloo live in libtorch_cpu.so (never `-lgloo`: two Gloo
/// copies would clash). docs/toolchain.md says how the headers were found.
///
/// With the `nccl` feature (or `CORENET_NCCL=1`) ProcessGroupNCCL is compiled in too; that
/// needs the CUDA headers of the full torch install (`nvidia/cu13/include`,
/// `nvidia/nccl/include`), including `crt/host_config.h` and `nv/target` from the
/// `nvidia-cuda-crt` and `nvidia-cuda-cccl` 13.0.* pip packages (setup.sh installs them; they
/// land in `nvidia/cu13/include`). Headers kept elsewhere can be added, ':'-separated, in
/// `CUDA_EXTRA_INCLUDES`. It links libc10_cuda, which nothing else pulls in.
fn build_shim() {
    const SRC: &str = "csrc/shim.cpp";
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=CORENET_NCCL");
    println!("cargo:rerun-if-env-changed=CUDA_EXTRA_INCLUDES");

    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_else(|_| {
        panic!("DEP_TCH_LIBTORCH_LIB is not set, so the c10d shim cannot find the libtorch headers: run scripts/setup.sh")
    });
    let torch = Path::new(&lib).join("..");
    let torch_include = torch.join("include");
    let gloo = std::env::var("GLOO_INCLUDE").unwrap_or_else(|_| "/usr/include".into());
    let gloo_header = Path::new(&gloo).join("gloo/algorithm.h");
    if !gloo_header.exists() {
        panic!(
            "the Gloo headers are missing ({} does not exist; GLOO_INCLUDE={gloo}): \
             run scripts/setup.sh, which unpacks libgloo-dev's headers into .cache/gloo",
            gloo_header.display()
        );
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .file(SRC)
        .include(&torch_include)
        .include(torch_include.join("torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("GLOG_USE_GLOG_EXPORT", None)
        .define("USE_C10D_GLOO", None)
        .define("USE_DISTRIBUTED", None)
        // -Wextra floods with -Wunused-parameter from the torch headers.
        .warnings(false)
        .flag("-Wall");

    let nccl = std::env::var_os("CARGO_FEATURE_NCCL").is_some()
        || std::env::var("CORENET_NCCL").is_ok_and(|v| v == "1");
    if nccl {
        let nvidia = torch.join("../nvidia");
        for dir in ["cu13/include", "nccl/include"] {
            let dir = nvidia.join(dir);
            if !dir.exists() {
                panic!(
                    "NCCL shim: {} is missing: it comes with the full CUDA torch install \
                     (`CORENET_CUDA=1 scripts/setup.sh`)",
                    dir.display()
                );
            }
            build.include(dir);
        }
        if let Ok(extra) = std::env::var("CUDA_EXTRA_INCLUDES") {
            for dir in extra.split(':').filter(|d| !d.is_empty()) {
                build.include(dir);
            }
        }
        // c10::cuda::set_device and friends live in libc10_cuda, which nothing else links.
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        build
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            // c10/cuda/CUDAEvent.h uses hardware_destructive_interference_size.
            .flag("-Wno-interference-size");
    }

    build.compile("corenet_shim");
}

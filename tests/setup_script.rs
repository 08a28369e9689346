//! scripts/setup.sh ends with a message saying what to do, and a non-zero exit, when python3, its
//! venv module, the package index or apt-get (for the Gloo headers) is missing; scripts/lib.sh
//! builds the CUDA binary only where the CUDA libtorch is installed and puts the main job on the
//! GPU only where a driver is present too.
//!
//! Each case runs a copy of scripts/ in a temporary checkout with a PATH of its own (links to the
//! few tools the scripts use, plus stand-ins for cargo, python3 and nvidia-smi), so the real
//! checkout is never touched and nothing goes to the network. Each takes seconds.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use corenet_e2e::workspace_root;

/// What the scripts call, besides the programs each case provides or leaves out.
const TOOLS: &[&str] = &[
    "bash", "env", "dirname", "mkdir", "ln", "ls", "head", "cat", "rm", "readlink", "tar", "mv",
    "grep", "sed", "tail", "mktemp", "find", "cut",
];

/// `name` on the PATH this test runs with.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn touch(path: &Path) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    fs::write(path, "").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A temporary checkout holding only scripts/, and a bin/ folder that is the whole PATH.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = Sandbox { dir };
        let scripts = sandbox.root().join("scripts");
        fs::create_dir_all(&scripts).expect("mkdir scripts");
        for name in ["setup.sh", "lib.sh"] {
            let from = workspace_root().join("scripts").join(name);
            fs::copy(&from, scripts.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
        fs::create_dir_all(sandbox.bin()).expect("mkdir bin");
        fs::create_dir_all(sandbox.dir.path().join("home")).expect("mkdir home");
        for tool in TOOLS {
            if let Some(path) = which(tool) {
                symlink(&path, sandbox.bin().join(tool)).expect("symlink tool");
            }
        }
        assert!(sandbox.bin().join("bash").exists(), "no bash on PATH");
        // ensure_rust only asks whether cargo is there.
        sandbox.fake("cargo", "exit 0");
        sandbox
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// A stand-in program `name` on the sandbox's PATH running the shell lines `body`.
    fn fake(&self, name: &str, body: &str) {
        write_executable(&self.bin().join(name), &format!("#!/bin/sh\n{body}\n"));
    }

    fn remove(&self, name: &str) {
        fs::remove_file(self.bin().join(name)).expect("remove from bin");
    }

    /// The real interpreter as `python3` (pyenv and the like put a shim on PATH, which needs
    /// more of PATH than the sandbox has). None when this machine has no python3.
    fn link_real_python(&self) -> Option<()> {
        let out = Command::new(which("python3")?)
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()?;
        let exe = String::from_utf8(out.stdout).ok()?;
        symlink(exe.trim(), self.bin().join("python3")).expect("symlink python3");
        Some(())
    }

    /// bash in the sandbox checkout with nothing of this process's environment but `env`.
    fn bash(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(self.bin().join("bash"));
        command
            .args(args)
            .current_dir(self.root())
            .env_clear()
            .env("PATH", self.bin())
            .env("HOME", self.dir.path().join("home"))
            // No pip.conf of this machine, and a refused connection fails at once.
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env("PIP_RETRIES", "0")
            .env("PIP_DEFAULT_TIMEOUT", "5");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("run bash")
    }

    fn setup(&self, env: &[(&str, &str)]) -> (bool, String) {
        let out = self.bash(&["scripts/setup.sh"], env);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What the sandbox checkout holds besides scripts/.
    fn created(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root())
            .expect("read root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name != "scripts")
            .collect();
        names.sort();
        names
    }

    /// Gloo headers in a folder of their own, for cases that must get past that step.
    fn fake_gloo(&self) -> String {
        let include = self.dir.path().join("gloo-include");
        touch(&include.join("gloo/algorithm.h"));
        include.to_string_lossy().into_owned()
    }
}

/// The checkout holds only scripts/: no venv, no cache.
fn assert_nothing_created(sandbox: &Sandbox) {
    let created = sandbox.created();
    assert!(created.is_empty(), "created {created:?}");
}

#[test]
fn without_python3_setup_names_the_package_and_creates_nothing() {
    let sandbox = Sandbox::new();
    let (ok, stderr) = sandbox.setup(&[]);
    assert!(!ok, "setup.sh succeeded without python3:\n{stderr}");
    assert!(stderr.contains("python3 not found"), "{stderr}");
    assert!(
        stderr.contains("python3-venv") && stderr.contains("PYTHON="),
        "{stderr}"
    );
    assert_nothing_created(&sandbox);
}

#[test]
fn without_the_venv_module_setup_names_python3_venv() {
    let sandbox = Sandbox::new();
    // Debian's python3 without python3-venv: `import ensurepip` fails.
    sandbox.fake(
        "python3",
        "echo \"ModuleNotFoundError: No module named 'ensurepip'\" >&2; exit 1",
    );
    let (ok, stderr) = sandbox.setup(&[]);
    assert!(!ok, "setup.sh succeeded without venv:\n{stderr}");
    assert!(
        stderr.contains("cannot create a virtualenv") && stderr.contains("python3-venv"),
        "{stderr}"
    );
    assert_nothing_created(&sandbox);
}

#[test]
fn offline_setup_says_it_needs_the_registries_and_the_ways_around() {
    let sandbox = Sandbox::new();
    if sandbox.link_real_python().is_none() {
        eprintln!("skipped: no python3 on this machine");
        return;
    }
    let gloo = sandbox.fake_gloo();
    // Port 9 (discard) on the loopback: the connection is refused at once.
    let (ok, stderr) = sandbox.setup(&[
        ("GLOO_INCLUDE", gloo.as_str()),
        ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
    ]);
    assert!(!ok, "setup.sh succeeded offline:\n{stderr}");
    assert!(
        stderr.contains("pip could not reach its package index (http://127.0.0.1:9/simple)"),
        "{stderr}"
    );
    for hint in ["PIP_INDEX_URL", "LIBTORCH=", "Using an existing libtorch"] {
        assert!(stderr.contains(hint), "no {hint}:\n{stderr}");
    }
    // The venv came first; no torch, so no link to it.
    assert!(!sandbox.root().join(".venv/torch").exists(), "{stderr}");
}

#[test]
fn without_apt_get_setup_says_where_the_gloo_headers_go() {
    if Path::new("/usr/include/gloo/algorithm.h").exists() {
        eprintln!("skipped: this machine has Gloo's headers in /usr/include, which setup uses");
        return;
    }
    let sandbox = Sandbox::new();
    // Passes the venv check; nothing else runs python before the Gloo step.
    sandbox.fake("python3", "exit 0");
    let (ok, stderr) = sandbox.setup(&[]);
    assert!(!ok, "setup.sh succeeded without Gloo headers:\n{stderr}");
    for hint in [
        "no apt-get",
        "libgloo-dev",
        "dpkg-deb -x libgloo-dev_*.deb .cache/gloo",
        ".cache/gloo/usr/include/gloo/algorithm.h",
        "GLOO_INCLUDE",
    ] {
        assert!(stderr.contains(hint), "no {hint}:\n{stderr}");
    }
    // It stops before creating the venv or downloading anything.
    assert_nothing_created(&sandbox);
}

#[test]
fn an_existing_libtorch_of_another_version_is_refused() {
    let sandbox = Sandbox::new();
    sandbox.fake("python3", "exit 0");
    let torch = sandbox.dir.path().join("libtorch");
    touch(&torch.join("lib/libtorch_cpu.so"));
    fs::create_dir_all(torch.join("include/torch")).expect("mkdir include");
    fs::write(torch.join("build-version"), "2.10.0+cpu\n").expect("build-version");
    let torch = torch.to_string_lossy().into_owned();
    let (ok, stderr) = sandbox.setup(&[("LIBTORCH", torch.as_str())]);
    assert!(!ok, "setup.sh took libtorch 2.10:\n{stderr}");
    assert!(
        stderr.contains("is libtorch 2.10.0+cpu, but tch 0.24 binds 2.11.0")
            && stderr.contains("LIBTORCH_BYPASS_VERSION_CHECK"),
        "{stderr}"
    );
    assert_nothing_created(&sandbox);
}

/// `cargo_gpu_features` and `main_job_device_args` of scripts/lib.sh, as demo.sh sees them.
fn gpu_choice(sandbox: &Sandbox) -> (String, String) {
    let out = sandbox.bash(
        &[
            "-c",
            "source scripts/lib.sh && echo \"$(cargo_gpu_features)\" && echo \"$(main_job_device_args)\"",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines().map(str::to_owned);
    let features = lines.next().unwrap_or_default();
    let device = lines.next().unwrap_or_default();
    (features, device)
}

#[test]
fn the_cuda_build_and_the_gpu_follow_the_install_and_the_driver() {
    let sandbox = Sandbox::new();
    // A venv laid out as pip lays out the wheel; .venv/torch links to its torch/ as setup does.
    let site = sandbox.root().join(".venv/lib/python3/site-packages");
    fs::create_dir_all(site.join("torch/lib")).expect("mkdir torch");
    symlink(site.join("torch"), sandbox.root().join(".venv/torch")).expect("link torch");
    let nvidia = site.join("nvidia");
    let none = (String::new(), String::new());
    let gpu = "--set trainer.device=cuda".to_string();

    assert_eq!(gpu_choice(&sandbox), none, "CPU install, no driver");
    sandbox.fake("nvidia-smi", "echo 'GPU 0: Fake GPU (UUID: GPU-0)'");
    assert_eq!(gpu_choice(&sandbox), none, "CPU install, with a driver");

    touch(&nvidia.join("cu13/lib/libcublas.so.13"));
    assert_eq!(
        gpu_choice(&sandbox),
        ("--features cuda".to_string(), gpu.clone()),
        "CUDA install, with a driver"
    );

    fs::create_dir_all(nvidia.join("nccl/include")).expect("mkdir nccl");
    touch(&nvidia.join("cu13/include/crt/host_config.h"));
    touch(&nvidia.join("cu13/include/nv/target"));
    assert_eq!(
        gpu_choice(&sandbox),
        ("--features cuda,nccl".to_string(), gpu),
        "CUDA install with NCCL headers, with a driver"
    );

    // nvidia-smi without a working driver lists nothing and fails.
    sandbox.fake("nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9");
    assert_eq!(
        gpu_choice(&sandbox),
        ("--features cuda,nccl".to_string(), String::new()),
        "CUDA install, broken driver"
    );
    sandbox.remove("nvidia-smi");
    assert_eq!(
        gpu_choice(&sandbox),
        ("--features cuda,nccl".to_string(), String::new()),
        "CUDA install, no driver (CORENET_CUDA=1 on a build machine)"
    );
}

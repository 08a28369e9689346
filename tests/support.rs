//! Helpers for the end-to-end tests: locating (or building) the `corenet` binary.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `corenet` binary of this build profile, built on demand if the test run did not.
pub fn corenet_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/corenet
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("corenet");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "corenet-cli"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building corenet failed");
    }
    bin
}

/// Runs `corenet ARGS…` and returns its output.
pub fn corenet(args: &[&str]) -> Output {
    Command::new(corenet_bin())
        .args(args)
        .output()
        .expect("run corenet")
}

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

/// Runs corenet in `dir` and returns its stdout; a failure is an error with its stderr.
pub fn corenet_ok(dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(corenet_bin())
        .current_dir(dir)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "corenet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Trains a BPE tokenizer with `corenet tokenizer train` on `corpus.txt` in `dir`, written to
/// `dir/tok/tokenizer.json`.
pub fn tokenizer_from_corpus(dir: &std::path::Path, vocab: usize) -> anyhow::Result<()> {
    let vocab = vocab.to_string();
    let args = [
        "tokenizer",
        "train",
        "--files",
        "corpus.txt",
        "--vocab-size",
        &vocab,
    ];
    corenet_ok(dir, &[&args[..], &["--out", "tok/tokenizer.json"]].concat())?;
    Ok(())
}

/// The `model:` section of the tiny 2-layer, 64-wide OpenELM the CLI tests train, for
/// `vocab` ids and a `context`-token window.
pub fn tiny_model_yaml(vocab: usize, context: usize) -> String {
    format!(
        "model:
  vocab_size: {vocab}
  max_context_length: {context}
  num_transformer_layers: 2
  model_dim: 64
  head_dim: 16
  qkv_multipliers: [0.5, 1.0]
  num_gqa_groups: 2
  ffn_multipliers: [0.5, 2.0]
  ffn_dim_divisor: 16
  normalize_qk_projections: true
  share_input_output_layers: true
"
    )
}

/// The workspace root (recipes/, .cache/ live here).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the sample shards and a small tokenizer under `dir/data/sample`, as scripts/demo.sh
/// does, from the corpus scripts/setup.sh fetched.
pub fn build_sample_data(dir: &std::path::Path, vocab: usize) {
    let corpus = workspace_root().join(".cache/corpus/shakespeare");
    assert!(
        corpus.is_dir(),
        "{} is missing: run scripts/setup.sh",
        corpus.display()
    );
    let out = dir.join("data/sample");
    let run = |args: &[&str]| {
        let o = Command::new(corenet_bin())
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run corenet");
        assert!(
            o.status.success(),
            "corenet {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&[
        "data",
        "sample",
        "--corpus",
        &corpus.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]);
    let files = format!("{}/**/*.txt", corpus.display());
    let tokenizer = out.join("tokenizer.json");
    run(&[
        "tokenizer",
        "train",
        "--files",
        &files,
        "--vocab-size",
        &vocab.to_string(),
        "--out",
        &tokenizer.to_string_lossy(),
    ]);
}

/// A program from the reference environment (`.venv-ref/bin/NAME`), or None when that
/// environment was not set up — which fails the test instead under CORENET_REQUIRE_REFERENCE,
/// so CI cannot pass by skipping.
pub fn reference_tool(name: &str) -> Option<PathBuf> {
    let path = workspace_root().join(".venv-ref/bin").join(name);
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
        "{} is missing, and CORENET_REQUIRE_REFERENCE is set",
        path.display()
    );
    eprintln!("skipped: no {name} (run scripts/setup.sh --reference)");
    None
}

/// The reference venv's python (`.venv-ref`) when it imports `modules`; None (the caller skips)
/// otherwise, unless CORENET_REQUIRE_REFERENCE makes the absence a failure.
pub fn reference_python_with(modules: &str) -> Option<PathBuf> {
    let python = workspace_root().join(".venv-ref/bin/python");
    let ok = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
        "no .venv-ref with {modules}, and CORENET_REQUIRE_REFERENCE is set (scripts/setup.sh --reference)"
    );
    eprintln!("skipped: no .venv-ref with {modules} (scripts/setup.sh --reference)");
    None
}

/// The JSON lines of a run's `metrics.jsonl` (none while it does not exist yet).
pub fn metrics(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until the run writing `metrics_path` has logged `step`, then kills it with SIGKILL;
/// fails when it ends first or never gets there.
pub fn kill_after_step(
    child: &mut std::process::Child,
    metrics_path: &std::path::Path,
    step: u64,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    while !metrics(metrics_path)
        .iter()
        .any(|m| m["step"].as_u64() >= Some(step))
    {
        anyhow::ensure!(child.try_wait()?.is_none(), "the run ended before the kill");
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "no step {step}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    anyhow::ensure!(child.try_wait()?.is_none(), "the run ended before the kill");
    child.kill()?;
    child.wait()?;
    Ok(())
}

/// The step a resumed run started from, read from its `steps N..M` line.
pub fn resumed_from(stdout: &str) -> Option<u64> {
    stdout
        .split("steps ")
        .nth(1)
        .and_then(|s| s.split("..").next())
        .and_then(|s| s.parse().ok())
}

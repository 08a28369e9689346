//! `corenet plot` as the real binary: a directory without metrics is refused by name, two
//! synthetic runs overlaid make one PNG, and several runs need --out.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use serde_json::json;

fn corenet(args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_corenet"))
        .args(args)
        .output()
        .context("run corenet")
}

/// A run directory with 20 log steps and a validation every 50 steps.
fn fake_run(dir: &Path, offset: f64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(dir.join("metrics.jsonl"))?;
    for i in 1..=20u64 {
        let step = i * 10;
        let line = json!({"step": step, "loss": 8.0 - 0.15 * i as f64 + offset, "lr": 1e-3,
                          "grad_norm": 1.0, "tokens_seen": step * 2048, "tokens_per_s": 5000.0,
                          "elapsed_s": step as f64});
        writeln!(f, "{line}")?;
    }
    let mut f = std::fs::File::create(dir.join("validation.jsonl"))?;
    for step in [50u64, 100, 150, 200] {
        let line = json!({"step": step, "tokens_seen": step * 2048, "elapsed_s": step as f64,
                          "val_loss": 7.5 - step as f64 / 100.0 + offset});
        writeln!(f, "{line}")?;
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("utf-8 path")
}

#[test]
fn a_directory_without_metrics_is_named() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("not-a-run");
    std::fs::create_dir_all(&dir)?;
    let out = corenet(&["plot", path_str(&dir)?])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "plot must fail: {stderr}");
    ensure!(
        stderr.contains("not-a-run") && stderr.contains("no metrics"),
        "{stderr}"
    );
    ensure!(!dir.join("curves.png").exists());
    Ok(())
}

#[test]
fn two_runs_make_one_png() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (a, b) = (tmp.path().join("run-a"), tmp.path().join("run-b"));
    fake_run(&a, 0.0)?;
    fake_run(&b, 0.3)?;

    // Several runs need a picture name.
    let out = corenet(&["plot", path_str(&a)?, path_str(&b)?])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("--out"),
        "{stderr}"
    );

    let png = tmp.path().join("compare.png");
    let out = corenet(&[
        "plot",
        path_str(&a)?,
        path_str(&b)?,
        "--x",
        "tokens",
        "--out",
        path_str(&png)?,
    ])?;
    ensure!(
        out.status.success(),
        "corenet plot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(String::from_utf8(out.stdout)?.trim() == png.display().to_string());
    let bytes = std::fs::read(&png)?;
    ensure!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    // One run defaults to curves.png in its directory.
    let out = corenet(&["plot", path_str(&a)?, "--x", "time"])?;
    ensure!(
        out.status.success(),
        "corenet plot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(a.join("curves.png").is_file());
    Ok(())
}

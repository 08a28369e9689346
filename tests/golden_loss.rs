//! The first 50 steps of `recipes/tiny.yaml`, as the README's main job runs them, against the
//! committed golden losses in `tests/assets/losses/tiny.txt` (loss and gradient norm per step).
//! A refactor that claims to change nothing proves it here: data order, schedule, loss,
//! clipping and the update all feed these numbers.
//!
//! On the machine the file was written on, the run reproduces it bit for bit; elsewhere libtorch's
//! kernels may round differently, so the check allows a relative 1e-4 on the loss and 1e-3 on
//! the gradient norm — far below what a change of data order, schedule or loss moves (the loss
//! moves by ~0.1 per step here). `CORENET_WRITE_GOLDEN=1` rewrites the file from a fresh run.

use std::path::Path;
use std::process::Command;

use corenet_e2e::{build_sample_data, corenet_bin, workspace_root};

const STEPS: u64 = 50;

/// (step, loss, grad_norm) per line; `#` lines are comments.
fn read_golden(path: &Path) -> Vec<(u64, f64, f64)> {
    let text = std::fs::read_to_string(path).expect("golden file");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "golden line `{l}`");
            // Through serde_json's own float parser, as the metrics are read: its fast path
            // may round differently from `str::parse` in the last bit.
            let num = |s: &str| serde_json::from_str::<f64>(s).expect("number");
            (f[0].parse().expect("step"), num(f[1]), num(f[2]))
        })
        .collect()
}

fn run_tiny(dir: &Path) -> Vec<(u64, f64, f64)> {
    let out = Command::new(corenet_bin())
        .current_dir(dir)
        .arg("train")
        .arg(workspace_root().join("recipes/tiny.yaml"))
        .args(["--stop-at", &STEPS.to_string()])
        .args(["--set", "run.dir=runs/golden"])
        .args(["--set", "logging.interval=1"])
        .args(["--set", "logging.progress=false"])
        .args(["--set", "logging.tensorboard=false"])
        .output()
        .expect("run corenet train");
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = std::fs::read_to_string(dir.join("runs/golden/metrics.jsonl")).expect("metrics");
    metrics
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("metrics line");
            let num = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            (
                v["step"].as_u64().expect("step"),
                num("loss"),
                num("grad_norm"),
            )
        })
        .collect()
}

#[test]
fn tiny_recipe_reproduces_the_golden_losses() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The vocabulary scripts/demo.sh trains.
    build_sample_data(dir.path(), 2000);
    let run = run_tiny(dir.path());
    let golden_path = workspace_root().join("tests/assets/losses/tiny.txt");
    if std::env::var_os("CORENET_WRITE_GOLDEN").is_some() {
        let mut text = String::from(
            "# recipes/tiny.yaml, steps 1-50: step, loss, grad_norm (full precision, as metrics.jsonl logs them).\n\
             # Rewritten by CORENET_WRITE_GOLDEN=1 cargo test --test golden_loss.\n",
        );
        for (step, loss, norm) in &run {
            text.push_str(&format!("{step} {loss:?} {norm:?}\n"));
        }
        std::fs::write(&golden_path, text).expect("write golden");
        return;
    }
    let golden = read_golden(&golden_path);
    assert_eq!(
        golden.len(),
        STEPS as usize,
        "the golden file covers 50 steps"
    );
    let steps: Vec<u64> = run.iter().map(|r| r.0).collect();
    assert_eq!(
        steps,
        (1..=STEPS).collect::<Vec<_>>(),
        "one metrics line per step"
    );
    let mut exact = true;
    for (&(step, loss, norm), &(g_step, g_loss, g_norm)) in run.iter().zip(&golden) {
        assert_eq!(step, g_step);
        exact &= loss.to_bits() == g_loss.to_bits() && norm.to_bits() == g_norm.to_bits();
        assert!(
            (loss - g_loss).abs() <= 1e-4 * g_loss.abs(),
            "step {step}: loss {loss} against the golden {g_loss}"
        );
        assert!(
            (norm - g_norm).abs() <= 1e-3 * g_norm.abs(),
            "step {step}: grad norm {norm} against the golden {g_norm}"
        );
    }
    eprintln!(
        "golden losses: {} steps within tolerance, {}",
        golden.len(),
        if exact {
            "bit-identical"
        } else {
            "not bit-identical (another machine's kernels)"
        }
    );
}

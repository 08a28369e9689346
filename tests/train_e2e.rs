//! `corenet train` on recipes/tiny.yaml end to end: the loss falls; SIGTERM checkpoints and
//! stops; a run killed with SIGKILL between checkpoints resumes to bit-identical weights.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corenet_e2e::{build_sample_data, corenet_bin, metrics, workspace_root};

/// Overrides that shrink the tiny recipe further so each run takes seconds in a debug build.
const SMALL: [&str; 8] = [
    "model.vocab_size=512",
    "model.num_transformer_layers=2",
    "model.model_dim=64",
    "model.head_dim=16",
    "data.seq_len=64",
    "trainer.threads=1",
    "logging.interval=1",
    "logging.progress=false",
];

fn train_command(dir: &Path, run_dir: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(corenet_bin());
    cmd.current_dir(dir)
        .arg("train")
        .arg(workspace_root().join("recipes/tiny.yaml"));
    for s in SMALL
        .iter()
        .copied()
        .chain([format!("run.dir={run_dir}").as_str()])
        .chain(extra.iter().copied())
    {
        cmd.args(["--set", s]);
    }
    cmd
}

fn train(dir: &Path, run_dir: &str, extra: &[&str]) -> String {
    let out = train_command(dir, run_dir, extra)
        .output()
        .expect("run corenet train");
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the run has logged `step`, then returns.
fn wait_for_step(child: &mut Child, metrics_path: &Path, step: u64) {
    let start = Instant::now();
    loop {
        if metrics(metrics_path)
            .iter()
            .any(|m| m["step"].as_u64() >= Some(step))
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("training exited early with {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "step {step} never logged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn newest_model(run_dir: &Path) -> PathBuf {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .expect("checkpoints")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    steps.sort();
    steps.pop().expect("a checkpoint").join("model.safetensors")
}

#[test]
fn tiny_recipe_loss_falls() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let budget = [
        "model.model_dim=96",
        "trainer.global_batch=32",
        "trainer.micro_batch=16",
        "trainer.steps=300",
        "schedule.max_lr=0.01",
        "schedule.warmup_iterations=10",
    ];
    let stdout = train(dir.path(), "runs/falls", &budget);
    let m = metrics(&dir.path().join("runs/falls/metrics.jsonl"));
    assert_eq!(m.len(), 300);
    let loss = |x: &serde_json::Value| x["loss"].as_f64().expect("loss");
    let first = loss(&m[0]);
    let last10 = m[290..].iter().map(loss).sum::<f64>() / 10.0;
    assert!(
        last10 < 0.6 * first,
        "loss {first} -> {last10} (mean of the last 10 steps)"
    );
    assert!(stdout.contains("steps 0..300"), "{stdout}");
    assert!(dir
        .path()
        .join("runs/falls/checkpoints/step-00000300/manifest.json")
        .is_file());
}

/// A signal makes the run checkpoint and stop with 128 + the signal, so a requeue script
/// tells "preempted" from "finished" (exit 0, tested above).
#[test]
fn sigterm_and_sigint_checkpoint_and_stop_with_128_plus_the_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    for (signal, code, run) in [
        (libc::SIGTERM, 143, "runs/term"),
        (libc::SIGINT, 130, "runs/int"),
    ] {
        let mut child = train_command(
            dir.path(),
            run,
            &["trainer.steps=100000", "checkpoint.interval=0"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
        let run_dir = dir.path().join(run);
        wait_for_step(&mut child, &run_dir.join("metrics.jsonl"), 3);
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, signal) };
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(code), "signal {signal}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("interrupted, checkpoint saved"));
        let last = metrics(&run_dir.join("metrics.jsonl"))
            .last()
            .and_then(|m| m["step"].as_u64())
            .expect("step");
        assert!(newest_model(&run_dir).ends_with(format!("step-{last:08}/model.safetensors")));
    }
}

#[test]
fn killed_run_resumes_to_bit_identical_weights_and_losses() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let common = ["trainer.steps=24", "checkpoint.interval=8"];
    train(dir.path(), "runs/straight", &common);

    let mut child = train_command(dir.path(), "runs/killed", &common)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_step(
        &mut child,
        &dir.path().join("runs/killed/metrics.jsonl"),
        11,
    );
    child.kill().expect("SIGKILL"); // between the checkpoints at 8 and 16
    child.wait().expect("reap");
    let resumed = train(dir.path(), "runs/killed", &common);
    assert!(
        resumed.contains("steps 8..24"),
        "resumed from the checkpoint at 8: {resumed}"
    );
    let resumed = train(dir.path(), "runs/killed", &common);
    assert!(
        resumed.contains("steps 24..24"),
        "a finished run resumes to its end: {resumed}"
    );

    let a = std::fs::read(newest_model(&dir.path().join("runs/straight"))).expect("straight model");
    let b = std::fs::read(newest_model(&dir.path().join("runs/killed"))).expect("resumed model");
    assert!(a == b, "final weights differ");
    let avg = dir.path().join("avg");
    let out = Command::new(corenet_bin())
        .current_dir(dir.path())
        .args([
            "checkpoint",
            "average",
            "--dir",
            "runs/straight",
            "--last",
            "2",
            "--out",
        ])
        .arg(&avg)
        .output()
        .expect("run average");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("[24, 16]"));
    assert!(avg.join("model.safetensors").is_file() && avg.join("manifest.json").is_file());

    let hf = dir.path().join("hf");
    let checkpoint = newest_model(&dir.path().join("runs/straight"));
    let out = Command::new(corenet_bin())
        .args(["model", "export", "--vocab-size", "500", "--checkpoint"])
        .arg(checkpoint.parent().expect("checkpoint dir"))
        .arg("--out")
        .arg(&hf)
        .output()
        .expect("run export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for file in ["config.json", "model.safetensors", "generation_config.json"] {
        assert!(hf.join(file).is_file(), "{file}");
    }

    let out = Command::new(corenet_bin())
        .current_dir(dir.path())
        .args([
            "generate",
            "--tokenizer",
            "data/sample/tokenizer.json",
            "--prompt",
            "The king",
            "--max-new-tokens",
            "8",
        ])
        .arg(checkpoint.parent().expect("checkpoint dir"))
        .output()
        .expect("run generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("The king"));

    let ma = metrics(&dir.path().join("runs/straight/metrics.jsonl"));
    let mb = metrics(&dir.path().join("runs/killed/metrics.jsonl"));
    assert_eq!(ma.len(), 24);
    assert_eq!(
        mb.len(),
        24,
        "steps logged before the kill past the checkpoint are replaced, not repeated"
    );
    for (x, y) in ma.iter().zip(&mb) {
        for key in [
            "step",
            "loss",
            "ce",
            "z_loss",
            "grad_norm",
            "lr",
            "tokens_seen",
        ] {
            assert_eq!(x[key], y[key], "{key} at step {}", x["step"]);
        }
    }
}

/// A PEFT run (LoRA with dropout on a seeded, frozen base) killed with SIGKILL between
/// checkpoints resumes to bit-identical adapters.
#[test]
fn killed_peft_run_resumes_to_bit_identical_adapters() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let common = [
        "trainer.steps=16",
        "checkpoint.interval=6",
        "peft.rank=4",
        "peft.dropout=0.1",
        "schedule.max_lr=0.01",
        "schedule.warmup_iterations=4",
    ];
    train(dir.path(), "runs/straight", &common);
    let mut child = train_command(dir.path(), "runs/killed", &common)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for_step(&mut child, &dir.path().join("runs/killed/metrics.jsonl"), 8);
    child.kill().expect("SIGKILL"); // between the checkpoints at 6 and 12
    child.wait().expect("reap");
    let resumed = train(dir.path(), "runs/killed", &common);
    assert!(resumed.contains("steps 6..16"), "{resumed}");
    let a = std::fs::read(newest_model(&dir.path().join("runs/straight"))).expect("straight");
    let b = std::fs::read(newest_model(&dir.path().join("runs/killed"))).expect("resumed");
    assert!(a == b, "final adapters differ");
    let names = corenet_model::load_tensors(&newest_model(&dir.path().join("runs/killed")))
        .expect("adapters");
    assert!(!names.is_empty() && names.iter().all(|(n, _)| n.contains("lora_")));
}

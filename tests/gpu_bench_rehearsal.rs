//! scripts/gpu_bench.sh, the one command that produces the GPU rows of docs/performance.md,
//! rehearsed on the CPU with shrunken models: every part runs and leaves the reports the docs
//! cite (so a session with a GPU spends its time measuring, not debugging the script).

use std::path::Path;
use std::process::Command;

use corenet_e2e::{build_sample_data, corenet_bin, reference_tool, workspace_root};
use serde_json::Value;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn gpu_bench_script_runs_every_part_on_the_cpu() {
    let Some(python) = reference_tool("python") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let out = dir.path().join("bench");
    let shrink = "--set model.num_transformer_layers=2 --set model.model_dim=128 \
                  --set model.head_dim=32";
    let o = Command::new("bash")
        .arg(workspace_root().join("scripts/gpu_bench.sh"))
        .arg("all")
        .env("CORENET_BIN", corenet_bin())
        .env("PYTHON", &python)
        .env("GPU_BENCH_DEVICE", "cpu")
        .env("GPU_BENCH_OUT", &out)
        .env("GPU_BENCH_REPS", "1")
        .env("GPU_BENCH_SIZES", "gpt-test:2")
        .env("GPU_BENCH_SEQ", "32")
        .env("GPU_BENCH_STEPS", "2")
        .env("GPU_BENCH_WARMUP", "1")
        .env("GPU_BENCH_SPLIT", "1")
        .env("GPU_BENCH_3B_BATCH", "1")
        .env(
            "GPU_BENCH_3B_SETS",
            format!("{shrink} --set model.vocab_size=512"),
        )
        .env("GPU_BENCH_SAMPLE", dir.path().join("data/sample"))
        .env("GPU_BENCH_SMOKE_STEPS", "4")
        .env(
            "GPU_BENCH_SMOKE_SETS",
            format!("{shrink} --set data.seq_len=64 --set trainer.precision=f32"),
        )
        .output()
        .expect("run scripts/gpu_bench.sh");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "gpu_bench.sh failed:\n{stderr}");

    // compare: both sides measured, the ratio computed.
    let summary = read_json(&out.join("gpt-test-bf16-b2/summary.json"));
    let ratio = summary["rust_over_pytorch_step_time"]
        .as_f64()
        .unwrap_or_else(|| panic!("no ratio in {summary}"));
    assert!(ratio > 0.0 && ratio.is_finite(), "{summary}");
    let rust = read_json(&out.join("gpt-test-bf16-b2/rust-r0.json"));
    assert!(rust["tokens_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{rust}");

    // kernels: the first size again with the other RMSNorm and KV-sharing kernels.
    let k = read_json(&out.join("kernels/gpt-test-bf16-b2-native-enable-gqa.json"));
    assert_eq!(k["rms_norm"], "native", "{k}");
    assert_eq!(k["gqa"], "enable_gqa", "{k}");

    // bench3b: the 3B shape (shrunk here) with activation checkpointing.
    let b3 = read_json(&out.join("OpenELM-3B-bf16-b1-ckpt.json"));
    assert_eq!(b3["activation_checkpointing"], Value::Bool(true), "{b3}");
    assert!(b3["tokens_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{b3}");

    // smoke: stopped at step 2 with a checkpoint, resumed, one metrics line per step.
    let metrics = std::fs::read_to_string(out.join("smoke-3b/metrics.jsonl")).expect("metrics");
    let steps: Vec<u64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("json line")["step"]
                .as_u64()
                .expect("step")
        })
        .collect();
    assert_eq!(steps, [1, 2, 3, 4]);
    assert!(stderr.contains("resumed"), "{stderr}");

    // Committed reports name no directory of the machine that made them.
    let root = workspace_root().display().to_string();
    let temp = dir.path().display().to_string();
    for report in [&rust, &b3] {
        let command = report["command"].as_str().expect("command");
        assert!(
            command.contains("bench --model")
                && !command.contains(&root)
                && !command.contains(&temp),
            "{command}"
        );
    }

    let env = std::fs::read_to_string(out.join("env.txt")).expect("env.txt");
    assert!(
        env.contains("commit: ") && env.contains("torch: 2.11.0"),
        "{env}"
    );
}

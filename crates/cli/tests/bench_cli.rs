//! `corenet bench` as the real binary: a tiny CPU run writes its JSON report; bad arguments
//! fail with a message that names the problem.

use std::process::{Command, Output};

use anyhow::{ensure, Result};

const TINY: [&str; 14] = [
    "--set",
    "model.vocab_size=128",
    "--set",
    "model.model_dim=32",
    "--set",
    "model.head_dim=8",
    "--set",
    "model.num_transformer_layers=2",
    "--set",
    "model.max_context_length=64",
    "--set",
    "model.ffn_dim_divisor=8",
    "--set",
    "model.rope_max_length=64",
];

fn bench(args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_corenet"))
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?)
}

#[test]
fn tiny_cpu_bench_writes_its_report() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("r.json");
    let json_arg = json.to_string_lossy().into_owned();
    let mut args = vec![
        "--model",
        "gpt-test",
        "--seq",
        "32",
        "--micro-batch",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--precision",
        "f32",
        "--device",
        "cpu",
        "--json",
        &json_arg,
    ];
    args.extend_from_slice(&TINY);
    let out = bench(&args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("tokens/s"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    ensure!(report["implementation"] == "corenet-rs");
    ensure!(report["tokens_per_s"].as_f64().is_some_and(|t| t > 0.0));
    ensure!(report["model_config"]["model_dim"] == 32);
    ensure!(report["command"]
        .as_str()
        .is_some_and(|c| c.contains("--micro-batch 2")));
    Ok(())
}

#[test]
fn bad_arguments_fail_clearly() -> Result<()> {
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--model",
                "gpt-test",
                "--micro-batch",
                "0",
                "--device",
                "cpu",
            ],
            "micro_batch",
        ),
        (
            &["--model", "nope", "--micro-batch", "1", "--device", "cpu"],
            "nope",
        ),
        (
            &[
                "--model",
                "gpt-test",
                "--micro-batch",
                "1",
                "--precision",
                "f16",
            ],
            "f16",
        ),
        (
            &[
                "--model",
                "gpt-test",
                "--micro-batch",
                "1",
                "--set",
                "data.seq_len=4",
            ],
            "data.seq_len",
        ),
    ];
    for (args, needle) in cases {
        let out = bench(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{args:?} succeeded");
        ensure!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    Ok(())
}

//! `corenet_train::bench` on a tiny model on CPU: consistent numbers, a complete JSON report,
//! and clear errors for bad arguments. No speed is asserted here (targets live in the docs).

use corenet_train::bench::{self, BenchConfig, BenchReport};
use corenet_train::recipe::overrides::Override;
use corenet_train::recipe::{DeviceChoice, Precision};

/// gpt-test shrunk to a few thousand parameters.
fn tiny(sets: &[&str]) -> anyhow::Result<corenet_model::OpenElmConfig> {
    let mut all = vec![
        "model.vocab_size=128",
        "model.model_dim=32",
        "model.head_dim=8",
        "model.num_transformer_layers=2",
        "model.max_context_length=64",
        "model.rope_max_length=64",
        "model.ffn_dim_divisor=8",
    ];
    all.extend_from_slice(sets);
    let overrides = all
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(bench::model_config("gpt-test", &overrides)?)
}

fn config(precision: Precision, checkpoint: bool) -> anyhow::Result<BenchConfig> {
    Ok(BenchConfig {
        seq_len: 32,
        micro_batch: 2,
        steps: 4,
        warmup: 1,
        split_steps: 5,
        precision,
        device: DeviceChoice::Cpu,
        activation_checkpointing: checkpoint,
        ..BenchConfig::new("tiny", tiny(&[])?)
    })
}

#[test]
fn tiny_cpu_run_reports_consistent_numbers() -> anyhow::Result<()> {
    for (precision, checkpoint) in [(Precision::F32, false), (Precision::Bf16, true)] {
        let r = bench::run(&config(precision, checkpoint)?, "test")?;
        assert_eq!(r.tokens_per_step, 64);
        assert_eq!(r.step_times_s.len(), 4);
        assert!(r.tokens_per_s > 0.0 && r.tokens_per_s.is_finite());
        let expected = r.tokens_per_step as f64 / r.step_time_s;
        assert!((r.tokens_per_s - expected).abs() <= 1e-9 * expected);
        assert!(
            r.final_loss.is_finite() && r.final_loss > 0.0,
            "{}",
            r.final_loss
        );
        let s = r.split;
        assert!(s.forward_s > 0.0 && s.backward_s > 0.0 && s.optimizer_s > 0.0);
        assert_eq!(s.communication_s, 0.0);
        // The split is a median per phase; the step a median of per-step sums.
        let sum = s.forward_s + s.backward_s + s.optimizer_s + s.communication_s;
        assert!(
            (sum - s.step_s).abs() <= 0.5 * s.step_s,
            "phases sum to {sum}, synced step {}",
            s.step_s
        );
        assert!(r.mfu.is_none(), "no MFU on CPU");
        assert!(r.peak_memory_bytes.is_some_and(|b| b > 0));
        assert_eq!(r.device, "cpu");
        assert!(!r.sdpa_backend.is_empty());
        assert_eq!(r.activation_checkpointing, checkpoint);
        let flops = r.model_config.training_flops_per_token(32)?;
        assert_eq!(r.flops_per_token, flops);
    }
    Ok(())
}

#[test]
fn json_report_has_every_field_and_round_trips() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("nested/report.json");
    let r = bench::run(&config(Precision::F32, false)?, "corenet bench --test")?;
    r.write_json(&path)?;
    let text = std::fs::read_to_string(&path)?;
    let value: serde_json::Value = serde_json::from_str(&text)?;
    for key in [
        "implementation",
        "command",
        "git_commit",
        "host",
        "device",
        "device_name",
        "torch_version",
        "threads",
        "model",
        "model_config",
        "params",
        "seq_len",
        "micro_batch",
        "precision",
        "tokens_per_step",
        "step_time_s",
        "step_time_median_s",
        "tokens_per_s",
        "flops_per_token",
        "mfu",
        "peak_memory_bytes",
        "peak_memory_source",
        "split",
        "sdpa_backend",
        "rms_norm",
        "fused_adamw",
        "pinned_input",
        "final_loss",
        "step_times_s",
    ] {
        assert!(value.get(key).is_some(), "missing `{key}` in {text}");
    }
    for key in [
        "forward_s",
        "backward_s",
        "optimizer_s",
        "communication_s",
        "step_s",
    ] {
        assert!(value["split"].get(key).is_some(), "missing split.{key}");
    }
    assert!(value["mfu"].is_null());
    assert_eq!(value["command"], "corenet bench --test");
    assert!(value["torch_version"]
        .as_str()
        .is_some_and(|v| v.starts_with('2')));
    // It reads back (floats to within serde_json's last-digit rounding).
    let back: BenchReport = serde_json::from_str(&text)?;
    assert_eq!(back.model_config, r.model_config);
    assert_eq!(back.step_times_s.len(), r.step_times_s.len());
    assert!((back.tokens_per_s - r.tokens_per_s).abs() <= 1e-12 * r.tokens_per_s);
    assert_eq!(back.split.communication_s, 0.0);
    Ok(())
}

#[test]
fn bad_arguments_are_clear_errors() -> anyhow::Result<()> {
    let err = |c: BenchConfig| match bench::run(&c, "test") {
        Ok(_) => String::from("no error"),
        Err(e) => e.to_string(),
    };
    let base = config(Precision::F32, false)?;
    let e = err(BenchConfig {
        micro_batch: 0,
        ..base.clone()
    });
    assert!(e.contains("micro_batch") && e.contains("at least 1"), "{e}");
    let e = err(BenchConfig {
        steps: 0,
        ..base.clone()
    });
    assert!(e.contains("steps"), "{e}");
    let e = err(BenchConfig {
        seq_len: 65,
        ..base.clone()
    });
    assert!(e.contains("max_context_length"), "{e}");
    let e = err(BenchConfig {
        threads: Some(0),
        ..base.clone()
    });
    assert!(e.contains("threads"), "{e}");

    let e = tiny(&["trainer.steps=3"]).map_or_else(|e| e.to_string(), |_| "no error".into());
    assert!(e.contains("trainer.steps") && e.contains("model"), "{e}");
    let e = tiny(&["model.num_layers=3"]).map_or_else(|e| e.to_string(), |_| "no error".into());
    assert!(e.contains("num_layers"), "{e}");
    let e = tiny(&["model.head_dim=7"]).map_or_else(|e| e.to_string(), |_| "no error".into());
    assert_ne!(e, "no error");
    let e = bench::model_config("OpenELM-9B", &[])
        .map_or_else(|e| e.to_string(), |_| "no error".into());
    assert!(
        e.contains("OpenELM-9B") && e.contains("OpenELM-270M"),
        "{e}"
    );
    if !tch::Cuda::is_available() {
        let e = err(BenchConfig {
            device: DeviceChoice::Cuda,
            ..base
        });
        assert!(e.contains("cuda"), "{e}");
    }
    Ok(())
}

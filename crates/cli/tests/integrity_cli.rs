//! The real binary refuses what it cannot trust: a checkpoint with flipped bytes through every
//! command that loads weights, and option values that would break a run or a score, each with
//! a message naming the file, key or flag. The checkpoint comes from a real `corenet train`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use serde_json::json;

fn corenet(args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_corenet"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .context("run corenet")
}

/// Runs `args` expecting failure; returns stderr.
fn fails(args: &[&str]) -> Result<String> {
    let out = corenet(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "corenet {args:?} must fail; stdout {} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    Ok(stderr)
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    recipe: PathBuf,
    tokenizer: PathBuf,
    shard: PathBuf,
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A 4-step run of a tiny model (checkpoints at 2 and 4) on a synthetic shard.
fn trained() -> Result<Fixture> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let text = "the king speaks of love and war in a castle by night while the queen rises";
    let shard = dir.join("shard.jsonl");
    let mut f = std::fs::File::create(&shard)?;
    for i in 0..60 {
        writeln!(
            f,
            "{}",
            json!({ "text": format!("{text} {i} and the lord falls.") })
        )?;
    }
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, format!("{text}\n").repeat(30))?;
    let tokenizer = dir.join("tokenizer.json");
    corenet_data::train_tokenizer(
        &[corpus],
        200,
        &corenet_data::DEFAULT_SPECIAL_TOKENS,
        &tokenizer,
    )?;
    let recipe = dir.join("recipe.yaml");
    std::fs::write(
        &recipe,
        format!(
            r#"run: {{ name: t, dir: {run} }}
model:
  vocab_size: 320
  max_context_length: 32
  num_transformer_layers: 2
  model_dim: 32
  head_dim: 8
  qkv_multipliers: [0.5, 1.0]
  num_gqa_groups: 2
  ffn_multipliers: [0.5, 2.0]
  ffn_dim_divisor: 8
data:
  tokenizer: {tok}
  seq_len: 32
  sources: [{{ name: a, paths: [{shard}] }}]
schedule: {{ name: cosine, max_lr: 0.003, min_lr: 0.0003, warmup_iterations: 1 }}
trainer: {{ global_batch: 4, micro_batch: 2, steps: 4, threads: 1 }}
checkpoint: {{ interval: 2, keep_last: 5 }}
logging: {{ interval: 1, tensorboard: false, progress: false }}
"#,
            run = s(&dir.join("run")),
            tok = s(&tokenizer),
            shard = s(&shard),
        ),
    )?;
    let out = corenet(&["train", s(&recipe)])?;
    ensure!(
        out.status.success(),
        "train: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Fixture {
        _tmp: tmp,
        dir,
        recipe,
        tokenizer,
        shard,
    })
}

fn flip_bytes(path: &Path) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    let at = bytes.len() / 2;
    for b in &mut bytes[at..at + 4] {
        *b ^= 0xa5;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

#[test]
fn a_flipped_byte_is_refused_by_every_command_that_loads_weights() -> Result<()> {
    let fx = trained()?;
    let good = fx.dir.join("run/checkpoints/step-00000004");
    let bad = fx.dir.join("bad-checkpoint");
    copy_dir(&good, &bad)?;
    flip_bytes(&bad.join("model.safetensors"))?;
    let (bad_s, tok) = (s(&bad), s(&fx.tokenizer));
    let arc = fx.dir.join("arc.jsonl");
    std::fs::write(
        &arc,
        format!(
            "{}\n",
            json!({"question": "who speaks", "choices": {"text": ["the king", "a castle"], "label": ["A", "B"]}, "answerKey": "A"})
        ),
    )?;
    let task = format!("arc_easy={}", arc.display());
    let export_out = fx.dir.join("export");
    let init_run = format!("run.dir={}", fx.dir.join("init-run").display());
    let commands: Vec<Vec<&str>> = vec![
        vec![
            "generate",
            bad_s,
            "--tokenizer",
            tok,
            "--prompt",
            "the king",
        ],
        vec![
            "eval",
            "perplexity",
            bad_s,
            "--tokenizer",
            tok,
            "--data",
            s(&fx.shard),
        ],
        vec!["eval", "tasks", bad_s, "--tokenizer", tok, "--task", &task],
        vec![
            "model",
            "export",
            "--checkpoint",
            bad_s,
            "--out",
            s(&export_out),
        ],
        vec![
            "train",
            s(&fx.recipe),
            "--set",
            &init_run,
            "--init-from",
            bad_s,
        ],
    ];
    for args in &commands {
        let stderr = fails(args)?;
        ensure!(
            stderr.contains("model.safetensors") && stderr.contains("sha256"),
            "{args:?} must name the file and the failed check: {stderr}"
        );
    }
    ensure!(
        !export_out.exists(),
        "nothing exported from a bad checkpoint"
    );

    // The good checkpoint still works through the same commands.
    let out = corenet(&[
        "generate",
        s(&good),
        "--tokenizer",
        tok,
        "--prompt",
        "the king",
        "--max-new-tokens",
        "4",
    ])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Averaging refuses to pretend: flipping step 4 leaves one checkpoint that verifies.
    flip_bytes(&good.join("model.safetensors"))?;
    let checkpoints = fx.dir.join("run/checkpoints");
    let stderr = fails(&[
        "checkpoint",
        "average",
        "--dir",
        s(&checkpoints),
        "--last",
        "2",
        "--out",
        s(&fx.dir.join("avg.safetensors")),
    ])?;
    ensure!(
        stderr.contains("step-00000004") && stderr.contains("model.safetensors"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn values_that_would_break_a_run_or_a_score_are_rejected_naming_them() -> Result<()> {
    let fx = trained()?;
    let recipe = s(&fx.recipe);
    let fresh = format!("run.dir={}", fx.dir.join("fresh").display());
    let cases: [(&str, &str); 8] = [
        ("trainer.threads=0", "trainer.threads"),
        ("trainer.threads=100000", "trainer.threads"),
        ("trainer.max_bad_steps=0", "trainer.max_bad_steps"),
        ("data.seq_len=64", "data.seq_len"),
        ("trainer.steps=abc", "trainer.steps"),
        ("trainer=5", "trainer"),
        ("trainer.global_batch=0", "trainer.global_batch"),
        ("checkpoint.keep_last=-1", "checkpoint.keep_last"),
    ];
    for (set, key) in cases {
        let stderr = fails(&["train", recipe, "--set", &fresh, "--set", set])?;
        ensure!(
            stderr.contains(&format!("`{key}")),
            "--set {set} must name `{key}`: {stderr}"
        );
        ensure!(
            !stderr.contains("schedule.max_iterations"),
            "--set {set} blames a derived key: {stderr}"
        );
        ensure!(
            !fx.dir.join("fresh").exists(),
            "--set {set} created the run"
        );
    }

    let good = fx.dir.join("run/checkpoints/step-00000004");
    let tok = s(&fx.tokenizer);
    for temperature in ["NaN", "-1", "inf"] {
        let stderr = fails(&[
            "generate",
            s(&good),
            "--tokenizer",
            tok,
            "--prompt",
            "the",
            &format!("--temperature={temperature}"),
        ])?;
        ensure!(stderr.contains("temperature"), "{temperature}: {stderr}");
    }

    let empty = fx.dir.join("empty.jsonl");
    std::fs::write(&empty, "\n\n")?;
    let task = format!("arc_easy={}", empty.display());
    let stderr = fails(&[
        "eval",
        "tasks",
        s(&good),
        "--tokenizer",
        tok,
        "--task",
        &task,
    ])?;
    ensure!(
        stderr.contains("empty.jsonl") && stderr.contains("no items"),
        "{stderr}"
    );

    // A tokenizer path that is a directory without a tokenizer in it.
    let no_tokenizer = fx.dir.join("no-tokenizer");
    std::fs::create_dir(&no_tokenizer)?;
    let stderr = fails(&[
        "generate",
        s(&good),
        "--tokenizer",
        s(&no_tokenizer),
        "--prompt",
        "the",
    ])?;
    ensure!(stderr.contains("is a directory"), "{stderr}");

    // An HF config.json without model_dim names model_dim.
    let hf = fx.dir.join("hf");
    let out = corenet(&["model", "export", "--checkpoint", s(&good), "--out", s(&hf)])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config_path = hf.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path)?)?;
    config
        .as_object_mut()
        .context("config object")?
        .remove("model_dim");
    std::fs::write(&config_path, config.to_string())?;
    let stderr = fails(&[
        "eval",
        "perplexity",
        s(&hf),
        "--tokenizer",
        tok,
        "--data",
        s(&fx.shard),
    ])?;
    ensure!(
        stderr.contains("model_dim") && stderr.contains("missing"),
        "{stderr}"
    );
    Ok(())
}

/// Logs redirected to a file are plain text: no colour codes, no progress-bar frames, each
/// checkpoint announced once, and each log line carrying step/total and an ETA; `--log-format
/// json` gives one JSON object per line.
#[test]
fn redirected_logs_are_plain_and_json_logs_parse() -> Result<()> {
    let fx = trained()?;
    let run = format!("run.dir={}", fx.dir.join("logged").display());
    let out = corenet(&[
        "train",
        s(&fx.recipe),
        "--set",
        &run,
        "--set",
        "logging.progress=true",
    ])?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(out.status.success(), "{stderr}");
    ensure!(
        !stderr.contains('\u{1b}'),
        "escape codes in a redirected log: {stderr:?}"
    );
    ensure!(
        stderr.matches("checkpoint saved").count() == 2,
        "checkpoints at 2 and 4, each announced once: {stderr}"
    );
    ensure!(
        stderr.contains("step=2/4") && stderr.contains("eta="),
        "{stderr}"
    );

    let run = format!("run.dir={}", fx.dir.join("json").display());
    let out = corenet(&[
        "--log-format",
        "json",
        "train",
        s(&fx.recipe),
        "--set",
        &run,
    ])?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    ensure!(lines.len() >= 4, "{stderr}");
    for line in lines {
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(value["level"].is_string(), "{line}");
    }
    Ok(())
}

/// A report whose reader goes away (`corenet model summary … | head -1`) ends quietly, without
/// a panic about a broken pipe.
#[test]
fn a_closed_stdout_pipe_is_not_a_panic() -> Result<()> {
    for _ in 0..3 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corenet"))
            .args(["model", "summary", "--model", "OpenELM-3B"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        drop(child.stdout.take());
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!stderr.contains("panicked"), "{stderr}");
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            ensure!(
                out.status.success() || out.status.signal() == Some(13),
                "ends as a pipeline stage does (SIGPIPE), got {:?}",
                out.status
            );
        }
    }
    Ok(())
}

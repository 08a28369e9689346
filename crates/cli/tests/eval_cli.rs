//! `corenet eval perplexity|tasks` as the real binary on an exported HF folder: JSON and table
//! output, and a clear error for a tokenizer larger than the model.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use corenet_model::{OpenElm, OpenElmConfig};
use serde_json::{json, Value};

fn corenet(args: &[&str]) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_corenet"))
        .args(args)
        .output()
        .context("run corenet")
}

fn ok_stdout(args: &[&str]) -> Result<String> {
    let out = corenet(args)?;
    ensure!(
        out.status.success(),
        "corenet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// An HF folder of a random tiny model with `vocab_size` rows.
fn export_model(dir: &Path, vocab_size: usize) -> Result<()> {
    let config = OpenElmConfig {
        max_context_length: 32,
        ..OpenElmConfig::miniature(vocab_size, 2, 32, 8)
    };
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = OpenElm::new(&vs.root(), &config)?;
    corenet_model::hf::export_hf(&model, dir, None)?;
    Ok(())
}

fn write_lines(path: &Path, items: &[Value]) -> Result<()> {
    let mut f = std::fs::File::create(path)?;
    for item in items {
        writeln!(f, "{item}")?;
    }
    Ok(())
}

#[test]
fn eval_reports_perplexity_and_task_accuracy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let corpus = d.join("corpus.txt");
    std::fs::write(
        &corpus,
        "the king speaks of love and war in a castle by night\nthe queen rises and the lord falls\n"
            .repeat(20),
    )?;
    let tokenizer = d.join("tokenizer.json");
    corenet_data::train_tokenizer(
        &[corpus],
        120,
        &corenet_data::DEFAULT_SPECIAL_TOKENS,
        &tokenizer,
    )?;
    export_model(&d.join("model"), 320)?;
    let shard = d.join("heldout.jsonl");
    write_lines(
        &shard,
        &[
            json!({"text": "the king speaks of love"}),
            json!({"text": "and war in a castle by night, the queen rises and the lord falls again and again"}),
        ],
    )?;
    let model = d.join("model");
    let (model, tok, shard) = (
        model.to_str().context("utf-8")?,
        tokenizer.to_str().context("utf-8")?,
        shard.to_str().context("utf-8")?,
    );
    let out = ok_stdout(&[
        "eval",
        "perplexity",
        model,
        "--tokenizer",
        tok,
        "--data",
        shard,
        "--json",
    ])?;
    let report: Value = serde_json::from_str(&out)?;
    let (nll, ppl) = (
        report["mean_nll"].as_f64().context("mean_nll")?,
        report["perplexity"].as_f64().context("perplexity")?,
    );
    ensure!(
        report["documents"] == 2 && report["tokens"].as_u64() > Some(10),
        "{report}"
    );
    ensure!((ppl / nll.exp() - 1.0).abs() < 1e-9, "{report}");

    let arc = d.join("arc.jsonl");
    write_lines(
        &arc,
        &[
            json!({"question": "who speaks", "choices": {"text": ["the king", "a castle"], "label": ["A", "B"]}, "answerKey": "A"}),
            json!({"question": "what falls", "choices": {"text": ["night", "the lord", "war"], "label": ["A", "B", "C"]}, "answerKey": "B"}),
        ],
    )?;
    let wino = d.join("wino.jsonl");
    write_lines(
        &wino,
        &[
            json!({"sentence": "the king and the queen: _ speaks of love", "option1": "the king", "option2": "the queen", "answer": "1"}),
        ],
    )?;
    let arc_spec = format!("arc_easy={}", arc.display());
    let wino_spec = format!("winogrande={}", wino.display());
    let task_args = [
        "eval",
        "tasks",
        model,
        "--tokenizer",
        tok,
        "--task",
        &arc_spec,
        "--task",
        &wino_spec,
        "--batch-size",
        "2",
    ];
    let out = ok_stdout(&[&task_args[..], &["--json"]].concat())?;
    let results: Value = serde_json::from_str(&out)?;
    ensure!(
        results[0]["task"] == "arc_easy" && results[0]["n"] == 2,
        "{results}"
    );
    ensure!(results[0]["acc_norm"].is_f64(), "{results}");
    ensure!(
        results[1]["task"] == "winogrande" && results[1]["acc_norm"].is_null(),
        "{results}"
    );
    let table = ok_stdout(&task_args)?;
    ensure!(
        table.contains("arc_easy") && table.contains("acc_norm"),
        "{table}"
    );

    // A tokenizer with more ids than the model has rows.
    export_model(&d.join("small"), 16)?;
    let small = d.join("small");
    let out = corenet(&[
        "eval",
        "tasks",
        small.to_str().context("utf-8")?,
        "--tokenizer",
        tok,
        "--task",
        &arc_spec,
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("vocabulary only 16 rows"),
        "{stderr}"
    );
    Ok(())
}

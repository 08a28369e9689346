//! Supervised fine-tuning on chat data through the `corenet` binary: a run on `template: chat`
//! conversations (loss on the assistant turns), then `corenet generate --chat` answers the
//! trained questions and stops at the end of its turn, and the HF export carries the chat
//! template, which transformers' `apply_chat_template` renders exactly as corenet trained on.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use corenet_data::template::{chat_prompt, Template};
use corenet_e2e::{corenet_ok, reference_python_with, tiny_model_yaml, tokenizer_from_corpus};
use serde_json::{json, Value};

const FACTS: [(&str, &str); 6] = [
    ("sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("coal", "black"),
    ("blood", "red"),
    ("sun", "yellow"),
];

const SYSTEM: &str = "answer briefly.";

fn question(thing: &str) -> String {
    format!("what is the colour of the {thing}?")
}

fn answer(thing: &str, colour: &str) -> String {
    format!("the {thing} is {colour}.")
}

/// Conversations in both record layouts, some with a system message.
fn records() -> Vec<Value> {
    FACTS
        .iter()
        .enumerate()
        .map(|(i, (thing, colour))| match i % 2 {
            0 => json!({"messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": question(thing)},
                {"role": "assistant", "content": answer(thing, colour)},
            ]}),
            _ => json!({"prompt": question(thing), "completion": answer(thing, colour)}),
        })
        .collect()
}

fn prepare(dir: &Path) -> Result<()> {
    let mut f = std::fs::File::create(dir.join("chat.jsonl"))?;
    let mut corpus = String::new();
    for r in records() {
        writeln!(f, "{r}")?;
        let (text, _) = Template::Chat
            .render(r.to_string().as_bytes())
            .map_err(anyhow::Error::msg)?;
        corpus.push_str(&text);
    }
    std::fs::write(dir.join("corpus.txt"), corpus.repeat(4))?;
    tokenizer_from_corpus(dir, 400)?;
    std::fs::write(
        dir.join("sft.yaml"),
        [
            "run: { name: sft, dir: sft_run }\n",
            &tiny_model_yaml(400, 64),
            r#"data:
  tokenizer: tok/tokenizer.json
  seq_len: 64
  mode: corenet
  corenet: { min_characters: 1, min_tokens: 2, fix_text: false }
  sources: [{ name: chat, paths: [chat.jsonl], template: chat }]
schedule: { name: cosine, max_lr: 0.01, min_lr: 0.001, warmup_iterations: 5 }
trainer: { global_batch: 6, micro_batch: 6, steps: 300, threads: 2 }
checkpoint: { interval: 300, keep_last: 1 }
logging: { interval: 10, tensorboard: false, progress: false }
"#,
        ]
        .concat(),
    )?;
    corenet_ok(dir, &["train", "sft.yaml"])?;
    Ok(())
}

const CHECKPOINT: &str = "sft_run/checkpoints/step-00000300";

#[test]
fn a_chat_sft_run_answers_in_its_turn_and_exports_its_template() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    prepare(dir)?;
    ensure!(dir.join(CHECKPOINT).join("chat_template.jinja").is_file());
    let losses: Vec<f64> = std::fs::read_to_string(dir.join("sft_run/metrics.jsonl"))?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok()?["ce"].as_f64())
        .collect();
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    ensure!(last < 0.1 * first, "cross-entropy {first} -> {last}");

    for (i, (thing, colour)) in FACTS.iter().enumerate() {
        let q = question(thing);
        let mut args = vec!["generate", CHECKPOINT, "--chat", "--prompt", &q];
        // Asked as it was trained: the even conversations had a system message.
        if i % 2 == 0 {
            args.extend(["--system", SYSTEM]);
        }
        args.extend(["--max-new-tokens", "20", "--json"]);
        let out = corenet_ok(dir, &args)?;
        let reply: Value = serde_json::from_str(&out)?;
        ensure!(
            reply["text"].as_str().map(str::trim) == Some(answer(thing, colour).as_str()),
            "{thing}: {reply}"
        );
        // It stopped at the end of its turn, well before the token budget.
        ensure!(
            reply["new_ids"].as_array().map_or(0, Vec::len) < 20,
            "{reply}"
        );
    }
    corenet_ok(
        dir,
        &["model", "export", "--checkpoint", CHECKPOINT, "--out", "hf"],
    )?;
    // The export answers as the checkpoint does, its template read from tokenizer_config.json.
    let ask = ["generate", "hf", "--chat", "--prompt", &question("grass")];
    let out = corenet_ok(dir, &ask)?;
    ensure!(out.trim() == answer("grass", "green"), "{out}");
    check_template_in_transformers(dir)
}

/// transformers renders corenet's training text from the exported tokenizer's chat template,
/// and the generation prompt `generate --chat` uses.
fn check_template_in_transformers(dir: &Path) -> Result<()> {
    let Some(python) = reference_python_with("transformers") else {
        return Ok(());
    };
    let mut cases = Vec::new();
    for r in records() {
        let (text, _) = Template::Chat
            .render(r.to_string().as_bytes())
            .map_err(anyhow::Error::msg)?;
        let messages = match r.get("messages") {
            Some(m) => m.clone(),
            None => json!([
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"]},
            ]),
        };
        cases.push(json!({"messages": messages, "text": text}));
    }
    let ask = vec![("user".to_string(), question("sky"))];
    let prompt = chat_prompt(&ask).map_err(anyhow::Error::msg)?;
    let spec = json!({"cases": cases, "ask": [{"role": "user", "content": question("sky")}], "prompt": prompt});
    std::fs::write(dir.join("cases.json"), spec.to_string())?;
    let script = r#"
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained("hf", trust_remote_code=True)
spec = json.load(open("cases.json"))
for case in spec["cases"]:
    got = tok.apply_chat_template(case["messages"], tokenize=False)
    assert got == case["text"], (got, case["text"])
got = tok.apply_chat_template(spec["ask"], tokenize=False, add_generation_prompt=True)
assert got == spec["prompt"], (got, spec["prompt"])
print("ok", len(spec["cases"]))
"#;
    let out = Command::new(python)
        .current_dir(dir)
        .args(["-c", script])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.join("hf-home"))
        .output()
        .context("python")?;
    ensure!(
        out.status.success(),
        "transformers: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        stdout.lines().any(|l| l == "ok 6"),
        "transformers printed {stdout}"
    );
    Ok(())
}

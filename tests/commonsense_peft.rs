//! The fine-tuning loop a user of CoreNet's OpenELM PEFT recipes runs, through the `corenet`
//! binary: a base, a LoRA run on CommonSense-style boolq records through the `alpaca` template
//! with the loss on the response only, and `corenet eval commonsense` on held-out records
//! before and after, in both answer modes. The base knows the answer format but not the rule
//! behind the answers; after the run the training loss has fallen and held-out accuracy has
//! risen from chance to (nearly) every item, generated and scored alike.

use std::io::Write;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use corenet_e2e::{corenet_ok, tiny_model_yaml, tokenizer_from_corpus};
use serde_json::{json, Value};

/// Nouns whose answer is `true` (sweet) and `false` (not): the rule the adapters must learn.
const SWEET: [&str; 7] = ["apple", "honey", "cake", "plum", "candy", "pear", "fig"];
const PLAIN: [&str; 6] = ["stone", "salt", "rope", "iron", "sand", "chalk"];
const FILLERS: [&str; 12] = [
    "old", "red", "small", "round", "wet", "cold", "big", "dry", "green", "new", "soft", "hard",
];

/// A boolq-like record whose answer follows from the noun alone (the filler words vary), with
/// `response` as its output.
fn record(noun: &str, a: &str, b: &str, response: &str) -> Value {
    let answer = if SWEET.contains(&noun) {
        "true"
    } else {
        "false"
    };
    json!({
        "instruction": format!(
            "Please answer the following question with true or false, question: is the {a} {b} {noun} sweet?\n\nAnswer format: true/false"
        ),
        "input": "",
        "output": format!("the correct answer is {response}"),
        "answer": answer,
    })
}

/// Every ordered pair of fillers asks about one noun, the 13 in turn; one pair in three is
/// held out, so every noun is both trained on and tested, never with the same fillers. The
/// base's records answer by a hash instead: it learns the format, not the rule.
fn records() -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    // Sweet and plain in turn, so neighbouring pairs get opposite answers.
    let mut nouns: Vec<&str> = SWEET
        .iter()
        .zip(&PLAIN)
        .flat_map(|(s, p)| [*s, *p])
        .collect();
    nouns.push(SWEET[6]);
    let (mut train, mut test, mut base) = (Vec::new(), Vec::new(), Vec::new());
    let pairs = FILLERS
        .iter()
        .flat_map(|a| FILLERS.iter().map(move |b| (a, b)))
        .filter(|(a, b)| a != b);
    for (p, (a, b)) in pairs.enumerate() {
        let noun = nouns[p % nouns.len()];
        let truth = if SWEET.contains(&noun) {
            "true"
        } else {
            "false"
        };
        match p % 3 {
            0 => test.push(record(noun, a, b, truth)),
            _ => train.push(record(noun, a, b, truth)),
        }
        let guess = ["true", "false"][(p * 7 + 3) % 5 % 2];
        base.push(record(noun, a, b, guess));
    }
    (train, test, base)
}

/// The training text the `alpaca` template renders from a record.
fn rendered(record: &Value) -> Result<String> {
    Ok(corenet_data::template::Template::Alpaca
        .render(record.to_string().as_bytes())
        .map_err(anyhow::Error::msg)?
        .0)
}

/// Training records as JSON lines, a held-out test set as LLM-Adapters' JSON array, a tokenizer
/// trained on the rendered texts, a recipe, and a base (60 steps on the records' text with hashed answers).
fn prepare(dir: &Path) -> Result<()> {
    let (train, test, base) = records();
    let mut f = std::fs::File::create(dir.join("train.jsonl"))?;
    for r in &train {
        writeln!(f, "{r}")?;
    }
    std::fs::write(
        dir.join("test.json"),
        serde_json::to_string_pretty(&test[..40])?,
    )?;
    let (mut plain, mut corpus) = (
        std::fs::File::create(dir.join("plain.jsonl"))?,
        String::new(),
    );
    for r in &base {
        let text = rendered(r)?;
        writeln!(plain, "{}", json!({ "text": text }))?;
        corpus.push_str(&text);
        corpus.push('\n');
    }
    std::fs::write(dir.join("corpus.txt"), &corpus)?;
    tokenizer_from_corpus(dir, 1000)?;
    std::fs::write(
        dir.join("recipe.yaml"),
        [
            "run: { name: t, dir: base_run }\n",
            &tiny_model_yaml(1024, 128),
            r#"data:
  tokenizer: tok/tokenizer.json
  seq_len: 128
  sources: [{ name: plain, paths: [plain.jsonl] }]
schedule: { name: cosine, max_lr: 0.01, min_lr: 0.001, warmup_iterations: 2 }
trainer: { global_batch: 8, micro_batch: 8, steps: 60, threads: 2 }
checkpoint: { interval: 60, keep_last: 1 }
logging: { interval: 1, tensorboard: false, progress: false }
"#,
        ]
        .concat(),
    )?;
    corenet_ok(dir, &["train", "recipe.yaml"])?;
    corenet_ok(
        dir,
        &[
            "model",
            "export",
            "--checkpoint",
            "base_run/checkpoints/step-00000060",
            "--out",
            "base_hf",
        ],
    )?;
    Ok(())
}

const STEPS: u64 = 300;

/// LoRA on the records, one per row (CoreNet's commonsense_170k layout), loss on the response.
fn fine_tune(dir: &Path) -> Result<Vec<f64>> {
    let steps = format!("trainer.steps={STEPS}");
    let interval = format!("checkpoint.interval={STEPS}");
    let sets = [
        "run.dir=lora_run",
        "data.sources=[{name: boolq, paths: [train.jsonl], template: alpaca, loss_on: response}]",
        "data.mode=corenet",
        "data.corenet.min_characters=1",
        "data.corenet.min_tokens=2",
        "data.corenet.fix_text=false",
        "peft.method=lora",
        "peft.rank=8",
        "peft.alpha=16",
        "schedule.max_lr=0.03",
        "schedule.min_lr=0.003",
        &steps,
        &interval,
    ];
    let mut args = vec!["train", "recipe.yaml", "--init-from", "base_hf"];
    for s in &sets {
        args.extend(["--set", s]);
    }
    corenet_ok(dir, &args)?;
    let metrics =
        std::fs::read_to_string(dir.join("lora_run/metrics.jsonl")).context("metrics.jsonl")?;
    Ok(metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["ce"].as_f64())
        .collect())
}

/// (accuracy, unanswered) of `model` on the held-out set.
fn accuracy(dir: &Path, model: &str, mode: &str) -> Result<(f64, u64)> {
    let out = corenet_ok(
        dir,
        &[
            "eval",
            "commonsense",
            model,
            "--tokenizer",
            "tok/tokenizer.json",
            "--task",
            "boolq=test.json",
            "--mode",
            mode,
            "--max-new-tokens",
            "16",
            "--json",
        ],
    )?;
    let reports: Value = serde_json::from_str(&out).context(out.clone())?;
    let r = &reports[0];
    ensure!(r["task"] == "boolq" && r["n"] == 40, "{r}");
    Ok((
        r["accuracy"].as_f64().context("accuracy")?,
        r["unanswered"].as_u64().context("unanswered")?,
    ))
}

#[test]
fn lora_on_commonsense_records_learns_what_the_held_out_set_asks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    prepare(dir)?;
    let (ll_before, _) = accuracy(dir, "base_hf", "loglikelihood")?;
    let (gen_before, unanswered_before) = accuracy(dir, "base_hf", "generate")?;
    ensure!(
        ll_before < 0.7 && gen_before < 0.7,
        "the base already knows the rule"
    );

    let losses = fine_tune(dir)?;
    ensure!(losses.len() as u64 == STEPS, "{} loss lines", losses.len());
    let head: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;

    let checkpoint = format!("lora_run/checkpoints/step-{STEPS:08}");
    let (ll_after, _) = accuracy(dir, &checkpoint, "loglikelihood")?;
    let (gen_after, unanswered_after) = accuracy(dir, &checkpoint, "generate")?;
    eprintln!(
        "cross-entropy {head:.3} -> {tail:.3}; loglikelihood accuracy {ll_before:.3} -> {ll_after:.3}; \
         generate accuracy {gen_before:.3} -> {gen_after:.3}, unanswered {unanswered_before} -> {unanswered_after}"
    );
    ensure!(tail < 0.5 * head, "cross-entropy {head:.3} -> {tail:.3}");
    ensure!(ll_after >= 0.9, "loglikelihood {ll_before} -> {ll_after}");
    ensure!(gen_after >= 0.9, "generate {gen_before} -> {gen_after}");
    ensure!(
        unanswered_after == 0,
        "{unanswered_after} items unanswered after fine-tuning"
    );
    Ok(())
}

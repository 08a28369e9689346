//! DPO through the `corenet` binary on UltraFeedback-layout pairs: a run killed with SIGKILL
//! resumes (reference reloaded and checked) to bit-identical weights and losses, and the
//! per-sequence log-probabilities the run logs equal transformers' on the exported weights
//! (an independent PyTorch forward) on the same rows.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use corenet_data::template::Template;
use corenet_e2e::{
    corenet_bin, corenet_ok, kill_after_step, metrics, reference_python_with, resumed_from,
    tiny_model_yaml, tokenizer_from_corpus,
};
use serde_json::{json, Value};

const STEPS: u64 = 64;

fn prepare(dir: &Path) -> Result<()> {
    let mut f = std::fs::File::create(dir.join("pairs.jsonl"))?;
    let mut corpus = String::new();
    let things = ["sky", "grass", "snow", "coal", "sun", "sea", "rose", "leaf"];
    for i in 0..32 {
        let thing = things[i % things.len()];
        let prompt = format!("tell me of the {thing}, number {i}.");
        let side = |answer: &str| json!([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]);
        let record = json!({
            "prompt": prompt,
            "chosen": side(&format!("the {thing} is lovely.")),
            "rejected": side("no, go away."),
        });
        writeln!(f, "{record}")?;
        let ((chosen, _), rejected) = Template::Preference
            .render_record(record.to_string().as_bytes())
            .map_err(anyhow::Error::msg)?;
        corpus.push_str(&chosen);
        corpus.push_str(&rejected.context("a rejected side")?.0);
    }
    std::fs::write(dir.join("corpus.txt"), corpus.repeat(2))?;
    tokenizer_from_corpus(dir, 400)?;
    std::fs::write(
        dir.join("dpo.yaml"),
        [
            "run: { name: dpo, dir: dpo_run }\n",
            &tiny_model_yaml(400, 64),
            &format!(
                r#"dpo: {{ loss: sigmoid, beta: 0.5 }}
data:
  tokenizer: tok/tokenizer.json
  seq_len: 48
  mode: pairs
  max_prompt_tokens: 32
  sources: [{{ name: uf, paths: [pairs.jsonl], template: preference }}]
schedule: {{ name: cosine, max_lr: 0.003, min_lr: 0.0003, warmup_iterations: 4 }}
trainer: {{ global_batch: 2, micro_batch: 2, steps: {STEPS}, threads: 1 }}
checkpoint: {{ interval: 8, keep_last: 0 }}
logging: {{ interval: 1, tensorboard: false, progress: false }}
"#
            ),
        ]
        .concat(),
    )?;
    Ok(())
}

fn train(dir: &Path, run: &str) -> Command {
    let mut cmd = Command::new(corenet_bin());
    cmd.current_dir(dir)
        .args(["train", "dpo.yaml", "--set"])
        .arg(format!("run.dir={run}"));
    cmd
}

#[test]
fn a_killed_dpo_run_resumes_bit_exactly_and_its_logps_match_pytorch() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    prepare(dir)?;
    let out = train(dir, "straight").output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = train(dir, "killed")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    kill_after_step(&mut child, &dir.join("killed/metrics.jsonl"), 10)?; // after the checkpoint at 8
    let resumed = train(dir, "killed").output()?;
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    ensure!(resumed.status.success(), "{stdout}");
    let from = resumed_from(&stdout).context("a `steps N..M` line")?;
    ensure!(from % 8 == 0 && (8..STEPS).contains(&from), "{stdout}");

    let model = |run: &str| {
        std::fs::read(
            dir.join(run)
                .join(format!("checkpoints/step-{STEPS:08}/model.safetensors")),
        )
    };
    ensure!(
        model("straight")? == model("killed")?,
        "final weights differ"
    );
    let logged = |run: &str| -> Vec<(Value, Value)> {
        metrics(&dir.join(run).join("metrics.jsonl"))
            .into_iter()
            .map(|m| (m["loss"].clone(), m["rewards/margins"].clone()))
            .collect()
    };
    ensure!(
        logged("straight") == logged("killed"),
        "logged losses differ"
    );
    let all = metrics(&dir.join("straight/metrics.jsonl"));
    let accuracy = |m: &[Value]| -> f64 {
        m.iter()
            .filter_map(|x| x["rewards/accuracies"].as_f64())
            .sum::<f64>()
            / m.len() as f64
    };
    let (early, late) = (accuracy(&all[..1]), accuracy(&all[48..]));
    ensure!(early == 0.0 && late > 0.9, "accuracy {early} -> {late}");
    check_logps_in_pytorch(dir, &all[8])
}

/// Step 9 scored batch 9 with the weights of the checkpoint at 8: transformers on that
/// checkpoint's HF export must find the same summed log-probabilities of both answers.
fn check_logps_in_pytorch(dir: &Path, step9: &Value) -> Result<()> {
    let Some(python) = reference_python_with("transformers") else {
        return Ok(());
    };
    ensure!(step9["step"] == 9, "{step9}");
    let checkpoint = "straight/checkpoints/step-00000008";
    corenet_ok(
        dir,
        &[
            "model",
            "export",
            "--checkpoint",
            checkpoint,
            "--out",
            "hf8",
        ],
    )?;
    let rows = corenet_ok(
        dir,
        &[
            "data",
            "peek",
            "--config",
            "dpo.yaml",
            "--batches",
            "9",
            "--json",
        ],
    )?;
    std::fs::write(dir.join("rows.json"), rows)?;
    let script = r#"
import json, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("hf8", trust_remote_code=True, dtype=torch.float32).eval()
rows = [r for r in json.load(open("rows.json")) if r["batch"] == 8]
pad = int(sys.argv[1])
out = []
for r in rows:
    ids = torch.tensor([r["tokens"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids[:, :-1]).logits.double(), -1)[0]
    targets = ids[0, 1:]
    keep = torch.tensor([not p for p in r["prompt"][1:]]) & (targets != pad)
    out.append(logp.gather(-1, targets[:, None])[:, 0][keep].sum().item())
print(json.dumps(out))
"#;
    let tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tok/tokenizer.json"))?)?;
    let pad = tokenizer["added_tokens"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["content"] == "<pad>"))
        .and_then(|t| t["id"].as_u64())
        .context("a <pad> token")?;
    let out = Command::new(python)
        .current_dir(dir)
        .args(["-c", script, &pad.to_string()])
        .env("HF_HOME", dir.join("hf-home"))
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<f64> = serde_json::from_slice(&out.stdout)?;
    ensure!(theirs.len() == 2, "{theirs:?}");
    for (key, theirs) in [("logps/chosen", theirs[0]), ("logps/rejected", theirs[1])] {
        let ours = step9[key].as_f64().context(key)?;
        let rel = (ours - theirs).abs() / theirs.abs().max(1.0);
        ensure!(rel < 1e-5, "{key}: ours {ours}, transformers {theirs}");
    }
    Ok(())
}

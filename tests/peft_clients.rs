//! corenet's LoRA and DoRA against HF PEFT (pip `peft`, applied by scripts/peft_reference.py to
//! the HF export of the base, loaded by transformers): after a short PEFT run through the
//! `corenet` binary, the checkpoint's adapters exported with `--format peft` load with
//! `PeftModel.from_pretrained` and give corenet's logits (within 1e-5, f32) and adapter
//! gradients (within 1e-5 relative); the `--merge-adapters` export opened in transformers gives
//! the same logits; PEFT's own initialisation on that base (DoRA magnitudes, B = 0, the bound
//! of A) is corenet's; adapter and base exported with `--vocab-size` load together and give
//! corenet's logits over the kept rows.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use corenet_e2e::{
    corenet_ok, reference_python_with, tiny_model_yaml, tokenizer_from_corpus, workspace_root,
};
use serde_json::json;
use tch::{Device, Tensor};

const TEXT: &str = "the king speaks of love and war in a castle by night while the queen rises";

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Shards, a tokenizer, a recipe, and a base trained for a few steps and exported as HF.
fn prepare(dir: &Path) -> Result<()> {
    let mut shard = std::fs::File::create(dir.join("shard.jsonl"))?;
    for i in 0..120 {
        let text = format!("{TEXT} {i} and the lord falls. The queen sings of the sea.");
        writeln!(shard, "{}", json!({ "text": text }))?;
    }
    let corpus = format!("{TEXT} The queen sings of the sea and the lord falls.\n").repeat(40);
    std::fs::write(dir.join("corpus.txt"), corpus)?;
    tokenizer_from_corpus(dir, 300)?;
    std::fs::write(
        dir.join("recipe.yaml"),
        [
            "run: { name: t, dir: base_run }\n",
            &tiny_model_yaml(320, 64),
            r#"data:
  tokenizer: tok/tokenizer.json
  seq_len: 32
  sources: [{ name: a, paths: [shard.jsonl] }]
schedule: { name: cosine, max_lr: 0.01, min_lr: 0.001, warmup_iterations: 2 }
trainer: { global_batch: 4, micro_batch: 2, steps: 6, threads: 2 }
checkpoint: { interval: 6, keep_last: 1 }
logging: { interval: 3, tensorboard: false, progress: false }
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
            "base_run/checkpoints/step-00000006",
            "--out",
            "base_hf",
        ],
    )?;
    Ok(())
}

/// A PEFT run from the base, and its two exports.
fn fine_tune(dir: &Path, method: &str) -> Result<()> {
    let run = format!("run.dir={method}_run");
    let method_set = format!("peft.method={method}");
    corenet_ok(
        dir,
        &[
            "train",
            "recipe.yaml",
            "--init-from",
            "base_hf",
            "--set",
            &run,
            "--set",
            &method_set,
            "--set",
            "peft.rank=4",
            "--set",
            "peft.alpha=8",
            "--set",
            "schedule.max_lr=0.02",
        ],
    )?;
    let checkpoint = format!("{method}_run/checkpoints/step-00000006");
    let adapter = format!("{method}_adapter");
    let merged = format!("{method}_merged");
    corenet_ok(
        dir,
        &[
            "model",
            "export",
            "--checkpoint",
            &checkpoint,
            "--format",
            "peft",
            "--out",
            &adapter,
        ],
    )?;
    corenet_ok(
        dir,
        &[
            "model",
            "export",
            "--checkpoint",
            &checkpoint,
            "--merge-adapters",
            "--out",
            &merged,
        ],
    )?;
    Ok(())
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let num = (a - b).norm().double_value(&[]);
    let den = b.norm().double_value(&[]).max(1e-30);
    num / den
}

fn check_against_peft(python: &Path, dir: &Path, method: &str) -> Result<()> {
    fine_tune(dir, method)?;
    let checkpoint = dir.join(format!("{method}_run/checkpoints/step-00000006"));
    let (_vs, model) = corenet_model::pretrained::open(&checkpoint, Device::Cpu)?;
    ensure!(
        model.has_adapters(),
        "the checkpoint opened without adapters"
    );
    let ids = Tensor::from_slice(&[1i64, 17, 42, 5, 99, 250, 3, 8, 64, 12, 7, 300]).view([2, 6]);
    let targets = ids.roll([-1i64].as_slice(), [1i64].as_slice());
    let logits = model.forward(&ids)?; // (B, T, V)
    let v = logits.size()[2];
    let loss = logits
        .view([-1, v])
        .cross_entropy_for_logits(&targets.view([-1]));
    loss.backward();
    let io = dir.join(format!("{method}_io.safetensors"));
    corenet_model::save_tensors(
        &[
            ("input_ids".into(), ids.shallow_clone()),
            ("targets".into(), targets),
        ],
        &io,
    )?;
    let out = dir.join(format!("{method}_peft.safetensors"));
    let status = Command::new(python)
        .current_dir(dir)
        .arg(workspace_root().join("scripts/peft_reference.py"))
        .args([
            "--base",
            "base_hf",
            "--adapter",
            &format!("{method}_adapter"),
        ])
        .args(["--batch", s(&io), "--out", s(&out)])
        .args(["--merged", &format!("{method}_merged")])
        .env("HF_HOME", dir.join("hf-home"))
        .output()?;
    ensure!(
        status.status.success(),
        "peft_reference.py: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let theirs: std::collections::HashMap<String, Tensor> =
        corenet_model::load_tensors(&out)?.into_iter().collect();
    let get = |k: &str| {
        theirs
            .get(k)
            .with_context(|| format!("{k} missing from peft's output"))
    };

    let logits = logits.detach();
    let diff = (&logits - get("logits")?).abs().max().double_value(&[]);
    ensure!(diff < 1e-5, "{method}: logits differ from peft's by {diff}");
    let merged = (&logits - get("merged_logits")?)
        .abs()
        .max()
        .double_value(&[]);
    ensure!(
        merged < 1e-5,
        "{method}: the merged export differs by {merged}"
    );

    let adapters = model.adapter_parameters();
    let mut compared = 0;
    for (name, p) in &adapters {
        let theirs = get(&format!("grad.{name}"))?;
        let d = rel_diff(&p.grad(), theirs);
        ensure!(
            d < 1e-5,
            "{method}: gradient of {name} differs by {d} (relative)"
        );
        compared += 1;
    }
    ensure!(compared == adapters.len() && compared > 0);
    eprintln!("{method}: max |logit diff| vs peft {diff:.3e}, merged export {merged:.3e}, {compared} adapter gradients within 1e-5 relative");

    // PEFT's initialisation on this base is ours.
    ensure!(
        get("fresh_b_max")?.double_value(&[0]) == 0.0,
        "PEFT's fresh B is not zero"
    );
    let ratio = get("fresh_a_bound_ratio")?.double_value(&[0]);
    ensure!(
        ratio <= 1.0 + 1e-6 && ratio > 0.5,
        "PEFT's A bound ratio {ratio}"
    );
    if method == "dora" {
        let (vs, mut fresh) = corenet_model::pretrained::open(&dir.join("base_hf"), Device::Cpu)?;
        let config = corenet_model::AdapterRecord::read(&checkpoint)?
            .context("adapters.json")?
            .peft;
        fresh.attach_adapters(&vs.root(), &config)?;
        let mut magnitudes = 0;
        for (name, m) in fresh.adapter_parameters() {
            let Some(module) = name.strip_suffix(".lora_magnitude_vector") else {
                continue;
            };
            let theirs = get(&format!("fresh_magnitude.{module}"))?;
            let d = (&m - theirs).abs().max().double_value(&[]);
            ensure!(d < 1e-6, "fresh DoRA magnitude of {module} differs by {d}");
            magnitudes += 1;
        }
        ensure!(magnitudes > 0, "no DoRA magnitude compared");
    }
    Ok(())
}

/// `--vocab-size 300` on both exports (the tokenizer's 300 ids of the model's 320 rows): PEFT
/// loads the trimmed adapter onto the trimmed base, and its logits are corenet's first 300.
fn check_trimmed_vocabulary(python: &Path, dir: &Path) -> Result<()> {
    let checkpoint = "lora_run/checkpoints/step-00000006";
    for (args, out) in [
        (vec!["--format", "peft"], "lora_adapter_300"),
        (vec![], "base_hf_300"),
    ] {
        let from = if out == "base_hf_300" {
            "base_run/checkpoints/step-00000006"
        } else {
            checkpoint
        };
        let mut all = vec![
            "model",
            "export",
            "--checkpoint",
            from,
            "--vocab-size",
            "300",
        ];
        all.extend(args);
        all.extend(["--out", out]);
        corenet_ok(dir, &all)?;
    }
    let (_vs, model) = corenet_model::pretrained::open(&dir.join(checkpoint), Device::Cpu)?;
    let ids = Tensor::from_slice(&[1i64, 17, 42, 5, 99, 250, 3, 8, 64, 12, 7, 299]).view([2, 6]);
    let ours = tch::no_grad(|| model.forward(&ids))?.narrow(2, 0, 300); // (B, T, 300)
    let io = dir.join("trimmed_io.safetensors");
    corenet_model::save_tensors(
        &[
            ("input_ids".into(), ids.shallow_clone()),
            (
                "targets".into(),
                ids.roll([-1i64].as_slice(), [1i64].as_slice()),
            ),
        ],
        &io,
    )?;
    let out = dir.join("trimmed_peft.safetensors");
    let run = Command::new(python)
        .current_dir(dir)
        .arg(workspace_root().join("scripts/peft_reference.py"))
        .args(["--base", "base_hf_300", "--adapter", "lora_adapter_300"])
        .args(["--batch", s(&io), "--out", s(&out)])
        .env("HF_HOME", dir.join("hf-home"))
        .output()?;
    ensure!(
        run.status.success(),
        "peft_reference.py on the trimmed exports: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let theirs = corenet_model::load_tensors(&out)?
        .into_iter()
        .find(|(name, _)| name == "logits")
        .context("logits missing from peft's output")?
        .1;
    ensure!(
        theirs.size() == ours.size(),
        "peft's logits are {:?}",
        theirs.size()
    );
    let diff = (&ours - &theirs).abs().max().double_value(&[]);
    ensure!(
        diff < 1e-5,
        "trimmed exports: logits differ from peft's by {diff}"
    );
    eprintln!("lora, --vocab-size 300: max |logit diff| vs peft {diff:.3e}");
    Ok(())
}

#[test]
fn lora_and_dora_match_hf_peft() -> Result<()> {
    let Some(python) = reference_python_with("peft, transformers") else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    prepare(tmp.path())?;
    check_against_peft(&python, tmp.path(), "lora")?;
    check_trimmed_vocabulary(&python, tmp.path())?;
    check_against_peft(&python, tmp.path(), "dora")?;
    Ok(())
}

//! Exports opened by the clients people run, none written here (scripts/export_clients.py
//! drives them): transformers (offline, `trust_remote_code`), mlx-lm (f32, 4- and 8-bit),
//! the `gguf` package (metadata and every tensor), lm-eval's `hf` backend, and llama.cpp when
//! `.cache/llama-cpp-venv` holds a build (scripts/llama_cpp_check.sh). Each compares with
//! corenet's own numbers on the same checkpoint. Without `.venv-ref` holding the clients the
//! client tests skip, unless CORENET_REQUIRE_REFERENCE is set (scripts/test.sh sets it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};
use corenet_e2e::{corenet_bin, corenet_ok, reference_python_with as python_with, workspace_root};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const TEXT: &str = "the king speaks of love and war in a castle by night while the queen rises";
const PROMPT: &str = "the king";
const NEW_TOKENS: &str = "12";

/// A trained tiny run, shared by the tests of this binary: 2 layers, widths that 32 and 64
/// divide (so every quantization applies), tied embeddings, a 300-token byte-level BPE.
struct Run {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    checkpoint: PathBuf,
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| train().expect("train the tiny run"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn train() -> Result<Run> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let mut shard = std::fs::File::create(dir.join("shard.jsonl"))?;
    for i in 0..200 {
        let text = format!("{TEXT} {i} and the lord falls. The queen sings of the sea.");
        writeln!(shard, "{}", json!({ "text": text }))?;
    }
    let corpus = format!("{TEXT} The queen sings of the sea and the lord falls.\n").repeat(50);
    std::fs::write(dir.join("corpus.txt"), corpus)?;
    corenet_ok(
        &dir,
        &[
            "tokenizer",
            "train",
            "--files",
            "corpus.txt",
            "--vocab-size",
            "300",
            "--out",
            "tok/tokenizer.json",
        ],
    )?;
    std::fs::write(
        dir.join("recipe.yaml"),
        r#"run: { name: t, dir: run }
model:
  vocab_size: 320
  max_context_length: 64
  num_transformer_layers: 2
  model_dim: 128
  head_dim: 32
  qkv_multipliers: [0.5, 1.0]
  num_gqa_groups: 2
  ffn_multipliers: [0.5, 2.0]
  ffn_dim_divisor: 64
  normalize_qk_projections: true
  share_input_output_layers: true
data:
  tokenizer: tok/tokenizer.json
  seq_len: 64
  sources: [{ name: a, paths: [shard.jsonl] }]
schedule: { name: cosine, max_lr: 0.01, min_lr: 0.001, warmup_iterations: 2 }
trainer: { global_batch: 4, micro_batch: 4, steps: 30, threads: 2 }
checkpoint: { interval: 10, keep_last: 3 }
logging: { interval: 10, tensorboard: false, progress: false }
"#,
    )?;
    corenet_ok(&dir, &["train", "recipe.yaml"])?;
    Ok(Run {
        checkpoint: dir.join("run/checkpoints/step-00000030"),
        dir,
        _tmp: tmp,
    })
}

/// Runs corenet in `dir` expecting failure; returns its stderr.
fn corenet_fails(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(corenet_bin())
        .current_dir(dir)
        .args(args)
        .output()?;
    ensure!(!out.status.success(), "corenet {args:?} succeeded");
    Ok(String::from_utf8(out.stderr)?)
}

/// Runs scripts/export_clients.py with `args` in `python`; its one line of JSON.
fn client(python: &Path, dir: &Path, args: &[&str]) -> Result<Value> {
    let script = workspace_root().join("scripts/export_clients.py");
    let out = Command::new(python)
        .current_dir(dir)
        .arg(script)
        .args(args)
        .env("HF_HOME", dir.join("hf-home"))
        .output()?;
    ensure!(
        out.status.success(),
        "export_clients.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let line = stdout.lines().last().context("no output")?;
    serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))
}

/// `corenet generate --json` greedy from `model` (its own tokenizer): (prompt ids, new ids).
fn corenet_greedy(model: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
    let out = corenet_ok(
        &run().dir,
        &[
            "generate",
            s(model),
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            NEW_TOKENS,
            "--json",
        ],
    )?;
    let v: Value = serde_json::from_str(out.trim())?;
    Ok((ids_of(&v["prompt_ids"]), until_eos(ids_of(&v["new_ids"]))))
}

fn until_eos(ids: Vec<u64>) -> Vec<u64> {
    ids.into_iter().take_while(|&i| i != 2).collect()
}

fn ids_of(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

fn joined(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn export(args: &[&str]) -> Result<String> {
    let mut all = vec!["model", "export", "--checkpoint"];
    all.push(s(&run().checkpoint));
    all.extend_from_slice(args);
    corenet_ok(&run().dir, &all)
}

/// A fixed batch (2 rows of 24 ids) with corenet's f32 logits for it, as safetensors.
fn logits_batch(path: &Path) -> Result<()> {
    let (_vs, model) = corenet_model::pretrained::open(&run().checkpoint, Device::Cpu)?;
    let ids: Vec<i64> = (0..48).map(|i| (i * 37 + 11) % 300).collect();
    let input = Tensor::from_slice(&ids).view([2, 24]);
    let logits = tch::no_grad(|| model.forward(&input))?.to_kind(Kind::Float);
    corenet_model::save_tensors(
        &[("input_ids".into(), input), ("logits".into(), logits)],
        path,
    )?;
    Ok(())
}

#[test]
fn transformers_loads_the_hf_export_offline_and_agrees_with_corenet() -> Result<()> {
    let Some(python) = python_with("torch, transformers") else {
        return Ok(());
    };
    let dir = &run().dir;
    let hf = dir.join("hf-transformers");
    export(&["--out", s(&hf)])?;
    for file in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "configuration_openelm.py",
        "modeling_openelm.py",
        "manifest.json",
        "README.md",
    ] {
        ensure!(hf.join(file).is_file(), "{file} missing from the export");
    }
    let batch = dir.join("batch.safetensors");
    logits_batch(&batch)?;
    let (prompt, greedy) = corenet_greedy(&run().checkpoint)?;
    ensure!(!greedy.is_empty(), "corenet generated nothing");
    let report = client(
        &python,
        dir,
        &[
            "transformers",
            s(&hf),
            "--batch",
            s(&batch),
            "--prompt-ids",
            &joined(&prompt),
            "--prompt-text",
            PROMPT,
            "--max-new-tokens",
            NEW_TOKENS,
        ],
    )?;
    eprintln!("{report}");
    let diff = report["max_abs_logit_diff"].as_f64().context("diff")?;
    ensure!(diff < 1e-5, "logits differ by {diff}");
    ensure!(
        ids_of(&report["greedy_ids"]) == greedy,
        "greedy: {report} vs {greedy:?}"
    );
    ensure!(
        ids_of(&report["greedy_ids_no_cache"]) == greedy,
        "no cache: {report}"
    );
    ensure!(
        ids_of(&report["prompt_text_ids"]) == prompt,
        "tokenizer: {report} vs {prompt:?}"
    );
    let special = &report["special"];
    ensure!(
        special["bos"] == "<s>"
            && special["eos"] == "</s>"
            && special["pad"] == "<pad>"
            && special["unk"] == "<unk>",
        "{special}"
    );
    // The export is what corenet's own commands accept, tokenizer included.
    let (_, from_export) = corenet_greedy(&hf)?;
    ensure!(
        from_export == greedy,
        "generate on the export: {from_export:?}"
    );
    Ok(())
}

/// Windows of held-out ids (BOS + text, 64 tokens) and corenet's perplexity on them.
fn held_out_windows(path: &Path) -> Result<f64> {
    let tokenizer = corenet_data::load_tokenizer(&run().checkpoint)?;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(i64::from(tokenizer.bos_id()));
        let text = format!("the queen speaks of the sea {i} while the lord rises by night.");
        ids.extend(tokenizer.encode(&text)?.into_iter().map(i64::from));
    }
    let windows: Vec<Vec<i64>> = ids.chunks_exact(64).map(<[i64]>::to_vec).collect();
    ensure!(windows.len() >= 2, "too few held-out tokens");
    std::fs::write(path, serde_json::to_vec(&windows)?)?;
    let (_vs, model) = corenet_model::pretrained::open(&run().checkpoint, Device::Cpu)?;
    let (mut nll, mut count) = (0.0, 0usize);
    for w in &windows {
        let x = Tensor::from_slice(w).view([1, -1]);
        let logits = tch::no_grad(|| model.forward(&x.narrow(1, 0, 63)))?;
        let loss = logits
            .view([63, -1])
            .cross_entropy_for_logits(&x.narrow(1, 1, 63).view([63]));
        nll += loss.double_value(&[]) * 63.0;
        count += 63;
    }
    Ok((nll / count as f64).exp())
}

#[test]
fn mlx_lm_generates_from_f32_and_quantized_exports() -> Result<()> {
    let Some(python) = python_with("mlx.core, mlx_lm") else {
        return Ok(());
    };
    let dir = &run().dir;
    let windows = dir.join("held_out.json");
    let corenet_ppl = held_out_windows(&windows)?;
    let (prompt, greedy) = corenet_greedy(&run().checkpoint)?;
    let mut ppl = Vec::new();
    for (name, args) in [
        ("mlx-f32", vec!["--dtype", "f32"]),
        ("mlx-q4", vec!["--quantize", "4", "--group-size", "64"]),
        ("mlx-q8", vec!["--quantize", "8", "--group-size", "32"]),
    ] {
        let out = dir.join(name);
        let mut all = vec!["--format", "mlx", "--out", s(&out)];
        all.extend(args);
        export(&all)?;
        let report = client(
            &python,
            dir,
            &[
                "mlx",
                s(&out),
                "--prompt-ids",
                &joined(&prompt),
                "--max-new-tokens",
                NEW_TOKENS,
                "--ppl-ids",
                s(&windows),
            ],
        )?;
        eprintln!("{name}: {report}");
        let quantized = report["quantized_modules"].as_u64().context("modules")?;
        let got = ids_of(&report["greedy_ids"]);
        match name {
            "mlx-f32" => {
                ensure!(got == greedy, "f32 greedy {got:?} vs corenet {greedy:?}");
                ensure!(quantized == 0, "f32 export has quantized modules");
            }
            // 2 layers × 4 matrices + the embedding.
            _ => {
                ensure!(quantized == 9, "{name}: {quantized} quantized modules");
                ensure!(!got.is_empty(), "{name} generated nothing");
            }
        }
        ppl.push((name, report["perplexity"].as_f64().context("perplexity")?));
    }
    eprintln!("held-out perplexity: corenet {corenet_ppl:.4}, {ppl:?}");
    let f32_ppl = ppl[0].1;
    ensure!(
        (f32_ppl - corenet_ppl).abs() <= 1e-4 * corenet_ppl,
        "mlx f32 perplexity {f32_ppl} vs corenet {corenet_ppl}"
    );
    for (name, p) in &ppl[1..] {
        ensure!(
            p.is_finite() && *p < 1.5 * f32_ppl,
            "{name}: perplexity {p} vs f32 {f32_ppl}"
        );
    }
    Ok(())
}

#[test]
fn gguf_files_carry_llama_cpp_metadata_the_tokenizer_and_the_weights() -> Result<()> {
    let Some(python) = python_with("gguf, numpy, safetensors") else {
        return Ok(());
    };
    let dir = &run().dir;
    let hf = dir.join("hf-gguf-reference");
    export(&["--out", s(&hf)])?;
    for (ty, file_type, tensor_types) in [
        ("f32", 0, json!({ "F32": 20 })),
        ("f16", 1, json!({ "F16": 11, "F32": 9 })),
        ("q8_0", 7, json!({ "Q8_0": 11, "F32": 9 })),
    ] {
        let file = dir.join(format!("model-{ty}.gguf"));
        export(&["--format", "gguf", "--type", ty, "--out", s(&file)])?;
        let report = client(&python, dir, &["gguf", s(&file), "--hf", s(&hf)])?;
        let m = &report["metadata"];
        ensure!(m["general.architecture"] == "openelm", "{report}");
        ensure!(m["general.file_type"] == file_type, "{report}");
        ensure!(
            m["openelm.block_count"] == 2 && m["openelm.embedding_length"] == 128,
            "{m}"
        );
        ensure!(m["openelm.attention.head_count"] == json!([2, 4]), "{m}");
        ensure!(m["openelm.attention.head_count_kv"] == json!([1, 2]), "{m}");
        ensure!(m["openelm.feed_forward_length"] == json!([64, 256]), "{m}");
        ensure!(
            m["openelm.rope.dimension_count"] == 32 && m["openelm.context_length"] == 64,
            "{m}"
        );
        ensure!(
            m["tokenizer.ggml.model"] == "gpt2" && m["tokenizer.ggml.pre"] == "gpt-2",
            "{m}"
        );
        ensure!(
            m["tokenizer.ggml.bos_token_id"] == 1 && m["tokenizer.ggml.eos_token_id"] == 2,
            "{m}"
        );
        // One token per embedding row: 300 from the tokenizer, 20 [PAD] rows.
        ensure!(report["tokens"] == 320, "{report}");
        ensure!(report["tensor_types"] == tensor_types, "{ty}: {report}");
        ensure!(report["tensors_checked"] == 20, "{report}");
        ensure!(report["max_abs_diff_unquantized"] == 0.0, "{report}");
    }
    Ok(())
}

#[test]
fn llama_cpp_generates_the_greedy_tokens_of_corenet_when_built() -> Result<()> {
    let python = workspace_root().join(".cache/llama-cpp-venv/bin/python");
    let built = Command::new(&python)
        .args(["-c", "import llama_cpp"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !built {
        // Building llama.cpp takes longer than CI allows; scripts/llama_cpp_check.sh does it
        // and docs/export.md records the outcome.
        eprintln!("skipped: no .cache/llama-cpp-venv (scripts/llama_cpp_check.sh builds it)");
        return Ok(());
    }
    let dir = &run().dir;
    let (prompt, greedy) = corenet_greedy(&run().checkpoint)?;
    for ty in ["f32", "q8_0"] {
        let file = dir.join(format!("llama-{ty}.gguf"));
        export(&["--format", "gguf", "--type", ty, "--out", s(&file)])?;
        let report = client(
            &python,
            dir,
            &[
                "llama-cpp",
                s(&file),
                "--prompt-ids",
                &joined(&prompt),
                "--max-new-tokens",
                NEW_TOKENS,
            ],
        )?;
        eprintln!("{ty}: {report}");
        let got = ids_of(&report["greedy_ids"]);
        match ty {
            "f32" => ensure!(got == greedy, "llama.cpp f32 {got:?} vs corenet {greedy:?}"),
            _ => ensure!(!got.is_empty(), "q8_0 generated nothing"),
        }
    }
    Ok(())
}

#[test]
fn lm_eval_scores_the_export_as_corenet_eval_tasks_does() -> Result<()> {
    let Some(python) = python_with("lm_eval, transformers") else {
        return Ok(());
    };
    let dir = &run().dir;
    let hf = dir.join("hf-lm-eval");
    export(&["--out", s(&hf)])?;
    let items = dir.join("piqa.jsonl");
    let mut f = std::fs::File::create(&items)?;
    let pairs = [
        ("the king speaks of", "love and war", "the sea falls"),
        ("the queen sings of", "the sea", "a castle by war"),
        (
            "a castle by",
            "night while the queen rises",
            "love of the lord",
        ),
        ("the lord", "falls", "sings of night"),
        ("love and", "war in a castle", "the queen"),
        (
            "in a castle by night while",
            "the queen rises",
            "the king falls of",
        ),
    ];
    for (i, (goal, right, wrong)) in pairs.iter().enumerate() {
        // The right answer sits first or second so that always picking one choice scores 0.5.
        let (sol1, sol2, label) = match i % 2 {
            0 => (right, wrong, 0),
            _ => (wrong, right, 1),
        };
        writeln!(
            f,
            "{}",
            json!({ "goal": goal, "sol1": sol1, "sol2": sol2, "label": label })
        )?;
    }
    drop(f);
    let ours: Value = serde_json::from_str(&corenet_ok(
        dir,
        &[
            "eval",
            "tasks",
            s(&hf),
            "--task",
            &format!("piqa={}", s(&items)),
            "--json",
        ],
    )?)?;
    let ours = &ours[0];
    let theirs = client(
        &python,
        dir,
        &[
            "lm-eval",
            s(&hf),
            "--items",
            s(&items),
            "--workdir",
            s(&dir.join("lm-eval-tasks")),
        ],
    )?;
    eprintln!("corenet {ours}\nlm-eval {theirs}");
    ensure!(theirs["items"] == 6 && ours["n"] == 6, "{ours} {theirs}");
    for key in ["acc", "acc_norm"] {
        let (a, b) = (ours[key].as_f64(), theirs[key].as_f64());
        match (a, b) {
            (Some(a), Some(b)) if (a - b).abs() < 1e-9 => {}
            _ => bail!("{key}: corenet {a:?}, lm-eval {b:?}"),
        }
    }
    Ok(())
}

fn listing(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    Ok(names)
}

#[test]
fn bad_export_targets_are_refused_before_anything_is_written() -> Result<()> {
    // A folder of its own: the other tests of this binary write into the run directory.
    let dir = &run().dir.join("bad-targets");
    std::fs::create_dir_all(dir)?;
    let full = dir.join("occupied");
    std::fs::create_dir_all(&full)?;
    std::fs::write(full.join("notes.txt"), "mine")?;
    let existing = dir.join("existing.gguf");
    std::fs::write(&existing, "not a model")?;
    let before = listing(dir)?;
    let checkpoint = s(&run().checkpoint);
    let cases: [(Vec<&str>, &[&str]); 6] = [
        (
            vec!["--out", s(&full)],
            &["occupied", "not empty", "notes.txt"],
        ),
        (
            vec!["--format", "gguf", "--out", s(&existing)],
            &["existing.gguf", "exists"],
        ),
        (
            vec!["--format", "onnx", "--out", "x"],
            &["onnx", "hf, mlx, gguf"],
        ),
        (
            vec![
                "--format",
                "mlx",
                "--quantize",
                "4",
                "--group-size",
                "128",
                "--out",
                "q",
            ],
            &["out_proj.weight", "[128, 64]", "group-size 128"],
        ),
        (
            vec!["--quantize", "4", "--out", "q"],
            &["quantize", "mlx only"],
        ),
        (
            vec!["--format", "mlx", "--quantize", "3", "--out", "q"],
            &["3 bits"],
        ),
    ];
    for (args, needles) in cases {
        let mut all = vec!["model", "export", "--checkpoint", checkpoint];
        all.extend(&args);
        let stderr = corenet_fails(dir, &all)?;
        for needle in needles {
            ensure!(
                stderr.contains(needle),
                "{args:?}: no `{needle}` in {stderr}"
            );
        }
        ensure!(listing(dir)? == before, "{args:?} wrote something");
    }
    ensure!(std::fs::read_to_string(full.join("notes.txt"))? == "mine");
    Ok(())
}

#[test]
fn an_average_is_a_checkpoint_every_command_accepts() -> Result<()> {
    let dir = &run().dir;
    // The run keeps 3 checkpoints; asking for 5 says how many there are.
    let stderr = corenet_fails(
        dir,
        &[
            "checkpoint",
            "average",
            "--dir",
            "run",
            "--last",
            "5",
            "--out",
            "avg5",
        ],
    )?;
    ensure!(
        stderr.contains("only 3") && stderr.contains("--last 3"),
        "{stderr}"
    );
    let stderr = corenet_fails(
        dir,
        &["checkpoint", "average", "--dir", "tok", "--out", "avg0"],
    )?;
    ensure!(
        stderr.contains("tok/checkpoints") && stderr.contains("checkpoint.dir"),
        "{stderr}"
    );
    // Given the run directory, averaging finds run/checkpoints.
    let out = corenet_ok(
        dir,
        &[
            "checkpoint",
            "average",
            "--dir",
            "run",
            "--last",
            "3",
            "--out",
            "avg",
        ],
    )?;
    ensure!(out.contains("[30, 20, 10]"), "{out}");
    let avg = dir.join("avg");
    for file in [
        "model.safetensors",
        "model_config.json",
        "tokenizer.json",
        "manifest.json",
    ] {
        ensure!(avg.join(file).is_file(), "{file} missing from the average");
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(avg.join("manifest.json"))?)?;
    ensure!(
        manifest["step"] == 30 && manifest["metadata"]["averaged_steps"] == json!([30, 20, 10]),
        "{manifest}"
    );
    // The mean of the three weight files, tensor by tensor.
    let load = |p: &Path| -> Result<std::collections::BTreeMap<String, Tensor>> {
        Ok(corenet_model::load_tensors(&p.join("model.safetensors"))?
            .into_iter()
            .collect())
    };
    let mean = load(&avg)?;
    let parts: Vec<_> = ["30", "20", "10"]
        .iter()
        .map(|step| load(&dir.join(format!("run/checkpoints/step-000000{step}"))))
        .collect::<Result<_>>()?;
    for (name, t) in &mean {
        let sum = parts
            .iter()
            .fold(Tensor::zeros_like(t).to_kind(Kind::Double), |acc, p| {
                acc + p[name].to_kind(Kind::Double)
            });
        let want = (sum / 3.0).to_kind(Kind::Float);
        ensure!(
            t.allclose(&want, 0.0, 1e-7, false),
            "{name} is not the mean"
        );
    }
    corenet_ok(
        dir,
        &[
            "generate",
            "avg",
            "--prompt",
            PROMPT,
            "--max-new-tokens",
            "4",
        ],
    )?;
    corenet_ok(
        dir,
        &["model", "export", "--checkpoint", "avg", "--out", "avg-hf"],
    )?;
    corenet_ok(
        dir,
        &[
            "model",
            "export",
            "--checkpoint",
            "avg",
            "--format",
            "gguf",
            "--out",
            "avg.gguf",
        ],
    )?;
    let items = dir.join("avg-piqa.jsonl");
    std::fs::write(
        &items,
        json!({ "goal": "the king", "sol1": "speaks", "sol2": "sea", "label": 0 }).to_string(),
    )?;
    corenet_ok(
        dir,
        &[
            "eval",
            "tasks",
            "avg",
            "--task",
            &format!("piqa={}", s(&items)),
        ],
    )?;
    corenet_ok(
        dir,
        &[
            "train",
            "recipe.yaml",
            "--init-from",
            "avg",
            "--set",
            "run.dir=from-avg",
            "--set",
            "trainer.steps=2",
        ],
    )?;
    // An HF export of it starts a run as well (its manifest verifies config and weights).
    corenet_ok(
        dir,
        &[
            "train",
            "recipe.yaml",
            "--init-from",
            "avg-hf",
            "--set",
            "run.dir=from-avg-hf",
            "--set",
            "trainer.steps=2",
        ],
    )?;
    Ok(())
}

//! The export API (corenet-export) on small random models: what each folder holds, that corenet's own loaders
//! accept it, and — with the reference venv — that a SentencePiece run's tokenizer reads the
//! same in transformers and `sentencepiece`, that GGUF embeds it as llama.cpp's `llama`
//! vocabulary, and that our modeling code passes its oracle checks
//! (scripts/hf_remote_code_check.py). Without `.venv-ref` the client checks skip, unless
//! CORENET_REQUIRE_REFERENCE is set.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use corenet_e2e::{reference_python_with as python_with, workspace_root};
use corenet_export::{export, ExportOptions, Format, GgufType};
use corenet_model::{OpenElm, OpenElmConfig};
use serde_json::Value;
use tch::{nn, Device};

fn root() -> PathBuf {
    workspace_root()
}

fn sp_fixture() -> PathBuf {
    root().join("crates/data/tests/fixtures/spm_bpe.model")
}

/// A random tied OpenELM with `vocab` rows, written as an HF folder (no tokenizer) in `dir`.
fn random_model(dir: &Path, vocab: usize) -> Result<()> {
    let config: OpenElmConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": vocab,
        "max_context_length": 64,
        "num_transformer_layers": 2,
        "model_dim": 64,
        "head_dim": 16,
        "qkv_multipliers": [0.5, 1.0],
        "num_gqa_groups": 2,
        "ffn_multipliers": [0.5, 2.0],
        "ffn_dim_divisor": 32,
        "normalize_qk_projections": true,
        "share_input_output_layers": true
    }))?;
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = OpenElm::new(&vs.root(), &config)?;
    corenet_model::hf::export_hf(&model, dir, None)?;
    Ok(())
}

fn python_json(python: &Path, code: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new(python)
        .arg("-c")
        .arg(code)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    ensure!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    serde_json::from_str(stdout.lines().last().context("no output")?).context("not JSON")
}

#[test]
fn a_sentencepiece_run_exports_its_model_file_and_an_equivalent_tokenizer_json() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let source = tmp.path().join("source");
    random_model(&source, 512)?;
    let out = tmp.path().join("hf");
    let summary = export(
        &source,
        Some(&sp_fixture()),
        &out,
        &ExportOptions::new(Format::Hf),
    )?;
    assert_eq!(summary.vocab_size, 512);
    ensure!(std::fs::read(out.join("tokenizer.model"))? == std::fs::read(sp_fixture())?);
    corenet_model::manifest::verify(&out)?;
    let config: Value = serde_json::from_slice(&std::fs::read(out.join("config.json"))?)?;
    ensure!(
        config["auto_map"]["AutoModelForCausalLM"] == "modeling_openelm.OpenELMForCausalLM",
        "{config}"
    );
    ensure!(
        config["bos_token_id"] == 1 && config["eos_token_id"] == 2,
        "{config}"
    );
    // LLaMA-style: no padding token, so padding is UNK.
    let special: Value =
        serde_json::from_slice(&std::fs::read(out.join("special_tokens_map.json"))?)?;
    ensure!(special["pad_token"] == "<unk>", "{special}");
    // corenet's own loaders take the export, tokenizer included.
    let (_vs, model) = corenet_model::pretrained::open(&out, Device::Cpu)?;
    assert_eq!(model.config().vocab_size, 512);
    let tokenizer = corenet_data::load_tokenizer(&out)?;
    let texts = [
        "Hello world",
        "  two  spaces and\ttabs",
        "naïve café — ünïcödé ✓",
        "</s> stays text",
    ];
    let ours: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            let mut ids = vec![tokenizer.bos_id()];
            ids.extend(tokenizer.encode(t)?);
            Ok(ids)
        })
        .collect::<Result<_>>()?;
    let Some(python) = python_with("transformers, sentencepiece") else {
        return Ok(());
    };
    let code = r#"
import json, sys
import sentencepiece
from transformers import AutoTokenizer
folder, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
sp = sentencepiece.SentencePieceProcessor(model_file=folder + "/tokenizer.model")
print(json.dumps({
    "hf": [tok(t).input_ids for t in texts],
    "sp": [[sp.bos_id()] + sp.encode(t) for t in texts],
    "decoded": tok.decode(tok(texts[0]).input_ids, skip_special_tokens=True),
}))
"#;
    let report = python_json(
        &python,
        code,
        &[
            out.to_str().context("path")?,
            &serde_json::to_string(&texts)?,
        ],
    )?;
    let ids = |key: &str| -> Vec<Vec<u64>> {
        serde_json::from_value(report[key].clone()).unwrap_or_default()
    };
    let ours: Vec<Vec<u64>> = ours
        .iter()
        .map(|v| v.iter().map(|&i| u64::from(i)).collect())
        .collect();
    // The literal "</s>" is text to SentencePiece; tokenizer.json cannot store that, so
    // transformers matches it as the special token: the known, documented difference.
    for i in 0..3 {
        ensure!(
            ids("sp")[i] == ours[i],
            "sentencepiece vs corenet on {:?}",
            texts[i]
        );
        ensure!(
            ids("hf")[i] == ours[i],
            "transformers vs corenet on {:?}: {report}",
            texts[i]
        );
    }
    ensure!(report["decoded"] == texts[0], "{report}");
    Ok(())
}

#[test]
fn a_sentencepiece_run_becomes_llama_cpps_llama_vocabulary_in_gguf() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let source = tmp.path().join("source");
    random_model(&source, 520)?;
    let file = tmp.path().join("m.gguf");
    let mut opts = ExportOptions::new(Format::Gguf);
    opts.gguf_type = Some(GgufType::F16);
    export(&source, Some(&sp_fixture()), &file, &opts)?;
    ensure!(file.is_file());
    let Some(python) = python_with("gguf, sentencepiece") else {
        return Ok(());
    };
    let code = r#"
import json, sys
import sentencepiece
from gguf import GGUFReader
r = GGUFReader(sys.argv[1])
sp = sentencepiece.SentencePieceProcessor(model_file=sys.argv[2])
f = r.fields
text = lambda k: bytes(f[k].parts[f[k].data[0]]).decode()
tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode() for i in f["tokenizer.ggml.tokens"].data]
scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data]
types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
n = sp.vocab_size()
print(json.dumps({
    "model": text("tokenizer.ggml.model"),
    "tokens_match": tokens[:n] == [sp.id_to_piece(i) for i in range(n)],
    "scores_match": scores[:n] == [sp.get_score(i) for i in range(n)],
    "padding": tokens[n:],
    "pad_types": sorted(set(types[n:])),
    "control": [types[sp.bos_id()], types[sp.eos_id()]],
    "unknown": types[sp.unk_id()],
}))
"#;
    let report = python_json(
        &python,
        code,
        &[
            file.to_str().context("path")?,
            sp_fixture().to_str().context("path")?,
        ],
    )?;
    ensure!(report["model"] == "llama", "{report}");
    ensure!(
        report["tokens_match"] == true && report["scores_match"] == true,
        "{report}"
    );
    let padding: Vec<String> = serde_json::from_value(report["padding"].clone())?;
    ensure!(padding.len() == 8 && padding[0] == "[PAD512]", "{report}");
    ensure!(report["pad_types"] == serde_json::json!([5]), "{report}");
    ensure!(
        report["control"] == serde_json::json!([3, 3]) && report["unknown"] == 2,
        "{report}"
    );
    Ok(())
}

#[test]
fn our_modeling_code_passes_its_oracle_checks_in_transformers() -> Result<()> {
    let Some(python) = python_with("torch, transformers, safetensors") else {
        return Ok(());
    };
    let out = Command::new(python)
        .arg(root().join("scripts/hf_remote_code_check.py"))
        .env("HF_HUB_OFFLINE", "1")
        .output()?;
    ensure!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn a_checkpoint_without_a_tokenizer_says_to_pass_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let source = tmp.path().join("source");
    random_model(&source, 512)?;
    let out = tmp.path().join("hf");
    let err =
        export(&source, None, &out, &ExportOptions::new(Format::Hf)).expect_err("no tokenizer");
    let text = err.to_string();
    ensure!(
        text.contains("--tokenizer") && text.contains("source"),
        "{text}"
    );
    ensure!(!out.exists(), "nothing written");
    // A tokenizer with more ids than the exported rows is refused before writing.
    let mut opts = ExportOptions::new(Format::Hf);
    opts.vocab_size = Some(500);
    let err = export(&source, Some(&sp_fixture()), &out, &opts).expect_err("rows");
    ensure!(err.to_string().contains("512 ids"), "{err}");
    ensure!(!out.exists(), "nothing written");
    Ok(())
}

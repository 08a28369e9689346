//! An exported HF folder read by an independent PyTorch reader (scripts/hf_openelm_reader.py,
//! written from the HF layout, sharing no code with corenet-rs) gives the same logits as the
//! model that exported it, within 1e-5 in f32; a folder with one tensor perturbed does not.
//! Needs the reference venv (`scripts/setup.sh --reference`); without an importable torch the
//! test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

use corenet_model::hf::export_hf;
use corenet_model::{load_tensors, save_tensors, Multiplier, OpenElm, OpenElmConfig};
use tch::{nn, Device, Tensor};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn reference_python() -> Option<PathBuf> {
    let python = workspace_root().join(".venv-ref/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import torch, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

/// Logits (B, T, V) of the reader for `ids`.
fn reader_logits(python: &Path, folder: &Path, ids: &[Vec<i64>]) -> Tensor {
    let out = folder.join("reader_logits.safetensors");
    let ids_json = serde_json::to_string(ids).expect("ids json");
    let o = Command::new(python)
        .arg(workspace_root().join("scripts/hf_openelm_reader.py"))
        .arg(folder)
        .args(["--ids", &ids_json, "--out"])
        .arg(&out)
        .output()
        .expect("run the reader");
    assert!(
        o.status.success(),
        "reader failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut tensors = load_tensors(&out).expect("reader output");
    assert_eq!(tensors.len(), 1);
    tensors.remove(0).1
}

fn config(tied: bool) -> OpenElmConfig {
    OpenElmConfig {
        ffn_multipliers: Multiplier::Range(vec![0.5, 4.0]),
        share_input_output_layers: tied,
        ..OpenElmConfig::miniature(67, 4, 32, 8)
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn independent_pytorch_reader_matches_exported_logits() {
    let Some(python) = reference_python() else {
        assert!(
            std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
            "no .venv-ref with torch + safetensors, and CORENET_REQUIRE_REFERENCE is set"
        );
        eprintln!("skipped: no .venv-ref with torch + safetensors (scripts/setup.sh --reference)");
        return;
    };
    let ids: Vec<Vec<i64>> = vec![
        vec![1, 5, 9, 33, 60, 2, 17, 44, 8, 3, 66, 12],
        vec![1, 64, 0, 7, 7, 7, 21, 50, 19, 30, 31, 2],
    ];
    let input = Tensor::from_slice2(&ids);
    for tied in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = OpenElm::new(&vs.root(), &config(tied)).expect("valid");
        let ours = tch::no_grad(|| model.forward(&input)).expect("forward"); // (B, T, V)
        export_hf(&model, dir.path(), None).expect("export");
        let theirs = reader_logits(&python, dir.path(), &ids);
        assert_eq!(theirs.size(), ours.size());
        let diff = max_diff(&ours, &theirs);
        eprintln!("tied={tied}: max |logit difference| {diff:e}");
        assert!(diff < 1e-5, "tied={tied}: logits differ by {diff:e}");

        // The check has teeth: swap layer 1's K and V blocks of the fused projection.
        let weights = dir.path().join("model.safetensors");
        let perturbed: Vec<(String, Tensor)> = model
            .named_parameters()
            .into_iter()
            .map(|(name, t)| {
                if name != "transformer.layers.1.attn.qkv_proj.weight" {
                    return (name, t);
                }
                let dims = model.layer_dims()[1];
                let (q, kv) = (dims.query_heads as i64 * 8, dims.kv_heads as i64 * 8);
                let swapped = Tensor::cat(
                    &[
                        t.narrow(0, 0, q),
                        t.narrow(0, q + kv, kv),
                        t.narrow(0, q, kv),
                    ],
                    0,
                );
                (name, swapped)
            })
            .collect();
        save_tensors(&perturbed, &weights).expect("rewrite");
        let wrong = reader_logits(&python, dir.path(), &ids);
        let diff = max_diff(&ours, &wrong);
        assert!(
            diff > 1e-3,
            "tied={tied}: perturbed weights went unnoticed ({diff:e})"
        );
    }
}

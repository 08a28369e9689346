//! Safetensors with HF names: a bit-exact round trip, and clear errors for bad files.

use std::path::Path;

use corenet_model::{save_tensors, tensor_shapes, Error, Multiplier, OpenElm, OpenElmConfig};
use tch::{nn, Device, Kind, Tensor};

fn tiny() -> OpenElmConfig {
    OpenElmConfig {
        vocab_size: 61,
        num_transformer_layers: 2,
        model_dim: 32,
        head_dim: 8,
        qkv_multipliers: Multiplier::Range(vec![0.5, 1.0]),
        num_gqa_groups: 2,
        ffn_multipliers: Multiplier::Range(vec![1.0, 2.0]),
        ffn_dim_divisor: 8,
        normalize_qk_projections: true,
        share_input_output_layers: true,
        ..OpenElmConfig::default()
    }
}

fn model(seed: i64, kind: Kind) -> (nn::VarStore, OpenElm) {
    tch::manual_seed(seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let m = OpenElm::new(&vs.root(), &tiny()).expect("valid");
    vs.set_kind(kind);
    (vs, m)
}

fn assert_bit_identical(a: &OpenElm, b: &OpenElm) {
    for ((name, x), (_, y)) in a.named_parameters().iter().zip(b.named_parameters()) {
        assert!(x.equal(&y), "{name} differs");
    }
}

#[test]
fn names_match_hf_layout_and_shapes() {
    let (vs, m) = model(0, Kind::Float);
    let shapes = tensor_shapes(&tiny()).expect("valid");
    let params = m.named_parameters();
    assert_eq!(params.len(), 8 * 2 + 2);
    assert_eq!(shapes.len(), params.len());
    for ((name, shape), (pname, tensor)) in shapes.iter().zip(&params) {
        assert_eq!(name, pname);
        assert_eq!(&tensor.size(), shape, "{name}");
    }
    // The VarStore holds exactly these names (no '.'-mangling, no extras).
    let mut stored: Vec<String> = vs.variables().into_keys().collect();
    stored.sort();
    let mut expected: Vec<String> = shapes.into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(stored, expected);
    assert!(expected.contains(&"transformer.layers.1.attn.qkv_proj.weight".to_string()));
}

#[test]
fn round_trip_is_bit_exact_in_f32_and_bf16() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in [Kind::Float, Kind::BFloat16] {
        let (_vs_a, a) = model(1, kind);
        let path = dir.path().join(format!("{kind:?}.safetensors"));
        a.save_safetensors(&path).expect("save");
        let (_vs_b, b) = model(2, kind);
        b.load_safetensors(&path).expect("load");
        assert_bit_identical(&a, &b);
    }
}

#[test]
fn file_carries_pt_format_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, a) = model(3, Kind::Float);
    let path = dir.path().join("m.safetensors");
    a.save_safetensors(&path).expect("save");
    let bytes = std::fs::read(&path).expect("read");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let format = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned());
    assert_eq!(format.as_deref(), Some("pt"));
}

/// Saves the model's tensors after `edit` has changed the list.
fn write_edited(path: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let (_vs, a) = model(4, Kind::Float);
    let mut tensors = a.named_parameters();
    edit(&mut tensors);
    save_tensors(&tensors, path).expect("save");
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.safetensors");
    write_edited(&path, |t| {
        t.retain(|(n, _)| n != "transformer.layers.1.ffn.proj_2.weight")
    });
    let (_vs, m) = model(5, Kind::Float);
    match m.load_safetensors(&path) {
        Err(Error::MissingTensor { name, .. }) => {
            assert_eq!(name, "transformer.layers.1.ffn.proj_2.weight")
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn extra_tensor_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("extra.safetensors");
    write_edited(&path, |t| {
        t.push((
            "lm_head.weight".into(),
            Tensor::zeros([61, 32], (Kind::Float, Device::Cpu)),
        ))
    });
    let (_vs, m) = model(6, Kind::Float);
    match m.load_safetensors(&path) {
        Err(Error::UnexpectedTensor { name, .. }) => assert_eq!(name, "lm_head.weight"),
        other => panic!("expected UnexpectedTensor, got {other:?}"),
    }
}

#[test]
fn mis_shaped_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shape.safetensors");
    write_edited(&path, |t| {
        for (name, tensor) in t.iter_mut() {
            if name == "transformer.layers.0.attn.out_proj.weight" {
                *tensor = Tensor::zeros([32, 17], (Kind::Float, Device::Cpu));
            }
        }
    });
    let (_vs, m) = model(7, Kind::Float);
    let err = m.load_safetensors(&path).expect_err("bad shape");
    let message = err.to_string();
    assert!(
        message.contains("transformer.layers.0.attn.out_proj.weight"),
        "{message}"
    );
    assert!(
        message.contains("[32, 17]") && message.contains("[32, 16]"),
        "{message}"
    );
}

#[test]
fn truncated_and_absent_files_fail_with_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.safetensors");
    write_edited(&path, |_| {});
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let (_vs, m) = model(8, Kind::Float);
    let err = m.load_safetensors(&path).expect_err("truncated");
    assert!(matches!(err, Error::SafeTensors { .. }), "{err}");
    assert!(err.to_string().contains("t.safetensors"));
    let err = m
        .load_safetensors(&dir.path().join("absent.safetensors"))
        .expect_err("absent");
    assert!(err.to_string().contains("absent.safetensors"), "{err}");
}

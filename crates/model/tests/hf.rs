//! HF OpenELM folders: export → import is bit-exact; config.json carries the per-layer lists;
//! a config whose stored lists disagree with its multipliers is rejected naming the field.

use corenet_model::hf::{export_hf, hf_config, read_hf_config};
use corenet_model::{OpenElm, OpenElmConfig};
use tch::{nn, Device};

fn tiny() -> OpenElmConfig {
    OpenElmConfig::miniature(61, 3, 32, 8)
}

fn model(config: &OpenElmConfig) -> (nn::VarStore, OpenElm) {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = OpenElm::new(&vs.root(), config).expect("valid");
    (vs, m)
}

#[test]
fn export_then_import_is_bit_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_a_vs, a) = model(&tiny());
    export_hf(&a, dir.path(), None).expect("export");
    let config = read_hf_config(dir.path()).expect("config.json");
    assert_eq!(
        config.layers().expect("valid"),
        tiny().layers().expect("valid")
    );
    let (_b_vs, b) = model(&config);
    b.load_safetensors(&dir.path().join("model.safetensors"))
        .expect("weights");
    for ((name, x), (_, y)) in a.named_parameters().iter().zip(b.named_parameters()) {
        assert!(x.equal(&y), "{name}");
    }
    let generation: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("generation_config.json")).expect("read"),
    )
    .expect("json");
    assert_eq!(
        (
            generation["bos_token_id"].as_u64(),
            generation["eos_token_id"].as_u64()
        ),
        (Some(1), Some(2))
    );
}

#[test]
fn export_can_cut_the_training_vocabulary_to_the_tokenizer_s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, a) = model(&tiny());
    export_hf(&a, dir.path(), Some(50)).expect("export");
    let config = read_hf_config(dir.path()).expect("config");
    assert_eq!(config.vocab_size, 50);
    let (_b_vs, b) = model(&config);
    b.load_safetensors(&dir.path().join("model.safetensors"))
        .expect("weights");
    assert!(b
        .token_embeddings
        .equal(&a.token_embeddings.narrow(0, 0, 50)));
    assert!(
        export_hf(&a, dir.path(), Some(62)).is_err(),
        "cannot grow the vocabulary"
    );
}

#[test]
fn openelm_270m_config_json_has_the_published_lists() {
    let mut c = OpenElmConfig::preset("OpenELM-270M").expect("preset");
    c.vocab_size = 32000;
    let v = hf_config(&c).expect("config");
    assert_eq!(v["model_type"], "openelm");
    let q: Vec<u64> = serde_json::from_value(v["num_query_heads"].clone()).expect("list");
    assert_eq!(
        q,
        vec![12, 12, 12, 12, 12, 16, 16, 16, 16, 16, 16, 16, 20, 20, 20, 20]
    );
    let ffn: Vec<f64> = serde_json::from_value(v["ffn_multipliers"].clone()).expect("list");
    assert_eq!(ffn.len(), 16);
    assert_eq!((ffn[1], ffn[15]), (0.73, 4.0));
}

#[test]
fn inconsistent_config_json_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, a) = model(&tiny());
    export_hf(&a, dir.path(), None).expect("export");
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    v["num_query_heads"] = serde_json::json!([2, 2, 2]);
    std::fs::write(&path, v.to_string()).expect("write");
    let err = read_hf_config(dir.path()).expect_err("mismatch");
    assert!(err.to_string().contains("num_query_heads"), "{err}");
    v["model_type"] = serde_json::json!("llama");
    std::fs::write(&path, v.to_string()).expect("write");
    assert!(read_hf_config(dir.path())
        .expect_err("not openelm")
        .to_string()
        .contains("model_type"));
}

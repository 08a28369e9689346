//! Loading existing weights into a model built from a recipe: a sharded HF folder (index json +
//! three shard files, as Apple's 3B) loads bit-exactly; the vocabulary is resized between 32000
//! and 32128 rows both ways; an architecture mismatch names the field; a truncated shard names
//! the file.

use std::collections::BTreeMap;
use std::path::Path;

use corenet_model::hf::{export_hf, hf_config};
use corenet_model::pretrained::{load_pretrained, open, weight_files, INDEX_FILE};
use corenet_model::{save_tensors, Multiplier, OpenElm, OpenElmConfig};
use tch::{nn, Device, Tensor};

fn tiny(vocab_size: usize) -> OpenElmConfig {
    OpenElmConfig::miniature(vocab_size, 3, 16, 4)
}

fn model(config: &OpenElmConfig, seed: i64) -> (nn::VarStore, OpenElm) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let m = OpenElm::new(&vs.root(), config).expect("valid");
    (vs, m)
}

/// Writes `m` as an HF folder with its tensors split over three shards and an index.
fn write_sharded(m: &OpenElm, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let params = m.named_parameters();
    let mut weight_map = BTreeMap::new();
    let mut total = 0;
    for (k, chunk) in params.chunks(params.len().div_ceil(3)).enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", k + 1);
        save_tensors(chunk, &dir.join(&file)).expect("shard");
        for (name, t) in chunk {
            weight_map.insert(name.clone(), file.clone());
            total += t.numel() * 4;
        }
    }
    let index =
        serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    std::fs::write(dir.join(INDEX_FILE), index.to_string()).expect("index");
    let config = hf_config(m.config()).expect("config");
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config.json");
}

fn assert_same(a: &OpenElm, b: &OpenElm) {
    for ((name, x), (_, y)) in a.named_parameters().iter().zip(b.named_parameters()) {
        assert!(x.equal(&y), "{name} differs");
    }
}

#[test]
fn sharded_hf_folder_loads_bit_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, a) = model(&tiny(40), 1);
    write_sharded(&a, dir.path());
    let files = weight_files(dir.path()).expect("index");
    assert_eq!(files.len(), 3);
    assert!(!dir.path().join("model.safetensors").exists());

    let (_b_vs, b) = model(&tiny(40), 2);
    load_pretrained(&b, dir.path()).expect("load");
    assert_same(&a, &b);
    let (_c_vs, c) = open(dir.path(), Device::Cpu).expect("open");
    assert_same(&a, &c);
}

#[test]
fn vocabulary_grows_from_32000_to_32128_rows_keeping_the_new_rows_initialised() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, hf) = model(&tiny(32000), 1);
    export_hf(&hf, dir.path(), None).expect("export");
    let (_b_vs, b) = model(&tiny(32128), 2);
    let before = b.token_embeddings.copy();
    load_pretrained(&b, dir.path()).expect("load");
    assert!(b
        .token_embeddings
        .narrow(0, 0, 32000)
        .equal(&hf.token_embeddings));
    assert!(b
        .token_embeddings
        .narrow(0, 32000, 128)
        .equal(&before.narrow(0, 32000, 128)));
    assert!(!before
        .narrow(0, 32000, 128)
        .equal(&Tensor::zeros_like(&before.narrow(0, 32000, 128))));
    assert!(b.layers[2].attn.qkv_proj.equal(&hf.layers[2].attn.qkv_proj));
}

#[test]
fn vocabulary_shrinks_from_32128_to_32000_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, corenet) = model(&tiny(32128), 1);
    export_hf(&corenet, dir.path(), None).expect("export");
    let (_b_vs, b) = model(&tiny(32000), 2);
    load_pretrained(&b, dir.path()).expect("load");
    assert!(b
        .token_embeddings
        .equal(&corenet.token_embeddings.narrow(0, 0, 32000)));
    assert!(b.norm.weight.equal(&corenet.norm.weight));
}

/// A corenet checkpoint folder as the store writes one: weights, config and a manifest of both.
fn corenet_checkpoint(dir: &Path, a: &OpenElm) {
    a.save_safetensors(&dir.join("model.safetensors"))
        .expect("save");
    std::fs::write(
        dir.join("model_config.json"),
        serde_json::to_string(a.config()).expect("json"),
    )
    .expect("config");
    let files = ["model.safetensors", "model_config.json"]
        .into_iter()
        .map(|f| {
            let digest = corenet_model::manifest::file_digest(&dir.join(f)).expect("digest");
            (f.to_string(), digest)
        })
        .collect();
    let manifest = corenet_model::manifest::Manifest {
        format_version: corenet_model::manifest::MANIFEST_FORMAT_VERSION,
        step: 1,
        files,
        metadata: Default::default(),
    };
    std::fs::write(
        dir.join(corenet_model::manifest::MANIFEST_FILE),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("manifest");
}

#[test]
fn a_corenet_checkpoint_directory_loads_through_model_config_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, a) = model(&tiny(40), 1);
    corenet_checkpoint(dir.path(), &a);
    let (_b_vs, b) = model(&tiny(40), 2);
    load_pretrained(&b, dir.path()).expect("load");
    assert_same(&a, &b);
}

#[test]
fn a_corenet_checkpoint_is_verified_before_it_is_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, a) = model(&tiny(40), 1);
    corenet_checkpoint(dir.path(), &a);
    let weights = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&weights).expect("read");
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(&weights, bytes).expect("write");
    let (_b_vs, b) = model(&tiny(40), 2);
    let err = load_pretrained(&b, dir.path())
        .expect_err("flipped byte")
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("sha256"),
        "{err}"
    );
    // Without its manifest the folder is an incomplete checkpoint, not an unverified one.
    std::fs::remove_file(dir.path().join(corenet_model::manifest::MANIFEST_FILE)).expect("rm");
    let err = load_pretrained(&b, dir.path())
        .expect_err("no manifest")
        .to_string();
    assert!(err.contains("without manifest.json"), "{err}");
}

#[test]
fn architecture_mismatch_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, a) = model(&tiny(40), 1);
    export_hf(&a, dir.path(), None).expect("export");
    let wider = OpenElmConfig {
        model_dim: 32,
        ..tiny(40)
    };
    let (_b_vs, b) = model(&wider, 2);
    let err = load_pretrained(&b, dir.path()).expect_err("model_dim differs");
    assert!(err.to_string().contains("`model_dim` is 16"), "{err}");

    let other_ffn = OpenElmConfig {
        ffn_multipliers: Multiplier::Range(vec![0.5, 4.0]),
        ..tiny(40)
    };
    let (_c_vs, c) = model(&other_ffn, 2);
    let err = load_pretrained(&c, dir.path()).expect_err("ffn differs");
    assert!(err.to_string().contains("ffn_multipliers"), "{err}");
}

#[test]
fn truncated_shard_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_vs, a) = model(&tiny(40), 1);
    write_sharded(&a, dir.path());
    let shard = dir.path().join("model-00002-of-00003.safetensors");
    let bytes = std::fs::read(&shard).expect("read");
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).expect("truncate");
    let (_b_vs, b) = model(&tiny(40), 2);
    let err = load_pretrained(&b, dir.path()).expect_err("truncated");
    assert!(
        err.to_string().contains("model-00002-of-00003.safetensors"),
        "{err}"
    );

    // A shard the index names but that is gone.
    std::fs::remove_file(&shard).expect("remove");
    let err = load_pretrained(&b, dir.path()).expect_err("missing shard");
    assert!(
        err.to_string().contains("model-00002-of-00003.safetensors"),
        "{err}"
    );
}

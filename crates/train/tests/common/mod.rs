//! A tiny, real training setup: jsonl and gzip shards of synthetic text, a BPE tokenizer trained
//! on it, and a recipe for a 3-layer OpenELM.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

const WORDS: [&str; 24] = [
    "the", "king", "queen", "speaks", "of", "love", "and", "war", "in", "a", "castle", "by",
    "night", "sword", "crown", "falls", "rises", "gold", "river", "storm", "quiet", "lord", "lady",
    "dream",
];

/// Deterministic pseudo-English documents.
fn documents(n: usize, seed: u64) -> Vec<String> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            let len = 20 + (x % 40) as usize;
            (0..len)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    WORDS[((x >> 33) % WORDS.len() as u64) as usize]
                })
                .collect::<Vec<_>>()
                .join(" ")
                + "."
        })
        .collect()
}

/// Writes shards and a tokenizer under `dir`; returns a recipe value for a run in `dir/run`.
pub fn setup(dir: &Path) -> Value {
    let docs_a = documents(120, 1);
    let docs_b = documents(120, 2);
    let jsonl = dir.join("a.jsonl");
    let mut f = std::fs::File::create(&jsonl).expect("create");
    for d in &docs_a {
        writeln!(f, "{}", json!({ "text": d })).expect("write");
    }
    let gz = dir.join("b.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).expect("create"),
        flate2::Compression::fast(),
    );
    for d in &docs_b {
        writeln!(enc, "{}", json!({ "text": d })).expect("write");
    }
    enc.finish().expect("finish gz");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, [docs_a, docs_b].concat().join("\n")).expect("corpus");
    let tokenizer = dir.join("tokenizer.json");
    corenet_data::train_tokenizer(
        &[corpus],
        300,
        &corenet_data::DEFAULT_SPECIAL_TOKENS,
        &tokenizer,
    )
    .expect("tokenizer");
    json!({
        "run": { "name": "test", "dir": dir.join("run") },
        "model": {
            "vocab_size": 320, "num_transformer_layers": 3, "model_dim": 32, "head_dim": 8,
            "qkv_multipliers": [0.5, 1.0], "num_gqa_groups": 2, "ffn_multipliers": [0.5, 2.0],
            "ffn_dim_divisor": 8, "normalize_qk_projections": true, "share_input_output_layers": true
        },
        "data": {
            "sources": [
                { "name": "a", "paths": [jsonl], "weight": 1.0 },
                { "name": "b", "paths": [gz], "weight": 2.0 }
            ],
            "tokenizer": tokenizer, "seq_len": 32, "workers": 2, "seed": 5
        },
        "optimizer": { "weight_decay": 0.1, "grad_clip": 1.0 },
        "schedule": { "name": "cosine", "max_lr": 3e-3, "min_lr": 3e-4, "warmup_iterations": 3, "warmup_init_lr": 1e-5 },
        "trainer": { "global_batch": 8, "micro_batch": 4, "steps": 12, "seed": 3, "threads": 1 },
        "checkpoint": { "interval": 4, "keep_last": 5 },
        "logging": { "interval": 1, "tensorboard": true, "progress": false }
    })
}

/// Pairs whose chosen answer is always in one register and the rejected one in another, about
/// varied prompts: a preference that carries over to prompts the run has not seen.
#[allow(dead_code)] // the DPO tests'
pub fn write_pairs(path: &Path, n: usize) {
    let nouns = [
        "king", "queen", "lord", "lady", "river", "storm", "sword", "crown",
    ];
    let verbs = ["rises", "falls", "speaks", "dreams"];
    let mut f = std::fs::File::create(path).expect("create");
    for i in 0..n {
        let (a, b) = (nouns[i % 8], nouns[(i / 8 + 3) % 8]);
        let prompt = format!("what of the {a} and the {b}?");
        let chosen = format!("the {a} {} in gold and love.", verbs[i % 4]);
        let rejected = format!("war war storm {b} night night.");
        let side = |answer: &str| json!([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]);
        let record =
            json!({"prompt": prompt, "chosen": side(&chosen), "rejected": side(&rejected)});
        writeln!(f, "{record}").expect("write");
    }
}

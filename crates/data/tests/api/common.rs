//! Shared fixtures: a tiny BPE tokenizer trained in-process and synthetic documents.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use corenet_data::sample::{write_jsonl, write_parquet, LineCompression};
use corenet_data::template::{alpaca_prompt, Template};
use corenet_data::{
    train_tokenizer_from_texts, DataConfig, DataStream, HfTokenizer, LossOn, SourceConfig,
    TextTokenizer, DEFAULT_SPECIAL_TOKENS,
};
use serde_json::json;

pub const WORDS: [&str; 16] = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "king", "queen", "castle",
    "storm", "night", "river", "sword", "crown",
];

/// Synthetic text: deterministic words, tagged with a unique id so documents can be told apart.
pub fn doc_text(tag: &str, n_words: usize) -> String {
    let mut s = tag.to_string();
    for i in 0..n_words {
        let h =
            (i * 7 + tag.len() * 13 + tag.bytes().map(|b| b as usize).sum::<usize>()) % WORDS.len();
        s.push(' ');
        s.push_str(WORDS[h]);
    }
    s
}

fn raw_tokenizer() -> &'static tokenizers::Tokenizer {
    static TOK: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let mut texts: Vec<String> = (0..200).map(|i| doc_text(&format!("doc{i}"), 40)).collect();
        texts.push("the ".repeat(500));
        train_tokenizer_from_texts(texts.into_iter(), 400, &DEFAULT_SPECIAL_TOKENS)
            .expect("train tokenizer")
    })
}

/// The shared test tokenizer (<unk>=0, <s>=1, </s>=2, <pad>=3).
pub fn tokenizer() -> Arc<dyn TextTokenizer> {
    Arc::new(HfTokenizer::new(raw_tokenizer().clone()).expect("special tokens"))
}

/// Saves the test tokenizer as `tokenizer.json` in `dir`.
pub fn save_tokenizer(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tokenizer.json");
    raw_tokenizer().save(&path, false).expect("save tokenizer");
    path
}

/// Which layout to write.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Parquet,
    Jsonl,
    Zst,
    Gz,
}

/// Writes `files` shards of `docs_per_file` documents each under `dir/name`, returning the
/// source config and the texts.
pub fn write_source(
    dir: &Path,
    name: &str,
    kind: Kind,
    files: usize,
    docs_per_file: usize,
    words: usize,
) -> (SourceConfig, Vec<String>) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).expect("mkdir");
    let mut all = Vec::new();
    for f in 0..files {
        let texts: Vec<String> = (0..docs_per_file)
            .map(|d| doc_text(&format!("{name}{f}x{d}"), words + (d * 5) % 23))
            .collect();
        let path = |ext: &str| sub.join(format!("{name}-{f:05}.{ext}"));
        match kind {
            Kind::Parquet => {
                write_parquet(&path("parquet"), &[("content", texts.clone())], 4).expect("parquet")
            }
            _ => {
                let recs: Vec<_> = texts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| json!({"text": t, "meta": {"pile_set_name": "Test", "i": i}, "id": i}))
                    .collect();
                let (ext, c) = match kind {
                    Kind::Jsonl => ("jsonl", LineCompression::None),
                    Kind::Zst => ("jsonl.zst", LineCompression::Zstd),
                    _ => ("json.gz", LineCompression::Gzip),
                };
                write_jsonl(&path(ext), &recs, c).expect("jsonl");
            }
        }
        all.extend(texts);
    }
    let text_key = if matches!(kind, Kind::Parquet) {
        "content"
    } else {
        "text"
    };
    let cfg = SourceConfig {
        name: name.into(),
        paths: vec![sub.join("*").to_string_lossy().into_owned()],
        format: None,
        text_key: text_key.into(),
        template: None,
        loss_on: None,
        weight: 1.0,
        hold_back: 0.0,
    };
    (cfg, all)
}

/// Writes `n` Alpaca-layout records (CommonSense-170k's fields, some with an `input`) to
/// `dir/name/name.jsonl`; returns a `loss_on: response` source and each record's (prompt,
/// response) as the template renders them.
pub fn write_alpaca_source(
    dir: &Path,
    name: &str,
    n: usize,
) -> (SourceConfig, Vec<(String, String)>) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).expect("mkdir");
    let mut records = Vec::new();
    let mut parts = Vec::new();
    for i in 0..n {
        let instruction = doc_text(&format!("ask{i}"), 6 + i % 9);
        let input = match i % 3 {
            0 => doc_text(&format!("ctx{i}"), 4),
            _ => String::new(),
        };
        let answer = WORDS[i % WORDS.len()];
        let output = format!("the correct answer is {answer}");
        parts.push((alpaca_prompt(&instruction, &input), output.clone()));
        records.push(
            json!({"instruction": instruction, "input": input, "output": output, "answer": answer}),
        );
    }
    let cfg = SourceConfig {
        loss_on: Some(LossOn::Response),
        ..jsonl_source(&sub, name, &records, Template::Alpaca)
    };
    (cfg, parts)
}

/// Writes `records` to `sub/name.jsonl`: the source of them rendered by `template`.
fn jsonl_source(
    sub: &Path,
    name: &str,
    records: &[serde_json::Value],
    template: Template,
) -> SourceConfig {
    write_jsonl(
        &sub.join(format!("{name}.jsonl")),
        records,
        LineCompression::None,
    )
    .expect("jsonl");
    SourceConfig {
        name: name.into(),
        paths: vec![sub.join("*.jsonl").to_string_lossy().into_owned()],
        template: Some(template),
        ..Default::default()
    }
}

/// One conversation of [`write_chat_source`]: (role, content) per message.
pub type Conversation = Vec<(&'static str, String)>;

/// Writes `n` SFT conversations (`messages`, one to three exchanges, some with a system
/// message) to `dir/name/name.jsonl`; returns a `template: chat` source (loss on the assistant
/// turns by default) and the conversations.
pub fn write_chat_source(dir: &Path, name: &str, n: usize) -> (SourceConfig, Vec<Conversation>) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).expect("mkdir");
    let mut records = Vec::new();
    let mut all = Vec::new();
    for i in 0..n {
        let mut conv: Conversation = Vec::new();
        if i % 4 == 0 {
            conv.push(("system", doc_text(&format!("sys{i}"), 3)));
        }
        for turn in 0..=(i % 3) {
            conv.push(("user", doc_text(&format!("q{i}t{turn}"), 4 + i % 5)));
            conv.push(("assistant", doc_text(&format!("a{i}t{turn}"), 3 + i % 4)));
        }
        let messages: Vec<_> = conv
            .iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect();
        records.push(json!({ "messages": messages }));
        all.push(conv);
    }
    (jsonl_source(&sub, name, &records, Template::Chat), all)
}

/// One pair of [`write_preference_source`]: prompt, chosen and rejected answers.
pub type Pair = (String, String, String);

/// Writes `n` preference pairs in the UltraFeedback-binarized layout (each answer a message
/// list that repeats the prompt) to `dir/name/name.jsonl`, then `extra` raw lines; returns a
/// `template: preference` source and the pairs.
pub fn write_preference_source(
    dir: &Path,
    name: &str,
    n: usize,
    extra: &[serde_json::Value],
) -> (SourceConfig, Vec<Pair>) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).expect("mkdir");
    let mut records = Vec::new();
    let mut pairs = Vec::new();
    for i in 0..n {
        let prompt = doc_text(&format!("q{i}"), 3 + i % 4);
        let chosen = doc_text(&format!("good{i}"), 2 + i % 3);
        let rejected = doc_text(&format!("bad{i}"), 4 + i % 2);
        let side = |answer: &str| json!([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]);
        records
            .push(json!({"prompt": prompt, "chosen": side(&chosen), "rejected": side(&rejected)}));
        pairs.push((prompt, chosen, rejected));
    }
    records.extend_from_slice(extra);
    (
        jsonl_source(&sub, name, &records, Template::Preference),
        pairs,
    )
}

/// A packed-mode config over `sources`.
pub fn config(
    sources: Vec<SourceConfig>,
    seq_len: usize,
    micro_batch: usize,
    workers: usize,
) -> DataConfig {
    DataConfig {
        sources,
        seq_len,
        micro_batch,
        workers,
        seed: 11,
        ..Default::default()
    }
}

/// Token stream per (worker, source) in consumption order.
pub type Streams = HashMap<(usize, usize), Vec<u32>>;

/// Appends a batch's rows to the per-(worker, source) token streams.
pub fn add_batch(streams: &mut Streams, b: &corenet_data::Batch) {
    for r in 0..b.micro_batch {
        streams
            .entry((b.worker, b.row_sources[r]))
            .or_default()
            .extend_from_slice(b.row(r));
    }
}

/// Complete documents of a packed token stream (BOS ... EOS), decoded, up to the first
/// repeat (which marks the start of the next epoch).
pub fn first_epoch_docs(tok: &dyn TextTokenizer, tokens: &[u32]) -> Vec<String> {
    let mut docs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cur: Option<Vec<u32>> = None;
    for &t in tokens {
        if t == tok.bos_id() {
            cur = Some(Vec::new());
        } else if t == tok.eos_id() {
            if let Some(d) = cur.take() {
                let text = tok.decode(&d).expect("decode");
                if !seen.insert(text.clone()) {
                    return docs;
                }
                docs.push(text);
            }
        } else if let Some(d) = cur.as_mut() {
            d.push(t);
        }
    }
    docs
}

/// Runs a rank until every worker finished its first epoch of every source; returns the
/// per-(worker, source) token streams, each cut after the batch in which its worker moved on.
pub fn run_one_epoch(stream: &mut DataStream, max_batches: usize) -> Streams {
    let mut streams = Streams::new();
    let mut finished = std::collections::HashSet::new();
    for _ in 0..max_batches {
        let b = stream.next().expect("stream is endless").expect("batch");
        if finished.contains(&b.worker) {
            continue;
        }
        add_batch(&mut streams, &b);
        if b.state.workers[b.worker]
            .sources
            .iter()
            .all(|s| s.epoch >= 1)
        {
            finished.insert(b.worker);
        }
        if finished.len() == b.state.workers.len() {
            return streams;
        }
    }
    panic!("epoch not finished within {max_batches} batches");
}

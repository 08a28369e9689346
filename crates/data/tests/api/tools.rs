//! The library side of `corenet data sample|stats|peek` and `corenet tokenizer train`.

use corenet_data::sample::SampleOptions;
use corenet_data::{
    collect_stats, peek, train_tokenizer, write_samples, DataConfig, DEFAULT_SPECIAL_TOKENS,
};

use crate::common::{doc_text, save_tokenizer};

fn corpus(dir: &std::path::Path) {
    let texts = dir.join("texts");
    std::fs::create_dir_all(&texts).expect("mkdir");
    for f in 0..4 {
        let paras: Vec<String> = (0..30)
            .map(|p| doc_text(&format!("play{f}p{p}"), 40))
            .collect();
        std::fs::write(texts.join(format!("play{f}.txt")), paras.join("\n\n")).expect("write");
    }
}

#[test]
fn sample_shards_stats_and_peek() {
    let dir = tempfile::tempdir().expect("tempdir");
    corpus(dir.path());
    let opts = SampleOptions {
        files_per_source: 2,
        doc_chars: 600,
        row_group_rows: 4,
    };
    let out = dir.path().join("shards");
    let summary = write_samples(dir.path(), &out, &opts).expect("sample");
    assert_eq!(summary.files.len(), 12);
    assert_eq!(summary.sources.len(), 6);
    let cfg = DataConfig {
        sources: summary.sources.clone(),
        tokenizer: save_tokenizer(dir.path()),
        seq_len: 32,
        micro_batch: 4,
        ..Default::default()
    };
    let report = collect_stats(&cfg, 60).expect("stats");
    assert_eq!(report.batches, 60);
    assert_eq!(report.sources.len(), 6);
    assert!(report
        .sources
        .iter()
        .all(|(_, s)| s.rows > 0 && s.bad_files == 0 && s.bad_records == 0));
    let rows = peek(&cfg, 1).expect("peek");
    assert_eq!(rows.len(), 4);
    assert!(rows
        .iter()
        .all(|r| r.tokens.len() == 33 && !r.text.is_empty()));
}

#[test]
fn train_tokenizer_writes_a_usable_tokenizer_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    corpus(dir.path());
    let files: Vec<_> = (0..4)
        .map(|f| dir.path().join(format!("texts/play{f}.txt")))
        .collect();
    let out = dir.path().join("tokenizer.json");
    train_tokenizer(&files, 500, &DEFAULT_SPECIAL_TOKENS, &out).expect("train");
    let tok = corenet_data::HfTokenizer::from_file(&out).expect("load");
    use corenet_data::TextTokenizer;
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1, 2, 3));
    assert!(tok.vocab_size() <= 500);
}

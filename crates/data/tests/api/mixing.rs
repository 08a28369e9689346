//! Realised source proportions follow the weights.

use corenet_data::DataStream;

use crate::common::{config, tokenizer, write_source, Kind};

#[test]
fn proportions_within_two_percent_over_10k_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weights = [0.2, 0.3, 0.5];
    let mut sources = vec![
        write_source(dir.path(), "a", Kind::Jsonl, 2, 10, 20).0,
        write_source(dir.path(), "b", Kind::Zst, 2, 10, 20).0,
        write_source(dir.path(), "c", Kind::Parquet, 2, 10, 20).0,
    ];
    for (s, w) in sources.iter_mut().zip(weights) {
        s.weight = w;
    }
    let cfg = config(sources, 4, 100, 2);
    let stream = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, None).expect("stream");
    let mut counts = [0usize; 3];
    for b in stream.take(100) {
        for s in b.expect("batch").row_sources {
            counts[s] += 1;
        }
    }
    let total: usize = counts.iter().sum();
    assert_eq!(total, 10_000);
    for (c, w) in counts.iter().zip(weights) {
        let p = *c as f64 / total as f64;
        assert!(
            (p - w).abs() < 0.02,
            "realised {p} vs weight {w} ({counts:?})"
        );
    }
}

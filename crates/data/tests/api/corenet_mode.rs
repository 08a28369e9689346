//! CoreNet mode on hand-made documents: short pieces dropped, 2048-word split, BOS/EOS,
//! truncation and right padding with the pad id (spec §3.2), default thresholds.

use corenet_data::sample::{write_jsonl, LineCompression};
use corenet_data::{CorenetConfig, DataConfig, DataStream, Mode, SourceConfig};
use serde_json::json;

use crate::common::tokenizer;

const SEQ: usize = 2048;

/// Streams the given documents (one jsonl file) in corenet mode with CoreNet's defaults.
fn rows(docs: &[String], n_rows: usize) -> (Vec<Vec<u32>>, corenet_data::SourceStats) {
    rows_with(docs, n_rows, CorenetConfig::default())
}

/// A one-row-per-batch corenet-mode config reading `path`.
fn corenet_config(path: &std::path::Path, corenet: CorenetConfig) -> DataConfig {
    DataConfig {
        sources: vec![SourceConfig {
            name: "s".into(),
            paths: vec![path.to_string_lossy().into()],
            ..Default::default()
        }],
        seq_len: SEQ,
        micro_batch: 1,
        mode: Mode::Corenet,
        corenet,
        ..Default::default()
    }
}

/// Like [`rows`] with other filter settings.
fn rows_with(
    docs: &[String],
    n_rows: usize,
    corenet: CorenetConfig,
) -> (Vec<Vec<u32>>, corenet_data::SourceStats) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("docs.jsonl");
    let recs: Vec<_> = docs.iter().map(|d| json!({ "text": d })).collect();
    write_jsonl(&path, &recs, LineCompression::None).expect("write");
    let cfg = corenet_config(&path, corenet);
    let mut stream = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, None).expect("stream");
    let rows = stream
        .by_ref()
        .take(n_rows)
        .map(|b| b.expect("batch").tokens)
        .collect();
    (rows, stream.stats().remove(0))
}

fn words(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{prefix}{}", i % 97))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn short_piece_dropped_and_padding_with_bos_eos() {
    let tok = tokenizer();
    let short = "Too short, under 200 characters!".to_string();
    let medium = words("castle", 300);
    let (rows, stats) = rows(&[short, medium.clone()], 1);
    let row = &rows[0];
    assert_eq!(row.len(), SEQ + 1);
    let body = tok.encode(&medium).expect("encode");
    assert!(body.len() + 2 >= 256 && body.len() + 2 < SEQ + 1);
    assert_eq!(row[0], tok.bos_id());
    assert_eq!(&row[1..=body.len()], &body[..]);
    assert_eq!(row[body.len() + 1], tok.eos_id());
    assert!(row[body.len() + 2..].iter().all(|&t| t == tok.pad_id()));
    assert_eq!(stats.dropped_pieces, 1);
    assert_eq!(stats.pad_tokens as usize, SEQ + 1 - body.len() - 2);
}

#[test]
fn long_document_split_at_2048_words_and_truncated() {
    let tok = tokenizer();
    let first = words("w", 2048);
    let second = words("queen", 300);
    let doc = format!("{first} {second}");
    let (rows, stats) = rows(&[doc], 2);
    // Piece 1: exactly the first 2048 words, truncated to seq_len + 1 (no EOS, no pad).
    let full1 = tok.encode(&first).expect("encode");
    assert!(full1.len() + 2 > SEQ + 1);
    assert_eq!(rows[0][0], tok.bos_id());
    assert_eq!(&rows[0][1..], &full1[..SEQ]);
    // Piece 2 starts a new row with its own BOS.
    let full2 = tok.encode(&second).expect("encode");
    assert_eq!(rows[1][0], tok.bos_id());
    assert_eq!(&rows[1][1..=full2.len()], &full2[..]);
    assert_eq!(rows[1][full2.len() + 1], tok.eos_id());
    assert_eq!(stats.dropped_pieces, 0);
}

#[test]
fn piece_with_enough_characters_but_too_few_tokens_dropped() {
    let tok = tokenizer();
    // 60 x "the": 239 normalised characters but ~62 tokens (< 256).
    let few_tokens = vec!["the"; 60].join(" ");
    assert!(tok.encode(&few_tokens).expect("encode").len() + 2 < 256);
    // A 2048-word document whose short tail piece (10 words) is dropped by the char filter.
    let with_tail = format!("{} {}", words("w", 2048), words("x", 10));
    let keep = words("storm", 300);
    let (rows, stats) = rows(&[few_tokens, with_tail, keep.clone()], 2);
    let body = tok.encode(&keep).expect("encode");
    assert_eq!(&rows[1][1..=body.len()], &body[..]);
    assert_eq!(stats.dropped_pieces, 2);
}

/// CoreNet's filters switched off: every piece, even an empty one, becomes a row.
fn filters_off() -> CorenetConfig {
    CorenetConfig {
        min_characters: 0,
        min_tokens: 0,
        ..CorenetConfig::default()
    }
}

/// The row CoreNet makes of `text` when nothing is filtered: BOS, its tokens, EOS, padding.
fn expected_row(text: &str) -> Vec<u32> {
    let tok = tokenizer();
    let mut row = vec![tok.bos_id()];
    row.extend(tok.encode(text).expect("encode"));
    row.push(tok.eos_id());
    row.resize(SEQ + 1, tok.pad_id());
    row
}

#[test]
fn empty_document_with_filters_off_is_one_bos_eos_row_in_place() {
    let tok = tokenizer();
    let (before, after) = (words("river", 50), words("crown", 50));
    let docs = [before.clone(), String::new(), after.clone()];
    let (rows, stats) = rows_with(&docs, 3, filters_off());
    assert_eq!(rows[0], expected_row(&before));
    // CoreNet: "".split(" ") is [""], one empty text, tokenized to BOS + EOS, padded.
    assert_eq!(&rows[1][..2], &[tok.bos_id(), tok.eos_id()]);
    assert!(rows[1][2..].iter().all(|&t| t == tok.pad_id()));
    assert_eq!(rows[1].len(), SEQ + 1);
    assert_eq!(rows[2], expected_row(&after));
    assert_eq!(stats.dropped_pieces, 0);
    assert_eq!(stats.documents, 3);
}

#[test]
fn trailing_empty_piece_with_filters_off_is_a_row() {
    // "a b c " in pieces of 3 words is Python's ["a b c", ""]: two texts, two rows.
    let cfg = CorenetConfig {
        document_split_size: 3,
        ..filters_off()
    };
    let (rows, _) = rows_with(
        &["king queen castle ".to_string(), "dog".to_string()],
        3,
        cfg,
    );
    assert_eq!(rows[0], expected_row("king queen castle"));
    assert_eq!(rows[1], expected_row(""));
    assert_eq!(rows[2], expected_row("dog"));
}

#[test]
fn empty_document_with_filters_on_yields_nothing() {
    let (a, b) = (words("river", 300), words("crown", 300));
    let (rows, stats) = rows(&[a.clone(), String::new(), b.clone()], 2);
    assert_eq!(rows[0], expected_row(&a));
    assert_eq!(rows[1], expected_row(&b));
    assert_eq!(stats.dropped_pieces, 1);
}

#[test]
fn resume_at_and_after_an_empty_document_is_exact() {
    let docs: Vec<String> = ["alpha", "", "", "beta", "", "gamma"]
        .iter()
        .map(|t| {
            if t.is_empty() {
                String::new()
            } else {
                words(t, 20)
            }
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("docs.jsonl");
    let recs: Vec<_> = docs.iter().map(|d| json!({ "text": d })).collect();
    write_jsonl(&path, &recs, LineCompression::None).expect("write");
    let cfg = corenet_config(&path, filters_off());
    let open =
        |resume| DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, resume).expect("stream");
    let full: Vec<_> = open(None).take(9).map(|b| b.expect("batch")).collect();
    assert_eq!(full[1].tokens, expected_row(""));
    for k in 1..8 {
        let rest: Vec<_> = open(Some(full[k - 1].state.clone()))
            .take(9 - k)
            .map(|b| b.expect("batch"))
            .collect();
        for (i, (a, b)) in full[k..].iter().zip(&rest).enumerate() {
            assert_eq!(a.tokens, b.tokens, "cut {k} batch {}", k + i);
            assert_eq!(a.state, b.state, "cut {k} batch {}", k + i);
        }
    }
}

//! Bad input never panics: by default it is skipped and counted, nothing good is lost or
//! repeated; `strict` turns it into an error naming the file and position.

use std::io::Write;
use std::path::Path;

use corenet_data::sample::{write_jsonl, write_parquet, LineCompression};
use corenet_data::{DataConfig, DataStream, Error, SourceConfig, SourceStats};
use serde_json::json;

use crate::common::{config, doc_text, first_epoch_docs, run_one_epoch, tokenizer};

fn source(pattern: &Path) -> SourceConfig {
    SourceConfig {
        name: "s".into(),
        paths: vec![pattern.to_string_lossy().into()],
        ..Default::default()
    }
}

/// Asserts `count` bad items per epoch; the last batch may already hold some of the next epoch.
fn assert_per_epoch(got: u64, per_epoch: u64, stats: &SourceStats) {
    assert!(
        got >= per_epoch && got <= per_epoch * (stats.epochs + 1),
        "{got} bad for {per_epoch}/epoch: {stats:?}"
    );
}

/// Good docs the default stream yields in one epoch, and its stats.
fn lenient(cfg: &DataConfig) -> (Vec<String>, SourceStats) {
    let tok = tokenizer();
    let mut stream = DataStream::with_tokenizer(cfg, tok.clone(), 0, 1, None).expect("stream");
    let streams = run_one_epoch(&mut stream, 2000);
    (
        first_epoch_docs(tok.as_ref(), &streams[&(0, 0)]),
        stream.stats().remove(0),
    )
}

/// The error a strict stream stops with.
fn strict_error(cfg: &DataConfig) -> Error {
    let mut cfg = cfg.clone();
    cfg.strict = true;
    let stream = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, None).expect("stream");
    for b in stream.take(2000) {
        if let Err(e) = b {
            return e;
        }
    }
    panic!("strict stream did not fail");
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| doc_text(&format!("good{i}"), 30)).collect()
}

fn records(texts: &[String]) -> Vec<serde_json::Value> {
    texts.iter().map(|t| json!({ "text": t })).collect()
}

/// Good file + damaged file; the good one alone keeps the source alive after the damage.
fn truncated(ext: &str, compression: LineCompression) {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = texts(5);
    write_jsonl(
        &dir.path().join(format!("a.{ext}")),
        &records(&good),
        compression,
    )
    .expect("write");
    let bad_path = dir.path().join(format!("b.{ext}"));
    // Enough data for several zstd blocks (a block is up to 128 KiB), so some survive.
    let many: Vec<String> = (0..2000)
        .map(|i| doc_text(&format!("bad{i}"), 30))
        .collect();
    write_jsonl(&bad_path, &records(&many), compression).expect("write");
    let len = std::fs::metadata(&bad_path).expect("meta").len();
    let bytes = std::fs::read(&bad_path).expect("read");
    std::fs::write(&bad_path, &bytes[..(len as usize * 2 / 3)]).expect("truncate");
    let cfg = config(vec![source(&dir.path().join(format!("*.{ext}")))], 16, 2, 1);
    let (docs, stats) = lenient(&cfg);
    assert_per_epoch(stats.bad_files, 1, &stats);
    // Everything decoded before the damage is kept, once, in order.
    let from_bad: Vec<&String> = docs.iter().filter(|d| d.starts_with("bad")).collect();
    assert!(
        !from_bad.is_empty(),
        "{ext}: nothing read before the truncation"
    );
    for (i, d) in from_bad.iter().enumerate() {
        assert_eq!(**d, many[i]);
    }
    assert_eq!(docs.iter().filter(|d| d.starts_with("good")).count(), 5);
    let e = strict_error(&cfg);
    assert!(matches!(e, Error::CorruptFile { .. }), "{e}");
    assert!(e.to_string().contains(&format!("b.{ext}")), "{e}");
}

#[test]
fn truncated_zstd() {
    truncated("jsonl.zst", LineCompression::Zstd);
}

#[test]
fn truncated_gzip() {
    truncated("json.gz", LineCompression::Gzip);
}

#[test]
fn bad_lines_skipped_counted_and_strict_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = texts(6);
    let path = dir.path().join("mixed.jsonl");
    let mut f = std::fs::File::create(&path).expect("create");
    let lines: Vec<Vec<u8>> = vec![
        serde_json::to_vec(&json!({"text": good[0]})).expect("json"),
        b"this is not json".to_vec(),
        serde_json::to_vec(&json!({"text": good[1]})).expect("json"),
        b"{\"text\": \"invalid \xff\xfe utf8\"}".to_vec(),
        serde_json::to_vec(&json!({"text": good[2]})).expect("json"),
        serde_json::to_vec(&json!({"content": "missing key"})).expect("json"),
        serde_json::to_vec(&json!({"text": good[3]})).expect("json"),
        serde_json::to_vec(&json!({"text": 42})).expect("json"),
        serde_json::to_vec(&json!({"text": good[4]})).expect("json"),
        b"".to_vec(),
        serde_json::to_vec(&json!({"text": good[5]})).expect("json"),
    ];
    for l in &lines {
        f.write_all(l).expect("write");
        f.write_all(b"\n").expect("write");
    }
    drop(f);
    let cfg = config(vec![source(&path)], 16, 2, 1);
    let (docs, stats) = lenient(&cfg);
    assert_eq!(docs, good);
    assert_per_epoch(stats.bad_records, 4, &stats);
    let e = strict_error(&cfg);
    assert!(
        e.to_string().contains("mixed.jsonl") && e.to_string().contains("line 2"),
        "{e}"
    );
}

#[test]
fn corrupt_parquet_and_empty_file_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = texts(5);
    write_parquet(&dir.path().join("a.parquet"), &[("text", good.clone())], 2).expect("parquet");
    // Garbage with a parquet name, a truncated parquet file and an empty file.
    std::fs::write(dir.path().join("b.parquet"), b"PAR1 definitely not parquet").expect("write");
    write_parquet(&dir.path().join("c.parquet"), &[("text", texts(50))], 10).expect("parquet");
    let c = std::fs::read(dir.path().join("c.parquet")).expect("read");
    std::fs::write(dir.path().join("c.parquet"), &c[..c.len() / 2]).expect("truncate");
    std::fs::write(dir.path().join("d.parquet"), b"").expect("write");
    let cfg = config(vec![source(&dir.path().join("*.parquet"))], 16, 2, 1);
    let (mut docs, stats) = lenient(&cfg);
    docs.sort();
    let mut want = good;
    want.sort();
    assert_eq!(docs, want);
    assert_per_epoch(stats.bad_files, 3, &stats);
    let e = strict_error(&cfg);
    assert!(matches!(e, Error::CorruptFile { .. }), "{e}");

    // An empty jsonl file next to a good one.
    let dir2 = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir2.path().join("empty.jsonl"), b"").expect("write");
    write_jsonl(
        &dir2.path().join("good.jsonl"),
        &records(&texts(3)),
        LineCompression::None,
    )
    .expect("write");
    let cfg = config(vec![source(&dir2.path().join("*.jsonl"))], 16, 2, 1);
    let (docs, stats) = lenient(&cfg);
    assert_eq!(docs.len(), 3);
    assert_per_epoch(stats.bad_files, 1, &stats);
    assert!(strict_error(&cfg).to_string().contains("empty.jsonl"));
}

fn huge_doc_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("huge.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    f.write_all(b"{\"text\": \"").expect("write");
    let chunk = "the quick brown fox ".repeat(1000);
    for _ in 0..(100 * 1024 * 1024 / chunk.len()) {
        f.write_all(chunk.as_bytes()).expect("write");
    }
    f.write_all(b"\"}\n").expect("write");
    f.write_all(
        serde_json::to_vec(&json!({"text": doc_text("after", 30)}))
            .expect("json")
            .as_slice(),
    )
    .expect("w");
    f.write_all(b"\n").expect("write");
    path
}

#[test]
fn hundred_megabyte_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = huge_doc_file(dir.path());
    // Read and tokenized lazily in pieces: the first batches come from it without a panic.
    let cfg = config(vec![source(&path)], 64, 4, 1);
    let stream = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, None).expect("stream");
    let batches: Vec<_> = stream.take(3).map(|b| b.expect("batch")).collect();
    assert_eq!(
        batches[2].state.workers[0].sources[0].record,
        batches[0].state.workers[0].sources[0].record
    );
    // With a record-size limit it is skipped, counted, and the next record is read.
    let mut cfg = cfg;
    cfg.max_record_bytes = 8 * 1024 * 1024;
    let (docs, stats) = lenient(&cfg);
    assert_eq!(docs, vec![doc_text("after", 30)]);
    assert_per_epoch(stats.bad_records, 1, &stats);
    assert!(strict_error(&cfg).to_string().contains("huge.jsonl"));
}

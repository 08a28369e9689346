//! Every shard format, written for real and read back through the whole stream.

use std::path::Path;

use corenet_data::read::{self, OpenSpec, Position, ReadItem, Stride};
use corenet_data::{DataStream, Format};

use crate::common::{config, first_epoch_docs, run_one_epoch, tokenizer, write_source, Kind};

fn roundtrip(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, mut texts) = write_source(dir.path(), "src", kind, 3, 7, 30);
    let tok = tokenizer();
    let mut stream =
        DataStream::with_tokenizer(&config(vec![src], 16, 2, 1), tok.clone(), 0, 1, None)
            .expect("stream");
    let streams = run_one_epoch(&mut stream, 1000);
    let mut docs = first_epoch_docs(tok.as_ref(), &streams[&(0, 0)]);
    docs.sort();
    texts.sort();
    assert_eq!(docs, texts, "{kind:?}");
    let stats = stream.stats();
    assert_eq!(stats[0].documents, 21, "{kind:?}");
    assert_eq!(stats[0].pad_tokens, 0);
    assert_eq!(stats[0].bad_records + stats[0].bad_files, 0);
}

#[test]
fn parquet_roundtrip() {
    roundtrip(Kind::Parquet);
}

#[test]
fn jsonl_roundtrip() {
    roundtrip(Kind::Jsonl);
}

#[test]
fn jsonl_zst_roundtrip() {
    roundtrip(Kind::Zst);
}

#[test]
fn json_gz_roundtrip() {
    roundtrip(Kind::Gz);
}

fn read_all(path: &Path, format: Format, key: &str) -> Vec<String> {
    let spec = OpenSpec {
        path,
        format,
        text_key: key,
        template: None,
        stride: Stride::ALL,
        max_record_bytes: 1 << 20,
        storage: &Default::default(),
    };
    let mut r = read::open(&spec, Position::start(format)).expect("open");
    let mut out = Vec::new();
    while let Some(item) = r.next_item().expect("read") {
        match item {
            ReadItem::Doc(rec) => out.push(rec.text),
            ReadItem::Bad(e) => panic!("unexpected bad record {e}"),
        }
    }
    out
}

#[test]
fn dotted_key_reads_pile_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_source(dir.path(), "pile", Kind::Zst, 1, 3, 5);
    let path = dir.path().join("pile/pile-00000.jsonl.zst");
    assert_eq!(
        read_all(&path, Format::JsonlZst, "meta.pile_set_name"),
        vec!["Test"; 3]
    );
}

#[test]
fn reader_resumes_at_saved_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_source(dir.path(), "a", Kind::Gz, 1, 6, 5);
    write_source(dir.path(), "b", Kind::Parquet, 1, 10, 5);
    for (path, format, key) in [
        (dir.path().join("a/a-00000.json.gz"), Format::JsonGz, "text"),
        (
            dir.path().join("b/b-00000.parquet"),
            Format::Parquet,
            "content",
        ),
    ] {
        let spec = OpenSpec {
            path: &path,
            format,
            text_key: key,
            template: None,
            stride: Stride::ALL,
            max_record_bytes: 1 << 20,
            storage: &Default::default(),
        };
        let all = read_all(&path, format, key);
        let mut r = read::open(&spec, Position::start(format)).expect("open");
        let mut positions = Vec::new();
        while let Some(ReadItem::Doc(rec)) = r.next_item().expect("read") {
            positions.push(rec.start);
        }
        for (i, pos) in positions.iter().enumerate() {
            let mut r = read::open(&spec, *pos).expect("reopen");
            let Some(ReadItem::Doc(rec)) = r.next_item().expect("read") else {
                panic!("no record at {pos}")
            };
            assert_eq!(rec.text, all[i]);
        }
    }
}

//! Every document is read exactly once per epoch across 2 ranks x 2 workers, at file level,
//! row-group level and line level.

use corenet_data::DataStream;

use crate::common::{config, first_epoch_docs, run_one_epoch, tokenizer, write_source, Kind};

#[test]
fn ranks_and_workers_partition_each_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = [
        // 3 files < 4 readers, 5 row groups each >= 4: split by row group.
        write_source(dir.path(), "rw", Kind::Parquet, 3, 20, 30),
        // 5 files >= 4 readers: split by file.
        write_source(dir.path(), "dolma", Kind::Gz, 5, 6, 30),
        // 1 file: split by line.
        write_source(dir.path(), "pile", Kind::Zst, 1, 30, 30),
        // 2 files of plain jsonl: split by line.
        write_source(dir.path(), "rp", Kind::Jsonl, 2, 9, 30),
    ];
    let tok = tokenizer();
    for (s, (src, expected)) in sources.into_iter().enumerate() {
        // One source per stream and one short row per batch: the batch that starts the next
        // epoch cannot complete a document of it (documents are longer than a row), so every
        // complete document seen belongs to the first epoch.
        let cfg = config(vec![src], 16, 1, 2);
        let mut got = Vec::new();
        for rank in 0..2 {
            let mut stream =
                DataStream::with_tokenizer(&cfg, tok.clone(), rank, 2, None).expect("stream");
            for (_, tokens) in run_one_epoch(&mut stream, 20_000) {
                got.extend(first_epoch_docs(tok.as_ref(), &tokens));
            }
        }
        got.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(got.len(), want.len(), "source {s}: duplicates or gaps");
        assert_eq!(got, want, "source {s}");
    }
}

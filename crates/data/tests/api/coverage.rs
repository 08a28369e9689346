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

/// Held-back documents are never trained on: over one epoch of 2 ranks x 2 workers, the
/// documents the stream emits and those `for_each_document` finds held back split every source
/// exactly (document ids compared), and the stats count the held-back ones.
#[test]
fn held_back_documents_are_never_trained_on() {
    use corenet_data::{for_each_document, DocumentFilter, HoldBack, Source};
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = [
        write_source(dir.path(), "rw", Kind::Parquet, 3, 20, 30),
        write_source(dir.path(), "pile", Kind::Zst, 1, 40, 30),
    ];
    let tok = tokenizer();
    for (mut src, expected) in sources {
        src.hold_back = 0.25;
        let resolved = Source::resolve(&src, &Default::default()).expect("resolve");
        let mut held = Vec::new();
        let hold = DocumentFilter::HeldBack(HoldBack::new(src.hold_back));
        for_each_document(&resolved, hold, 1 << 20, &Default::default(), |text| {
            held.push(text.to_string());
            Ok(true)
        })
        .expect("read held-back documents");
        let cfg = config(vec![src.clone()], 16, 1, 2);
        let (mut trained, mut counted) = (Vec::new(), 0);
        for rank in 0..2 {
            let mut stream =
                DataStream::with_tokenizer(&cfg, tok.clone(), rank, 2, None).expect("stream");
            for (_, tokens) in run_one_epoch(&mut stream, 20_000) {
                trained.extend(first_epoch_docs(tok.as_ref(), &tokens));
            }
            counted += stream.state().stats()[0].held_back;
        }
        let id = |text: &String| text.split(' ').next().unwrap_or_default().to_string();
        let trained_ids: std::collections::BTreeSet<String> = trained.iter().map(id).collect();
        assert_eq!(trained_ids.len(), trained.len(), "{}: a repeat", src.name);
        for text in &held {
            assert!(
                !trained_ids.contains(&id(text)),
                "{}: {} was trained on",
                src.name,
                id(text)
            );
        }
        // The temp dir's path goes into the hash, so the share varies run to run: 40 documents
        // at 0.25 hold back 10 ± 2.7; the bounds sit beyond 3.6 standard deviations.
        let share = held.len() as f64 / expected.len() as f64;
        assert!(
            (0.05..0.5).contains(&share),
            "{}: held back {share}",
            src.name
        );
        assert_eq!(trained.len() + held.len(), expected.len(), "{}", src.name);
        assert!(
            counted >= held.len() as u64,
            "{}: {counted} counted",
            src.name
        );
    }
}

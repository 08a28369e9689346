//! The file list in a stream state: a resume over changed files is an error naming them, an
//! accepted change resumes from sensible positions, and states without a list still load.

use std::sync::Arc;

use corenet_data::{DataConfig, DataStream, Error, ShardList, StreamState};

use crate::common::{config, tokenizer, write_source, Kind};

/// Two jsonl sources of 4 files each; 1 rank × 2 workers, strict, so a position that lands in
/// the middle of a record of another file would be an error rather than a skipped line.
fn setup(dir: &std::path::Path) -> DataConfig {
    let mut cfg = config(
        vec![
            write_source(dir, "rp", Kind::Jsonl, 4, 6, 30).0,
            write_source(dir, "c4", Kind::Jsonl, 4, 6, 30).0,
        ],
        16,
        2,
        2,
    );
    cfg.strict = true;
    cfg
}

/// The state after `n` batches of a fresh stream that recorded its files.
fn state_after(cfg: &DataConfig, n: usize) -> StreamState {
    let mut stream = DataStream::with_tokenizer(cfg, tokenizer(), 0, 1, None).expect("stream");
    stream.set_files(Arc::new(ShardList::of_config(cfg).expect("manifest")));
    let last = stream.by_ref().take(n).last().expect("batches");
    last.expect("batch").state
}

#[test]
fn removed_added_and_changed_files_are_an_error_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = setup(dir.path());
    let saved = state_after(&cfg, 5);
    let json = saved.to_json().expect("json");
    assert!(json.contains("rp-00002.jsonl"), "the state lists the files");
    let saved = StreamState::from_json(&json).expect("parse");
    let recorded = saved.files.as_deref();

    // Nothing changed: no error.
    let now = ShardList::of_config(&cfg).expect("manifest");
    assert_eq!(now.check_resume(recorded, false).expect("same files"), None);

    let rp = dir.path().join("rp");
    std::fs::remove_file(rp.join("rp-00002.jsonl")).expect("remove");
    std::fs::copy(rp.join("rp-00000.jsonl"), rp.join("rp-00009.jsonl")).expect("add");
    let c4 = dir.path().join("c4").join("c4-00001.jsonl");
    let mut text = std::fs::read(&c4).expect("read");
    text.extend_from_slice(b"{\"text\": \"one more document\"}\n");
    std::fs::write(&c4, text).expect("append");

    let now = ShardList::of_config(&cfg).expect("manifest");
    let err = now
        .check_resume(recorded, false)
        .expect_err("changed files");
    assert!(matches!(err, Error::DataChanged { .. }), "{err}");
    let msg = err.to_string();
    let want = [
        "source `rp`: removed ",
        "rp-00002.jsonl",
        " added ",
        "rp-00009.jsonl",
        "source `c4`: changed ",
        "c4-00001.jsonl",
    ];
    for part in want {
        assert!(msg.contains(part), "`{part}` missing from: {msg}");
    }
    assert!(
        !msg.contains("rp-00001.jsonl"),
        "unchanged files are not listed: {msg}"
    );
}

#[test]
fn an_accepted_change_resumes_and_is_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = setup(dir.path());
    // Far enough that both workers are inside a file of each source.
    let mut saved = state_after(&cfg, 7);
    assert!(saved.workers.iter().any(|w| w.sources[0].record.is_some()));
    let recorded = saved.files.clone().expect("recorded");
    std::fs::remove_file(dir.path().join("rp").join("rp-00001.jsonl")).expect("remove");

    let now = ShardList::of_config(&cfg).expect("manifest");
    let change = now
        .check_resume(Some(&recorded), true)
        .expect("accepted")
        .expect("a change");
    assert_eq!(change.sources[0].removed.len(), 1);
    let before = saved.clone();
    saved.adopt_files(&recorded, &now);
    let reset = |s: &StreamState| -> Vec<bool> {
        s.workers
            .iter()
            .map(|w| w.sources[0].record.is_none())
            .collect()
    };
    assert_ne!(
        reset(&before),
        reset(&saved),
        "a worker's file moved: it restarts that file"
    );
    assert!(
        saved
            .workers
            .iter()
            .all(|w| w.sources[1] == before.workers[w.worker].sources[1]),
        "the unchanged source keeps its positions"
    );

    // Strict mode: resuming inside another file at a stale offset would fail on a bad record.
    let mut stream =
        DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, Some(saved)).expect("resume");
    let now = Arc::new(now);
    stream.set_files(Arc::clone(&now));
    for b in stream.take(40) {
        let b = b.expect("batch after the accepted change");
        assert_eq!(
            b.state.files.as_deref(),
            Some(&*now),
            "later batches carry the new list"
        );
    }
}

#[test]
fn state_without_a_file_list_still_loads_and_skips_the_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = setup(dir.path());
    let saved = state_after(&cfg, 3);
    // As written before file lists were recorded: no `files` key at all.
    let mut value: serde_json::Value =
        serde_json::from_str(&saved.to_json().expect("json")).expect("value");
    value.as_object_mut().expect("object").remove("files");
    let old = StreamState::from_json(&value.to_string()).expect("an old state loads");
    assert_eq!(old.files, None);
    std::fs::remove_file(dir.path().join("rp").join("rp-00003.jsonl")).expect("remove");
    let now = ShardList::of_config(&cfg).expect("manifest");
    assert_eq!(
        now.check_resume(old.files.as_deref(), false)
            .expect("skipped"),
        None
    );
    // The stream itself resumes from it as before.
    let stream = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, Some(old)).expect("resume");
    assert_eq!(stream.take(3).filter(Result::is_ok).count(), 3);
}

/// With an unchanged list nothing moves: the resumed stream equals the uninterrupted one.
#[test]
fn adopting_an_unchanged_list_keeps_the_position_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = setup(dir.path());
    let mut stream = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, None).expect("stream");
    let files = Arc::new(ShardList::of_config(&cfg).expect("manifest"));
    stream.set_files(Arc::clone(&files));
    let full: Vec<_> = stream.take(12).map(|b| b.expect("batch")).collect();
    let mut state = full[5].state.clone();
    state.adopt_files(&files, &files);
    assert_eq!(state, full[5].state);
    let rest: Vec<_> = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, Some(state))
        .expect("resume")
        .take(6)
        .map(|b| b.expect("batch"))
        .collect();
    for (a, b) in full[6..].iter().zip(&rest) {
        assert_eq!(a.tokens, b.tokens);
    }
}

//! Restoring the state carried by batch k reproduces batches k+1.. token for token.

use corenet_data::{Batch, DataConfig, DataStream, Mode, StreamState};

use crate::common::{
    config, tokenizer, write_alpaca_source, write_chat_source, write_source, Kind,
};

fn run(cfg: &DataConfig, rank: usize, resume: Option<StreamState>, n: usize) -> Vec<Batch> {
    let stream = DataStream::with_tokenizer(cfg, tokenizer(), rank, 2, resume).expect("stream");
    stream.take(n).map(|b| b.expect("batch")).collect()
}

fn check_resume(cfg: &DataConfig, total: usize, cuts: &[usize]) {
    for rank in 0..2 {
        let full = run(cfg, rank, None, total);
        for &k in cuts {
            // Through JSON, as a checkpoint would store it.
            let json = full[k - 1].state.to_json().expect("to json");
            let state = StreamState::from_json(&json).expect("from json");
            let rest = run(cfg, rank, Some(state), total - k);
            for (i, (a, b)) in full[k..].iter().zip(&rest).enumerate() {
                assert_eq!(a.tokens, b.tokens, "rank {rank} cut {k} batch {}", k + i);
                assert_eq!(a.prompt, b.prompt, "rank {rank} cut {k} batch {}", k + i);
                assert_eq!(a.row_sources, b.row_sources);
                assert_eq!(a.state, b.state);
            }
        }
    }
}

fn mixed_sources(dir: &std::path::Path) -> Vec<corenet_data::SourceConfig> {
    vec![
        write_source(dir, "rw", Kind::Parquet, 2, 12, 40).0,
        write_source(dir, "rp", Kind::Jsonl, 5, 4, 40).0,
        write_source(dir, "pile", Kind::Zst, 1, 15, 40).0,
        write_source(dir, "dolma", Kind::Gz, 3, 5, 40).0,
    ]
}

#[test]
fn packed_resume_two_ranks_two_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(mixed_sources(dir.path()), 24, 3, 2);
    // Small pieces so cuts land inside documents and inside pieces.
    cfg.max_piece_bytes = 64;
    // 40 batches run past an epoch for some sources on some workers.
    check_resume(&cfg, 40, &[1, 2, 7, 18, 33]);
}

#[test]
fn corenet_resume_two_ranks_two_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(mixed_sources(dir.path()), 32, 2, 2);
    cfg.mode = Mode::Corenet;
    cfg.corenet.document_split_size = 12;
    cfg.corenet.min_characters = 40;
    cfg.corenet.min_tokens = 8;
    check_resume(&cfg, 30, &[1, 4, 15, 29]);
}

#[test]
fn prompt_masks_resume_inside_prompts_and_pieces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sources = vec![write_alpaca_source(dir.path(), "cs", 14).0];
    sources.push(write_chat_source(dir.path(), "sft", 12).0);
    sources.push(write_source(dir.path(), "web", Kind::Jsonl, 2, 5, 40).0);
    let mut cfg = config(sources, 24, 3, 2);
    // Pieces of 64 bytes cut the prompts, so a saved position often lies inside one.
    cfg.max_piece_bytes = 64;
    check_resume(&cfg, 30, &[1, 3, 8, 19]);
    cfg.mode = Mode::Corenet;
    cfg.seq_len = 40;
    cfg.corenet.document_split_size = 9;
    cfg.corenet.min_characters = 10;
    cfg.corenet.min_tokens = 4;
    check_resume(&cfg, 24, &[2, 5, 13]);
}

#[test]
fn state_for_another_layout_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(mixed_sources(dir.path()), 8, 2, 2);
    let state = run(&cfg, 0, None, 1)[0].state.clone();
    let mut other = cfg.clone();
    other.workers = 1;
    assert!(DataStream::with_tokenizer(&other, tokenizer(), 0, 2, Some(state.clone())).is_err());
    assert!(DataStream::with_tokenizer(&cfg, tokenizer(), 1, 2, Some(state)).is_err());
}

fn open(cfg: &DataConfig, rank: usize, world: usize, resume: Option<StreamState>) -> DataStream {
    DataStream::with_tokenizer(cfg, tokenizer(), rank, world, resume).expect("stream")
}

/// 2 ranks × 1 worker stopped after k batches each continue as 1 rank × 2 workers: the
/// re-partitioned stream yields rank 0's next batch, then rank 1's, alternately.
#[test]
fn two_rank_positions_repartition_onto_one_rank_with_two_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let two = config(mixed_sources(dir.path()), 24, 3, 1);
    let k = 5;
    let mut saved = Vec::new();
    let mut expected = Vec::new();
    for rank in 0..2 {
        let batches: Vec<Batch> = open(&two, rank, 2, None)
            .take(k + 4)
            .map(|b| b.expect("batch"))
            .collect();
        saved.push(batches[k - 1].state.clone());
        expected.push(batches[k..].to_vec());
    }
    let mut one = two.clone();
    one.workers = 2;
    let state = StreamState::repartition(&saved, 0, 1, 2).expect("repartition");
    assert_eq!(
        (state.rank, state.world_size, state.workers.len()),
        (0, 1, 2)
    );
    let rest: Vec<Batch> = open(&one, 0, 1, Some(state))
        .take(8)
        .map(|b| b.expect("batch"))
        .collect();
    for (i, b) in rest.iter().enumerate() {
        let want = &expected[i % 2][i / 2];
        assert_eq!(b.tokens, want.tokens, "batch {i}");
        assert_eq!(b.row_sources, want.row_sources, "batch {i}");
        assert_eq!(b.worker, i % 2);
    }
}

#[test]
fn repartition_refuses_layouts_that_cannot_be_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let two = config(mixed_sources(dir.path()), 24, 3, 1);
    let saved: Vec<StreamState> = (0..2)
        .map(|rank| {
            let b = open(&two, rank, 2, None).next().expect("a batch");
            b.expect("batch").state
        })
        .collect();
    // 2 shares onto 1 rank × 1 worker: the message says how to keep them.
    let err = StreamState::repartition(&saved, 0, 1, 1).expect_err("2 shares, 1 worker");
    assert!(err.to_string().contains("data.workers=2"), "{err}");
    // Positions at different batch counts.
    let mut uneven = saved.clone();
    uneven[1] = open(&two, 1, 2, None)
        .nth(1)
        .expect("two batches")
        .expect("batch")
        .state;
    let err = StreamState::repartition(&uneven, 0, 1, 2).expect_err("uneven");
    assert!(err.to_string().contains("different batch counts"), "{err}");
    // 2 shares cannot spread over 4 ranks.
    let err = StreamState::repartition(&saved, 0, 4, 1).expect_err("4 ranks");
    assert!(err.to_string().contains("cannot hold them evenly"), "{err}");
}

//! `mode: pairs`: each preference record gives a chosen row and a rejected row, side by side,
//! with the prompt and padding never targets; bad pairs are counted and skipped; resume is exact.

use corenet_data::{Batch, DataConfig, DataStream, Mode, StreamState};
use serde_json::json;

use crate::common::{config, tokenizer, write_preference_source};

fn pairs_config(
    dir: &std::path::Path,
    n: usize,
    extra: &[serde_json::Value],
) -> (DataConfig, Vec<crate::common::Pair>) {
    let (source, pairs) = write_preference_source(dir, "uf", n, extra);
    let mut cfg = config(vec![source], 48, 4, 1);
    cfg.mode = Mode::Pairs;
    (cfg, pairs)
}

fn batches(cfg: &DataConfig, resume: Option<StreamState>, n: usize) -> Vec<Batch> {
    let stream = DataStream::with_tokenizer(cfg, tokenizer(), 0, 1, resume).expect("stream");
    stream.take(n).map(|b| b.expect("batch")).collect()
}

#[test]
fn each_pair_fills_two_neighbouring_rows_with_only_the_answers_as_targets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, pairs) = pairs_config(dir.path(), 6, &[]);
    let tok = tokenizer();
    let got = batches(&cfg, None, 3); // 3 batches × 2 pairs = one epoch of 6
    let mut seen = Vec::new();
    for b in &got {
        let w = b.seq_len + 1;
        assert_eq!(b.row_sources.len(), 4);
        for pair in 0..2 {
            let mut sides = Vec::new();
            for r in [2 * pair, 2 * pair + 1] {
                let (ids, hidden) = (b.row(r), &b.prompt[r * w..(r + 1) * w]);
                assert_eq!(ids[0], tok.bos_id());
                let real = ids.iter().take_while(|&&t| t != tok.pad_id()).count();
                assert!(
                    hidden[real..].iter().all(|&h| !h),
                    "padding is left to the pad id"
                );
                let n = hidden.iter().take_while(|&&h| h).count();
                let text = tok.decode(&ids[1..real]).expect("decode");
                let answer: Vec<u32> = (n..real).filter(|&k| !hidden[k]).map(|k| ids[k]).collect();
                sides.push((text, tok.decode(&answer).expect("decode")));
            }
            let (prompt, chosen, rejected) = pairs
                .iter()
                .find(|(p, _, _)| sides[0].0.contains(&format!("<|user|>\n{p}</s>")))
                .expect("the row is a pair's chosen side");
            assert!(
                sides[1].0.contains(&format!("<|user|>\n{prompt}</s>")),
                "same prompt"
            );
            assert_eq!(sides[0].1.trim(), format!("{chosen}</s>"));
            assert_eq!(sides[1].1.trim(), format!("{rejected}</s>"));
            seen.push(prompt.clone());
        }
    }
    seen.sort();
    let mut all: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    all.sort();
    assert_eq!(seen, all, "one epoch holds every pair once");
}

#[test]
fn identical_answers_and_long_prompts_are_counted_and_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = "the quick brown fox ".repeat(40);
    let extra = [
        json!({"prompt": "same", "chosen": "yes", "rejected": "yes"}),
        json!({"prompt": long, "chosen": "yes", "rejected": "no"}),
        json!({"prompt": "no answer", "chosen": [{"role": "user", "content": "no answer"}], "rejected": "no"}),
    ];
    let (mut cfg, _) = pairs_config(dir.path(), 3, &extra);
    cfg.seq_len = 96;
    cfg.max_prompt_tokens = Some(48);
    let stream = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, None).expect("stream");
    let mut stream = stream;
    for _ in 0..3 {
        stream.next().expect("a batch").expect("batch");
    }
    let stats = &stream.stats()[0];
    assert_eq!(stats.bad_records, 2 * stats.epochs.max(1), "{stats:?}");
    assert!(stats.long_prompts >= 1, "{stats:?}");
    // Strict data turns the skip of a malformed pair into an error naming the file.
    cfg.strict = true;
    let strict = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, None).expect("stream");
    let err = strict
        .take(4)
        .find_map(|b| b.err())
        .expect("strict mode fails on the bad pair");
    assert!(err.to_string().contains("uf.jsonl"), "{err}");
}

#[test]
fn an_odd_micro_batch_or_a_mismatched_template_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cfg, _) = pairs_config(dir.path(), 2, &[]);
    cfg.micro_batch = 3;
    assert!(cfg
        .validate()
        .expect_err("odd")
        .to_string()
        .contains("even"));
    cfg.micro_batch = 2;
    cfg.mode = Mode::Packed;
    assert!(cfg
        .validate()
        .expect_err("mode")
        .to_string()
        .contains("mode: pairs"));
}

#[test]
fn pairs_resume_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = pairs_config(dir.path(), 7, &[]);
    let full = batches(&cfg, None, 9);
    for k in [1, 3, 5] {
        let state =
            StreamState::from_json(&full[k - 1].state.to_json().expect("json")).expect("state");
        let rest = batches(&cfg, Some(state), 9 - k);
        for (a, b) in full[k..].iter().zip(&rest) {
            assert_eq!((&a.tokens, &a.prompt), (&b.tokens, &b.prompt), "cut {k}");
        }
    }
}

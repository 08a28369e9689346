//! `loss_on: response`: a template's prompt tokens are inputs but never targets, counted as
//! LLM-Adapters counts them (`len(tokenize(user_prompt))`, BOS included), and resumed exactly.

use corenet_data::{Batch, DataStream, LossOn, Mode, TextTokenizer};

use crate::common::{
    config, tokenizer, write_alpaca_source, write_chat_source, write_source, Kind,
};

fn batches(cfg: &corenet_data::DataConfig, n: usize) -> Vec<Batch> {
    let stream = DataStream::with_tokenizer(cfg, tokenizer(), 0, 1, None).expect("stream");
    stream.take(n).map(|b| b.expect("batch")).collect()
}

/// The tokens LLM-Adapters leaves out of the loss for one record: BOS and the prompt.
fn prompt_len(tok: &dyn TextTokenizer, prompt: &str) -> usize {
    1 + tok.encode(prompt).expect("encode").len()
}

#[test]
fn corenet_rows_hide_exactly_the_prompt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source, parts) = write_alpaca_source(dir.path(), "cs", 12);
    let mut cfg = config(vec![source], 255, 2, 1);
    cfg.mode = Mode::Corenet;
    cfg.corenet.document_split_size = 4096;
    cfg.corenet.min_characters = 1;
    cfg.corenet.min_tokens = 1;
    let tok = tokenizer();
    let rows: Vec<(Vec<u32>, Vec<bool>)> = batches(&cfg, 6)
        .iter()
        .flat_map(|b| {
            let w = b.seq_len + 1;
            (0..b.micro_batch)
                .map(|r| (b.row(r).to_vec(), b.prompt[r * w..(r + 1) * w].to_vec()))
                .collect::<Vec<_>>()
        })
        .collect();
    // The records come in file order within the epoch; match each row to its record by text.
    for (ids, hidden) in &rows {
        let n = hidden.iter().take_while(|&&h| h).count();
        assert!(hidden[n..].iter().all(|&h| !h), "the prompt is a prefix");
        let real: Vec<u32> = ids.iter().copied().filter(|&t| t != tok.pad_id()).collect();
        let text = tok.decode(&real[1..real.len() - 1]).expect("decode");
        let (prompt, output) = parts
            .iter()
            .find(|(p, o)| text == format!("{p}{o}"))
            .expect("row is one record");
        assert_eq!(n, prompt_len(tok.as_ref(), prompt), "{prompt:?}");
        let response = tok.decode(&real[n..real.len() - 1]).expect("decode");
        assert_eq!(response.trim_start(), output.as_str());
    }
}

#[test]
fn packed_rows_hide_the_prompt_of_every_record_and_targets_ignore_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source, parts) = write_alpaca_source(dir.path(), "cs", 9);
    let cfg = config(vec![source], 64, 3, 1);
    let tok = tokenizer();
    let got = batches(&cfg, 24);
    let (ids, hidden): (Vec<u32>, Vec<bool>) = got
        .iter()
        .flat_map(|b| b.tokens.iter().copied().zip(b.prompt.iter().copied()))
        .unzip();
    // One epoch of documents, BOS … EOS, in order: the first nine are the records.
    let mut at = 0;
    for (prompt, output) in &parts {
        assert_eq!(ids[at], tok.bos_id());
        let end = at
            + ids[at..]
                .iter()
                .position(|&t| t == tok.eos_id())
                .expect("EOS");
        let n = hidden[at..=end].iter().take_while(|&&h| h).count();
        assert_eq!(n, prompt_len(tok.as_ref(), prompt));
        assert!(hidden[at + n..=end].iter().all(|&h| !h));
        let response = tok.decode(&ids[at + n..end]).expect("decode");
        assert_eq!(response.trim_start(), output.as_str());
        at = end + 1;
    }
    // Targets are the rows shifted by one, the hidden ones replaced by the ignore index.
    let b = &got[0];
    let targets = b.targets_i64(-100);
    let w = b.seq_len + 1;
    for r in 0..b.micro_batch {
        for i in 0..b.seq_len {
            let (id, h) = (b.tokens[r * w + i + 1], b.prompt[r * w + i + 1]);
            let want = if h { -100 } else { id as i64 };
            assert_eq!(targets[r * b.seq_len + i], want, "row {r} position {i}");
        }
    }
    let stats = &got.last().expect("batches").state.stats()[0];
    assert_eq!(
        stats.prompt_tokens,
        hidden.iter().filter(|&&h| h).count() as u64
    );
}

#[test]
fn the_whole_record_is_trained_on_by_default_and_plain_text_has_no_mask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut source, _) = write_alpaca_source(dir.path(), "cs", 9);
    let masked = batches(&config(vec![source.clone()], 64, 3, 1), 4);
    source.loss_on = Some(LossOn::All);
    let plain = batches(&config(vec![source], 64, 3, 1), 4);
    for (a, b) in masked.iter().zip(&plain) {
        assert_eq!(a.tokens, b.tokens, "the mask changes no token");
        assert!(b.prompt.is_empty());
        assert_eq!(b.targets_i64(-100), b.targets_i64(7));
    }
    assert!(masked.iter().all(|b| b.prompt.contains(&true)));
    let (text, _) = write_source(dir.path(), "web", Kind::Jsonl, 1, 5, 30);
    assert!(batches(&config(vec![text], 32, 2, 1), 3)
        .iter()
        .all(|b| b.prompt.is_empty()));
}

#[test]
fn loss_on_response_without_a_template_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut source, _) = write_source(dir.path(), "web", Kind::Jsonl, 1, 5, 30);
    source.loss_on = Some(LossOn::Response);
    let err = DataStream::with_tokenizer(&config(vec![source], 32, 2, 1), tokenizer(), 0, 1, None)
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("web") && msg.contains("template"), "{msg}");
}

#[test]
fn chat_rows_train_on_the_assistant_turns_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (source, conversations) = write_chat_source(dir.path(), "sft", 8);
    let mut cfg = config(vec![source], 255, 2, 1);
    cfg.mode = Mode::Corenet;
    cfg.corenet.document_split_size = 4096;
    cfg.corenet.min_characters = 1;
    cfg.corenet.min_tokens = 1;
    let tok = tokenizer();
    let encode = |t: &str| tok.encode(t).expect("encode");
    let got = batches(&cfg, 4);
    let w = 256;
    for (r, conv) in conversations.iter().enumerate() {
        let b = &got[r / 2];
        let (ids, hidden) = (b.row(r % 2), &b.prompt[(r % 2) * w..(r % 2 + 1) * w]);
        let real = ids.iter().filter(|&&t| t != tok.pad_id()).count();
        // Trained: each assistant content with its end-of-turn marker, and the row's EOS.
        let trained: usize = conv
            .iter()
            .filter(|(role, _)| *role == "assistant")
            .map(|(_, content)| encode(&format!("{content}</s>")).len())
            .sum::<usize>()
            + 1;
        let shown = (0..real).filter(|&k| !hidden[k]).count();
        assert_eq!(shown, trained, "conversation {r}");
        assert!(hidden[0], "BOS and the first header are prompt");
        // The row ends `…</s>` (shown), `\n` (prompt: the layout's separator), EOS (shown).
        assert!(!hidden[real - 1] && hidden[real - 2] && !hidden[real - 3]);
        let targets = b.targets_i64(-100);
        let ignored = targets[(r % 2) * 255..(r % 2 + 1) * 255]
            .iter()
            .take(real - 1)
            .filter(|&&t| t == -100)
            .count();
        assert_eq!(ignored, real - trained - 1, "conversation {r}");
    }
}

//! Perplexity on a held-out shard: every document becomes BOS + ids + EOS (as in pre-training),
//! the documents are concatenated, and the stream is cut into windows of the model's context
//! that overlap by one id, so every id but the first is predicted exactly once. The report is
//! the number of predicted tokens, their mean negative log-likelihood and exp of it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Kind, Tensor};

use corenet_data::read::{open, OpenSpec, Position, ReadItem, Stride};
use corenet_data::{Format, TextTokenizer};
use corenet_model::OpenElm;

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct PerplexityOptions {
    /// Tokens a window predicts (its input length).
    pub seq_len: usize,
    pub batch_size: usize,
    /// JSON key (dotted) or parquet column of the text.
    pub text_key: String,
    /// Stop after this many documents.
    pub max_documents: Option<usize>,
    /// Score at most this many windows (the first ones), as validation during training does.
    pub max_sequences: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PerplexityReport {
    pub path: PathBuf,
    pub documents: usize,
    /// Predicted tokens.
    pub tokens: usize,
    pub mean_nll: f64,
    pub perplexity: f64,
}

/// The token stream of a shard (any format corenet-data reads).
pub fn shard_tokens(
    path: &Path,
    tokenizer: &dyn TextTokenizer,
    options: &PerplexityOptions,
) -> Result<(usize, Vec<i64>)> {
    let format = Format::infer(path)?;
    let spec = OpenSpec {
        path,
        format,
        text_key: &options.text_key,
        template: None,
        stride: Stride::ALL,
        max_record_bytes: 256 * 1024 * 1024,
        // A URL shard is reached with the environment's endpoint and credentials.
        storage: &Default::default(),
    };
    let mut reader = open(&spec, Position::start(format))?;
    let (mut documents, mut ids) = (0, Vec::new());
    let max_ids = options
        .max_sequences
        .map(|n| ids_for_sequences(n, options.seq_len));
    while options.max_documents.is_none_or(|max| documents < max)
        && max_ids.is_none_or(|max| ids.len() < max)
    {
        match reader.next_item()? {
            None => break,
            Some(ReadItem::Bad(e)) => return Err(e.into()),
            Some(ReadItem::Doc(record)) => {
                ids.push(i64::from(tokenizer.bos_id()));
                ids.extend(tokenizer.encode(&record.text)?.into_iter().map(i64::from));
                ids.push(i64::from(tokenizer.eos_id()));
                documents += 1;
            }
        }
    }
    if let Some(max) = max_ids {
        ids.truncate(max);
    }
    Ok((documents, ids))
}

/// `[start, end)` of each window over a stream of `n` ids: inputs are `[start, end - 1)`,
/// targets `[start + 1, end)`.
pub fn windows(n: usize, seq_len: usize) -> Vec<(usize, usize)> {
    (0..n.saturating_sub(1))
        .step_by(seq_len.max(1))
        .map(|start| (start, (start + seq_len + 1).min(n)))
        .collect()
}

/// The ids a stream of at most `sequences` windows of `seq_len` needs: `sequences · seq_len`
/// targets plus the first input.
pub fn ids_for_sequences(sequences: usize, seq_len: usize) -> usize {
    sequences.saturating_mul(seq_len).saturating_add(1)
}

/// Summed negative log-likelihood of the targets of each window of `stream`, in one padded
/// forward pass (one row per window).
pub fn window_nll(model: &OpenElm, stream: &[i64], chunk: &[(usize, usize)]) -> Result<Vec<f64>> {
    let device = model.token_embeddings.device();
    let width = chunk.iter().map(|(s, e)| e - s - 1).max().unwrap_or(0);
    let mut inputs = Vec::with_capacity(chunk.len() * width);
    for &(s, e) in chunk {
        inputs.extend_from_slice(&stream[s..e - 1]);
        inputs.extend(std::iter::repeat_n(0, width - (e - s - 1)));
    }
    let batch = Tensor::from_slice(&inputs)
        .view([chunk.len() as i64, width as i64])
        .to_device(device); // (B, T)
    let logits = tch::no_grad(|| model.forward(&batch))?; // (B, T, V)
    let mut out = Vec::with_capacity(chunk.len());
    for (row, &(s, e)) in chunk.iter().enumerate() {
        let len = (e - s - 1) as i64;
        let logp = logits
            .get(row as i64)
            .narrow(0, 0, len)
            .log_softmax(-1, Kind::Float); // (T, V)
        let targets = Tensor::from_slice(&stream[s + 1..e])
            .to_device(device)
            .unsqueeze(1); // (T, 1)
        let picked = logp.gather(1, &targets, false).to_kind(Kind::Double);
        out.push(-picked.sum(Kind::Double).double_value(&[]));
    }
    Ok(out)
}

/// Summed negative log-likelihood and count of the targets of `stream`, in batches. The sum
/// runs over windows in order, so a caller that adds [`window_nll`]'s values in the same order
/// gets the same bits.
pub fn stream_nll(
    model: &OpenElm,
    stream: &[i64],
    seq_len: usize,
    batch_size: usize,
) -> Result<(f64, usize)> {
    if seq_len == 0 || batch_size == 0 {
        return Err(Error::config(
            "eval",
            "seq_len and batch_size must be at least 1",
        ));
    }
    let (mut total, mut count) = (0.0, 0);
    for chunk in windows(stream.len(), seq_len).chunks(batch_size) {
        for (nll, &(s, e)) in window_nll(model, stream, chunk)?.into_iter().zip(chunk) {
            total += nll;
            count += e - s - 1;
        }
    }
    Ok((total, count))
}

/// Perplexity of `model` on the shard at `path`.
pub fn perplexity(
    model: &OpenElm,
    tokenizer: &dyn TextTokenizer,
    path: &Path,
    options: &PerplexityOptions,
) -> Result<PerplexityReport> {
    let (documents, stream) = shard_tokens(path, tokenizer, options)?;
    let (nll, tokens) = stream_nll(model, &stream, options.seq_len, options.batch_size)?;
    if tokens == 0 {
        return Err(Error::config(
            "eval.data",
            format!("{} has no tokens to predict", path.display()),
        ));
    }
    let mean_nll = nll / tokens as f64;
    tracing::info!(path = %path.display(), documents, tokens, mean_nll, "perplexity");
    Ok(PerplexityReport {
        path: path.to_path_buf(),
        documents,
        tokens,
        mean_nll,
        perplexity: mean_nll.exp(),
    })
}

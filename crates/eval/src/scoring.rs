//! Log-likelihoods of continuations. [`Scorer`] is the seam the accuracy aggregation sees;
//! [`ModelScorer`] answers it with an OpenELM model in right-padded batches, as the harness's
//! `_loglikelihood_tokens`: the context+continuation ids are left-truncated to the model's
//! context plus one, the last id is dropped, and the continuation's log-probabilities are summed
//! from the last `len(continuation)` positions.

use tch::{Device, Kind, Tensor};

use corenet_data::TextTokenizer;
use corenet_model::OpenElm;

use crate::error::{Error, Result};
use crate::request::{encode_pair, Request, TokenRequest};

/// Answers `log P(continuation | context)` for each request, in order.
pub trait Scorer {
    fn loglikelihoods(&mut self, requests: &[Request]) -> Result<Vec<f64>>;
}

/// Scores with a model: tokenizes each request, sorts by length (longest first, so a batch pads
/// little), forwards batches of `batch_size` rows and returns the sums in request order.
pub struct ModelScorer<'a> {
    pub model: &'a OpenElm,
    pub tokenizer: &'a dyn TextTokenizer,
    pub batch_size: usize,
    /// The model's context in tokens: longer inputs keep their last `max_length` ids.
    pub max_length: usize,
    /// Prepend BOS to contexts (OpenELM's evaluation does, as the LLaMA tokenizer would).
    pub add_bos: bool,
}

impl Scorer for ModelScorer<'_> {
    fn loglikelihoods(&mut self, requests: &[Request]) -> Result<Vec<f64>> {
        let bos = self.add_bos.then(|| self.tokenizer.bos_id());
        let tokens = requests
            .iter()
            .map(|r| encode_pair(self.tokenizer, r, bos))
            .collect::<Result<Vec<_>>>()?;
        score_tokens(self.model, &tokens, self.batch_size, self.max_length)
    }
}

/// The model input of a request and how many of its last positions predict the continuation.
fn model_input(request: &TokenRequest, max_length: usize) -> Result<(Vec<i64>, usize)> {
    let n = request.continuation.len();
    if request.context.is_empty() {
        return Err(Error::config(
            "eval",
            "a request needs at least one context id (BOS)",
        ));
    }
    if n == 0 || n > max_length {
        return Err(Error::config(
            "eval.max_length",
            format!("a continuation of {n} tokens cannot be scored in a context of {max_length}"),
        ));
    }
    let all: Vec<i64> = request
        .context
        .iter()
        .chain(&request.continuation)
        .copied()
        .collect();
    let start = all.len().saturating_sub(max_length + 1);
    Ok((all[start..all.len() - 1].to_vec(), n))
}

/// Sums of continuation log-probabilities for token requests, computed `batch_size` rows at a
/// time (right-padded with id 0; causal attention keeps padding out of the real positions).
pub fn score_tokens(
    model: &OpenElm,
    requests: &[TokenRequest],
    batch_size: usize,
    max_length: usize,
) -> Result<Vec<f64>> {
    if batch_size == 0 {
        return Err(Error::config("eval.batch_size", "must be at least 1"));
    }
    let inputs = requests
        .iter()
        .map(|r| model_input(r, max_length))
        .collect::<Result<Vec<_>>>()?;
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].0.len()));
    let device = model.token_embeddings.device();
    let mut scores = vec![0.0; requests.len()];
    for chunk in order.chunks(batch_size) {
        let width = chunk.iter().map(|&i| inputs[i].0.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(chunk.len() * width);
        for &i in chunk {
            let row = &inputs[i].0;
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(0, width - row.len()));
        }
        let batch = Tensor::from_slice(&ids)
            .view([chunk.len() as i64, width as i64])
            .to_device(device); // (B, T)
        let logits = tch::no_grad(|| model.forward(&batch))?; // (B, T, V)
        for (row, &i) in chunk.iter().enumerate() {
            let (input, n) = (&inputs[i].0, inputs[i].1);
            scores[i] = continuation_logprob(
                &logits.get(row as i64),
                input.len(),
                &requests[i].continuation,
                n,
                device,
            )?;
        }
    }
    Ok(scores)
}

/// Sum over the last `n` real positions (of `len`) of log-softmax(logits)[target].
fn continuation_logprob(
    logits: &Tensor, // (T, V)
    len: usize,
    continuation: &[i64],
    n: usize,
    device: Device,
) -> Result<f64> {
    let rows = logits
        .narrow(0, (len - n) as i64, n as i64)
        .log_softmax(-1, Kind::Float); // (n, V)
    let targets = Tensor::from_slice(&continuation[continuation.len() - n..])
        .to_device(device)
        .unsqueeze(1); // (n, 1)
    let picked = rows.gather(1, &targets, false).to_kind(Kind::Double); // (n, 1)
    Ok(picked.sum(Kind::Double).double_value(&[]))
}

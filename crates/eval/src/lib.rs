//! corenet-eval: evaluation of a trained model, on the model and data crates only (no trainer):
//! perplexity on a held-out shard ([`perplexity`]) and zero-shot
//! multiple choice scored as EleutherAI's lm-evaluation-harness does ([`task`] reads the public
//! jsonl layouts and builds the harness's prompts, [`request`] tokenizes context/continuation
//! pairs, [`scoring`] computes log-likelihoods in padded batches, [`accuracy`] aggregates acc and
//! acc_norm), and LLM-Adapters' commonsense reasoning for fine-tuned models ([`commonsense`]:
//! generated or log-likelihood answers to Alpaca-prompted test sets).

#![forbid(unsafe_code)]

pub mod accuracy;
pub mod commonsense;
pub mod error;
pub mod perplexity;
pub mod request;
pub mod scoring;
pub mod task;

pub use accuracy::{evaluate, TaskResult};
pub use error::{Error, Result};
pub use perplexity::{
    ids_for_sequences, perplexity, stream_nll, window_nll, windows, PerplexityOptions,
    PerplexityReport,
};
pub use request::{encode_pair, Request, TokenRequest};
pub use scoring::{ModelScorer, Scorer};
pub use task::{load_docs, Doc, Task};

use corenet_data::TextTokenizer;
use corenet_model::OpenElmConfig;

/// Every id the tokenizer can produce must be a row of the model's embedding.
pub fn check_tokenizer(tokenizer: &dyn TextTokenizer, config: &OpenElmConfig) -> Result<()> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::config(
            "tokenizer",
            format!(
                "the tokenizer has {} ids but the model's vocabulary only {} rows: it was trained with another tokenizer",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    Ok(())
}

//! Immutable settings shared by all workers of a stream.

use std::sync::Arc;

use crate::config::DataConfig;
use crate::error::{Error, Result};
use crate::source::Source;
use crate::tokenizer::TextTokenizer;

/// Everything a worker needs besides its own position.
pub struct Pipeline {
    pub config: DataConfig,
    pub sources: Vec<Source>,
    pub tokenizer: Arc<dyn TextTokenizer>,
}

impl Pipeline {
    /// Validates the config and resolves every source's files.
    pub fn new(config: &DataConfig, tokenizer: Arc<dyn TextTokenizer>) -> Result<Pipeline> {
        config.validate()?;
        let sources = config
            .sources
            .iter()
            .map(|s| Source::resolve(s, &config.storage))
            .collect::<Result<Vec<_>>>()?;
        let pad = tokenizer.pad_id();
        if [tokenizer.bos_id(), tokenizer.eos_id()].contains(&pad) {
            return Err(Error::Config(format!("pad id {pad} collides with BOS/EOS")));
        }
        Ok(Pipeline {
            config: config.clone(),
            sources,
            tokenizer,
        })
    }

    /// Ids per row: `seq_len + 1` (inputs and shifted targets).
    pub fn row_len(&self) -> usize {
        self.config.seq_len + 1
    }

    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name.clone()).collect()
    }
}

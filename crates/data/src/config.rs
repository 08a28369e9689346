//! Data configuration: the `data` section of a recipe. Plain serde structs, unknown fields
//! rejected, defaults in `Default`, checked by `validate()`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::Format;
use crate::remote::StorageConfig;
use crate::template::Template;

/// How documents become fixed-length rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Documents (BOS + tokens + EOS) concatenated and cut into full rows; nothing padded.
    #[default]
    Packed,
    /// CoreNet's `general_lm`: one 2048-word piece per row, filtered, truncated or padded.
    Corenet,
    /// Preference pairs (DPO): each record of a `template: preference` source gives two
    /// neighbouring rows, chosen then rejected, each BOS + prompt + answer, truncated or
    /// right-padded; prompt and padding are never targets. `micro_batch` counts rows (2 per pair).
    Pairs,
}

/// Which tokens of a record the loss is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// Every token (pre-training, and CoreNet's `commonsense_170k` fine-tuning).
    #[default]
    All,
    /// Only the response a template renders: the prompt's tokens are inputs but never
    /// targets (LLM-Adapters' `train_on_inputs=False`). Needs a `template`.
    Response,
}

/// One data source (a family of shards sharing a layout), with its mixing weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// Name used in stats and logs.
    pub name: String,
    /// Files or glob patterns.
    pub paths: Vec<String>,
    /// Format; inferred from each file's extension when absent.
    pub format: Option<Format>,
    /// JSON key or parquet column holding the text; dots descend into JSON objects.
    pub text_key: String,
    /// Render each JSON record's fields into the text instead of reading `text_key`
    /// (`alpaca`: CommonSense-170k / LLM-Adapters records). JSON-lines sources only. Left out
    /// of the resolved recipe when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
    /// `response`: leave the template's prompt out of the loss; `all`: train on every token.
    /// Absent: `response` for `template: chat` (SFT on the assistant turns), `all` otherwise
    /// (CoreNet's way). Left out of the resolved recipe when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_on: Option<LossOn>,
    /// Relative sampling weight (rows drawn from this source ∝ weight).
    pub weight: f64,
    /// Fraction of this source's documents never trained on, chosen by a hash of each
    /// document's file and position ([`crate::HoldBack`]), and scored by validation instead.
    pub hold_back: f64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            name: String::new(),
            paths: Vec::new(),
            format: None,
            text_key: "text".into(),
            template: None,
            loss_on: None,
            weight: 1.0,
            hold_back: 0.0,
        }
    }
}

/// CoreNet-mode filters (corenet-spec §3.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorenetConfig {
    /// Words (split on single spaces) per piece.
    pub document_split_size: usize,
    /// Pieces whose normalised copy is shorter than this many characters are dropped.
    pub min_characters: usize,
    /// Pieces with fewer tokens (BOS and EOS included) are dropped.
    pub min_tokens: usize,
    /// Apply the ftfy-like text cleanup and NFC before tokenizing.
    pub fix_text: bool,
}

impl Default for CorenetConfig {
    fn default() -> Self {
        CorenetConfig {
            document_split_size: 2048,
            min_characters: 200,
            min_tokens: 256,
            fix_text: true,
        }
    }
}

/// The whole data pipeline's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub sources: Vec<SourceConfig>,
    /// Path of a Hugging Face `tokenizer.json` or a SentencePiece `tokenizer.model` (see
    /// [`crate::load_tokenizer`]).
    pub tokenizer: PathBuf,
    /// Tokens per training row; each row holds `seq_len + 1` ids (inputs and shifted targets).
    pub seq_len: usize,
    pub mode: Mode,
    /// Rows per batch.
    pub micro_batch: usize,
    /// Seeds file order and source mixing.
    pub seed: u64,
    /// Worker threads per rank (each reads a disjoint part of the data, like CoreNet's workers).
    pub workers: usize,
    /// Batches each worker may prepare ahead of the consumer.
    pub prefetch: usize,
    /// Turn skipped bad records or files into errors.
    pub strict: bool,
    pub corenet: CorenetConfig,
    /// Packed mode tokenizes long documents in pieces of at most this many bytes, cut at
    /// whitespace, so a huge document never sits whole in the tokenizer.
    pub max_piece_bytes: usize,
    /// Records longer than this (bytes) are skipped as bad records.
    pub max_record_bytes: usize,
    /// Pairs mode: a pair whose prompt (BOS included) has more tokens is skipped, counted and
    /// logged (so is one whose prompt leaves no room in the row for an answer). Absent: only
    /// the row length limits it. Left out of the resolved recipe when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<usize>,
    /// How `s3://`, `gs://`, `az://` and `https://` sources are reached (remote/).
    #[serde(skip_serializing_if = "is_default_storage")]
    pub storage: StorageConfig,
}

fn is_default_storage(s: &StorageConfig) -> bool {
    *s == StorageConfig::default()
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            sources: Vec::new(),
            tokenizer: PathBuf::new(),
            seq_len: 2048,
            mode: Mode::Packed,
            micro_batch: 16,
            seed: 0,
            workers: 1,
            prefetch: 2,
            strict: false,
            corenet: CorenetConfig::default(),
            max_piece_bytes: 16 * 1024,
            max_record_bytes: 256 * 1024 * 1024,
            max_prompt_tokens: None,
            storage: StorageConfig::default(),
        }
    }
}

impl DataConfig {
    /// Checks every field; call before building a stream.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.sources.is_empty() {
            return bad("no sources".into());
        }
        for (name, v) in [
            ("seq_len", self.seq_len),
            ("micro_batch", self.micro_batch),
            ("workers", self.workers),
        ] {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        if self.prefetch == 0 || self.max_piece_bytes < 16 || self.max_record_bytes == 0 {
            return bad(
                "prefetch, max_piece_bytes (>= 16) and max_record_bytes must be positive".into(),
            );
        }
        if self.corenet.document_split_size == 0 {
            return bad("corenet.document_split_size must be > 0".into());
        }
        self.validate_pairs()?;
        self.storage.validate()?;
        let mut names = std::collections::HashSet::new();
        for s in &self.sources {
            s.validate()?;
            if !names.insert(s.name.as_str()) {
                return bad(format!("duplicate source name `{}`", s.name));
            }
        }
        Ok(())
    }
}

impl DataConfig {
    /// Pairs mode and `template: preference` go together, and a pair fills two rows.
    fn validate_pairs(&self) -> Result<()> {
        let pairs = self.mode == Mode::Pairs;
        for s in &self.sources {
            let preference = s.template == Some(Template::Preference);
            if pairs != preference {
                return Err(Error::Config(format!(
                    "source `{}`: `template: preference` and `mode: pairs` go together (mode is {:?}, template {:?})",
                    s.name, self.mode, s.template
                )));
            }
        }
        if pairs && !self.micro_batch.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "mode: pairs puts a pair's chosen and rejected answers in neighbouring rows: micro_batch must be even, got {}",
                self.micro_batch
            )));
        }
        if self.max_prompt_tokens == Some(0) {
            return Err(Error::Config("max_prompt_tokens must be > 0".into()));
        }
        Ok(())
    }
}

impl SourceConfig {
    /// The loss coverage in effect (`loss_on`, or its default for the template).
    pub fn loss_on(&self) -> LossOn {
        match (self.loss_on, self.template) {
            (Some(l), _) => l,
            (None, Some(Template::Chat | Template::Preference)) => LossOn::Response,
            (None, _) => LossOn::All,
        }
    }

    /// Checks one source.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("source `{}`: {m}", self.name)));
        if self.name.is_empty() {
            return bad("empty name".into());
        }
        if self.paths.is_empty() {
            return bad("no paths".into());
        }
        if self.text_key.is_empty() || self.text_key.split('.').any(str::is_empty) {
            return bad(format!("bad text_key `{}`", self.text_key));
        }
        if self.template.is_some() && self.format == Some(Format::Parquet) {
            return bad("a template renders JSON records; this source is parquet".into());
        }
        if self.loss_on() == LossOn::Response && self.template.is_none() {
            return bad(
                "loss_on: response needs a template to say where the response starts".into(),
            );
        }
        if self.template == Some(Template::Preference) && self.loss_on() == LossOn::All {
            return bad(
                "a preference pair is scored on its answer: loss_on must be response".into(),
            );
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return bad(format!("weight must be positive, got {}", self.weight));
        }
        if !(0.0..1.0).contains(&self.hold_back) {
            return bad(format!(
                "hold_back must be a fraction in [0, 1), got {}",
                self.hold_back
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_fields() {
        let json = r#"{"sources":[{"name":"rw","paths":["*.parquet"],"text_key":"content","weight":2}],
            "tokenizer":"t.json","seq_len":8,"micro_batch":2,"mode":"corenet"}"#;
        let cfg: DataConfig = serde_json::from_str(json).expect("valid config");
        assert_eq!(cfg.mode, Mode::Corenet);
        assert_eq!(cfg.corenet.min_tokens, 256);
        assert!(cfg.validate().is_ok());
        assert!(serde_json::from_str::<DataConfig>(r#"{"seqlen":8}"#).is_err());
    }

    #[test]
    fn validate_catches_bad_values() {
        let mut cfg = DataConfig {
            sources: vec![SourceConfig {
                name: "a".into(),
                paths: vec!["x".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(cfg.validate().is_ok());
        cfg.sources[0].weight = 0.0;
        assert!(cfg.validate().is_err());
        cfg.sources[0].weight = 1.0;
        cfg.seq_len = 0;
        assert!(cfg.validate().is_err());
    }
}

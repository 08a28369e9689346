//! corenet-data: streams raw text shards (parquet, jsonl, jsonl.zst, json.gz), tokenizes them on
//! the fly in worker threads, mixes sources, packs or pads sequences, shards by rank and worker
//! and resumes exactly. It never links libtorch.
//!
//! Data flow: [`DataConfig`] → [`Source`] (globs) → per-worker [`Shard`] plan → record readers
//! ([`read`]) → pieces → [`TextTokenizer`] → rows (packed, or CoreNet's pad/truncate) →
//! [`Batch`] (with the [`StreamState`] right after it) via [`DataStream`].

#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod error;
pub mod format;
pub mod hold_back;
pub mod inspect;
mod mixer;
pub mod piece;
mod pipeline;
pub mod read;
pub mod remote;
pub mod rng;
pub mod sample;
pub mod sentencepiece;
pub mod shard;
pub mod shard_list;
pub mod source;
mod source_stream;
pub mod state;
pub mod stats;
pub mod stream;
pub mod template;
pub mod text_fix;
pub mod tokenizer;
pub mod tokenizer_train;
mod worker;

pub use batch::Batch;
pub use config::{CorenetConfig, DataConfig, LossOn, Mode, SourceConfig};
pub use error::{Error, RemoteFailure, Result};
pub use format::Format;
pub use hold_back::{for_each_document, DocumentFilter, HoldBack};
pub use inspect::{collect_stats, peek, PeekRow, StatsReport};
pub use remote::{remote_totals, RemoteTotals, StorageConfig};
pub use sample::{write_samples, SampleOptions, SampleSummary};
pub use sentencepiece::{SentencePieceModel, SentencePieceTokenizer};
pub use shard::Shard;
pub use shard_list::{DataChange, FileStamp, ShardList, SourceChange, SourceFiles};
pub use source::Source;
pub use state::{SourceState, StreamState, WorkerState};
pub use stats::SourceStats;
pub use stream::DataStream;
pub use tokenizer::{
    load_tokenizer, resolve_tokenizer, tokenizer_in_folder, TokenizerKind, TOKENIZER_JSON_FILE,
    TOKENIZER_MODEL_FILE,
};
pub use tokenizer::{HfTokenizer, TextTokenizer};
pub use tokenizer_train::{train_tokenizer, train_tokenizer_from_texts, DEFAULT_SPECIAL_TOKENS};

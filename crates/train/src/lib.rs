//! corenet-train: recipes, AdamW, LR schedules, mixed precision, checkpoints and logs.
//!
//! - [`schedule`]: CoreNet's LR schedules (cosine with linear warmup, exact to 8 decimals).
//! - [`tensorboard`]: a small TensorBoard event-file writer and a verifying reader.
//! - [`checkpoint_store`]: atomic, checksummed, pruned checkpoint directories.
//! - [`metrics`]: JSONL metrics sink, throughput/ETA and MFU.
//! - [`eval`]: perplexity on a held-out shard and lm-eval-harness style zero-shot multiple choice.
//! - [`overrides`]: `--set a.b.c=value` on a value tree, and deserialization that names key paths.
//! - [`plan`]: parameters, tokens, FLOPs, memory per GPU and GPU-hours of a recipe, no model built.
//! - [`dry_run`]: every check of a run plus one optimizer step, nothing written.
//! - [`corenet_config`]: CoreNet's own YAML mapped onto a recipe.
//! - [`readback`]: step values copied to the host behind the device's work, read a step later.

pub mod checkpoint_store;
pub mod corenet_config;
pub mod dry_run;
pub mod error;
pub mod eval;
pub mod metrics;
pub mod overrides;
pub mod plan;
pub mod schedule;
pub mod tensorboard;

pub use error::{Error, Result};
pub mod loss;
pub mod optim;
pub mod optimizer;
pub mod readback;
pub mod recipe;
pub mod recompute;
pub mod sharded_adamw;
pub mod train_state;
pub mod trainer;

pub use recipe::Recipe;
pub use trainer::{Resume, RunSummary, TrainOptions, Trainer};
pub mod average;
pub mod bench;
pub mod data_parallel;
pub mod device_info;
pub mod dist;
pub mod fused;
mod shim;

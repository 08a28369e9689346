//! The recipe's own sections: the run's name and directory, the trainer's knobs, checkpoint
//! and logging settings. (The model, data, optimizer and schedule sections are the config
//! structs of those components.)

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::error::{Error, Result};
use crate::log::mlflow::MlflowConfig;

/// Numeric precision of the model's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 weights and activations, f32 master weights and moments, norm statistics and loss
    /// in f32.
    Bf16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    /// The device this choice names on this machine; `key` is the option that made it, for the
    /// error when CUDA is asked for but absent.
    pub fn resolve(self, key: &str) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(Error::config(
                key,
                "cuda requested but no CUDA device is available (was the binary built with --features cuda?)",
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    /// Everything of the run goes here: resolved recipe, checkpoints, metrics, TensorBoard.
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    /// Sequences per optimizer step, over all ranks.
    pub global_batch: usize,
    /// Sequences per forward/backward on one rank.
    pub micro_batch: usize,
    /// Optimizer steps of the whole run.
    pub steps: u64,
    pub precision: Precision,
    /// Recompute each block's activations in backward (trades compute for memory).
    pub activation_checkpointing: bool,
    /// Attention stays inside each document of a packed row (a document starts at BOS), so
    /// packed SFT conversations never see one another. Costs SDPA's fused causal kernel. Left
    /// out of the resolved recipe when off, so older hashes hold.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub document_mask: bool,
    /// Seeds the model initialisation.
    pub seed: u64,
    /// z-loss coefficient (CoreNet's OpenELM recipes: 1e-4).
    pub z_loss: f64,
    /// Stop after this many consecutive steps with a non-finite loss or gradient.
    pub max_bad_steps: u32,
    /// Intra-op CPU threads (libtorch's default when null).
    pub threads: Option<usize>,
    pub device: DeviceChoice,
    /// Data-parallel runs all-reduce gradients in coalesced buckets of about this many MiB
    /// (PyTorch DDP's `bucket_cap_mb`); one collective per bucket.
    pub bucket_mb: f64,
    /// ZeRO-1: partition the f32 master weights and AdamW moments across data-parallel ranks
    /// (gradients reduce-scattered, each rank updates its shard, parameters all-gathered).
    /// Ignored by a single process.
    pub sharded_optimizer: bool,
    /// Start each bucket's gradient all-reduce as soon as backward has produced it (the
    /// blocks are back-propagated one at a time, newest first) instead of after backward.
    pub overlap_grad_reduce: bool,
    /// Read each step's loss, gradient norm and stop votes after the next step is queued, so
    /// the host never waits for the device (logs, skip counts and stop decisions trail by one
    /// step). Null: on for CUDA, off on the CPU, where nothing runs ahead of the host.
    pub lagged_reads: Option<bool>,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            global_batch: 16,
            micro_batch: 16,
            steps: 1000,
            precision: Precision::F32,
            activation_checkpointing: false,
            document_mask: false,
            seed: 0,
            z_loss: 1e-4,
            max_bad_steps: 5,
            threads: None,
            device: DeviceChoice::Auto,
            bucket_mb: 25.0,
            sharded_optimizer: false,
            overlap_grad_reduce: true,
            lagged_reads: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Save every this many steps (0: only at the end and on SIGINT/SIGTERM).
    pub interval: u64,
    /// Checkpoints kept (0 keeps all).
    pub keep_last: usize,
    /// Defaults to `<run.dir>/checkpoints`.
    pub dir: Option<PathBuf>,
    /// Write checkpoints on a background thread: the step loop stops only to copy the state to
    /// host memory, then trains on while the files are written, hashed and fsynced. One save
    /// is in flight at a time (the next waits for it); the run's end and SIGTERM wait for it.
    pub background: bool,
    /// Copy every committed checkpoint to this object-store folder (`s3://bucket/runs/NAME/`,
    /// reached with `data.storage`), keeping `keep_last` there too; `--resume auto` fetches
    /// the newest copy when the machine has no checkpoint of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval: 1000,
            keep_last: 3,
            dir: None,
            background: false,
            mirror: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Log metrics every this many steps (and at the last step).
    pub interval: u64,
    pub tensorboard: bool,
    /// Show a progress bar on a terminal.
    pub progress: bool,
    /// Defaults to `<run.dir>`.
    pub dir: Option<PathBuf>,
    /// Dense bf16 peak FLOP/s of one device, for the MFU of a device the built-in table does
    /// not know (an unlisted GPU, or a CPU). Unset: the table's value for CUDA devices, no MFU
    /// elsewhere. Left out of the resolved recipe when unset, so older recipe hashes hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_peak_flops: Option<f64>,
    /// An MLflow tracking server to send params and metrics to (docs/monitoring.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<MlflowConfig>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            interval: 10,
            tensorboard: true,
            progress: true,
            dir: None,
            device_peak_flops: None,
            mlflow: None,
        }
    }
}

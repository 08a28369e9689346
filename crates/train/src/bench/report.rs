//! The benchmark's report: the same JSON fields as the PyTorch reference script writes, so
//! `scripts/bench_compare.py` can put the two side by side.

use serde::{Deserialize, Serialize};

use corenet_model::OpenElmConfig;

use crate::error::{Error, Result};

/// Medians over the synchronised steps, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimeSplit {
    /// Embedding, blocks, head and loss (with checkpointing: the no-grad pass plus head and loss).
    pub forward_s: f64,
    /// Backward (with checkpointing: including every block's recomputation).
    pub backward_s: f64,
    /// Gradient clipping, the AdamW update and zeroing the gradients.
    pub optimizer_s: f64,
    /// Gradient all-reduce; 0 in a single process.
    pub communication_s: f64,
    /// The whole synchronised step (median of the per-step totals).
    pub step_s: f64,
}

/// The result of one benchmark run; the PyTorch reference script writes the same fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// "corenet-rs" or "pytorch-eager".
    pub implementation: String,
    /// The exact command line.
    pub command: String,
    pub git_commit: Option<String>,
    /// Unix seconds when the run finished.
    pub timestamp: u64,
    pub host: String,
    /// "cpu" or "cuda:N".
    pub device: String,
    pub device_name: String,
    pub torch_version: String,
    pub threads: usize,
    pub model: String,
    /// The architecture benchmarked (CoreNet field names; the PyTorch reference reads it).
    pub model_config: OpenElmConfig,
    pub params: u64,
    pub seq_len: usize,
    pub micro_batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub split_steps: usize,
    /// "f32", or "bf16" (bf16 weights and activations, f32 master weights and moments).
    pub precision: String,
    pub activation_checkpointing: bool,
    pub tokens_per_step: u64,
    /// Wall time of the unsynchronised window over its steps.
    pub step_time_s: f64,
    /// Median of the unsynchronised steps' host-side times (on CPU the real step times).
    pub step_time_median_s: f64,
    pub tokens_per_s: f64,
    /// Training FLOPs per token (6N plus attention, `training_flops_per_token`).
    pub flops_per_token: f64,
    pub achieved_flops_per_s: f64,
    /// Dense bf16 peak of the device, when known (GPUs only).
    pub peak_flops_per_s: Option<f64>,
    /// Null on CPU or an unknown GPU.
    pub mfu: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    /// What `peak_memory_bytes` measures ("process VmHWM", "CUDA caching allocator peak"), or
    /// why it is null.
    pub peak_memory_source: String,
    pub split: TimeSplit,
    /// The backend libtorch's `_fused_sdp_choice` picks for the first layer's attention.
    pub sdpa_backend: String,
    /// How query heads share KV heads: "enable_gqa" (inside SDPA) or "repeat_interleave".
    pub gqa: String,
    /// "native" (`at::rms_norm`) or "composite".
    pub rms_norm: String,
    pub fused_adamw: bool,
    /// Inputs staged in pinned host memory and copied with non_blocking (CUDA only).
    pub pinned_input: bool,
    /// Loss of the last timed step (a sanity check: finite, near ln V at the start).
    pub final_loss: f64,
    /// Host-side time of every unsynchronised step.
    pub step_times_s: Vec<f64>,
}

impl BenchReport {
    /// Writes the report as pretty JSON (parent directories created).
    pub fn write_json(&self, path: &std::path::Path) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, e))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Json {
            path: path.to_path_buf(),
            source: e,
        })?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io("write", path, e))
    }
}

/// Names of `_fused_sdp_choice`'s return values (`at::SDPBackend`).
pub fn sdpa_backend_name(code: i64) -> &'static str {
    match code {
        -1 => "error",
        0 => "math",
        1 => "flash_attention",
        2 => "efficient_attention",
        3 => "cudnn_attention",
        4 => "overrideable",
        _ => "unknown",
    }
}

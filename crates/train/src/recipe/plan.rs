//! The run planner behind `corenet plan`: parameters, tokens, FLOPs, memory per GPU and wall
//! time of a recipe on N GPUs, computed from the config alone (the model is never allocated).
//!
//! Memory per GPU, with P the exact parameter count, w the weight bytes (2 for bf16, 4 for f32)
//! and S the data-parallel world size when `trainer.sharded_optimizer` is on (ZeRO-1), else 1:
//!
//! - weights: P·w; gradients: P·w (they live in the parameters' dtype);
//! - f32 master weights (bf16 only): 4P / S; AdamW moments (f32 m and v): 8P / S;
//! - activations of one micro-batch of T = micro_batch × seq_len tokens, see
//!   [`layer_activation_bytes`] and [`head_activation_bytes`]:
//!   - without checkpointing: T · (Σ_layers A_i + H);
//!   - with checkpointing (each block keeps only its input, then is recomputed alone in
//!     backward): T · (L·a·d + max_i A_i + H).
//!
//! A plan fits when the total is at most [`USABLE_FRACTION`] of the GPU's memory; the rest is
//! left to the CUDA context, cuBLAS/NCCL workspaces and allocator fragmentation.
//!
//! Wall time uses model FLOPs ([`OpenElmConfig::training_flops_per_token`]: 6 per matmul
//! parameter and token plus attention): `total FLOPs / (GPUs × dense bf16 peak × MFU)`.
//! Activation recomputation costs about one extra forward that MFU does not count, so a
//! checkpointed run reaches a lower MFU for the same hardware speed.

use std::str::FromStr;

use serde::Serialize;

use corenet_model::OpenElmConfig;

use crate::error::{Error, Result};
use crate::recipe::{Precision, Recipe};

/// Share of the GPU's memory a plan may use.
pub const USABLE_FRACTION: f64 = 0.9;

/// The GPUs the planner knows: memory and dense bf16 peak (no sparsity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gpu {
    /// H100 SXM 80 GB: 989 TFLOP/s dense bf16.
    H100,
    /// A100 SXM 80 GB: 312 TFLOP/s dense bf16.
    A100,
}

impl Gpu {
    pub fn name(self) -> &'static str {
        match self {
            Gpu::H100 => "H100 SXM 80GB",
            Gpu::A100 => "A100 SXM 80GB",
        }
    }

    /// Dense bf16 tensor-core peak, FLOP/s.
    pub fn peak_bf16_flops(self) -> f64 {
        match self {
            Gpu::H100 => 989e12,
            Gpu::A100 => 312e12,
        }
    }

    /// Device memory, bytes (80 GB).
    pub fn memory_bytes(self) -> u64 {
        80_000_000_000
    }
}

impl FromStr for Gpu {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "h100" => Ok(Gpu::H100),
            "a100" => Ok(Gpu::A100),
            other => Err(Error::config(
                "gpu",
                format!("`{other}` is not known (supported: h100, a100)"),
            )),
        }
    }
}

/// What the plan is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanTarget {
    /// Data-parallel world size.
    pub gpus: usize,
    pub gpu: Gpu,
    /// Model FLOPs utilisation assumed for the wall time, in (0, 1].
    pub mfu: f64,
}

/// Bytes per GPU, by what they hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// Parameters with gradients and optimizer state: all of them, or a PEFT run's adapters.
    pub trainable_params: u64,
    /// Every weight: the model's, plus a PEFT run's adapters.
    pub weights: u64,
    /// A DPO run's frozen reference model (the base weights once more, no gradients).
    pub reference_weights: u64,
    pub gradients: u64,
    /// f32 master weights (bf16 runs), after ZeRO-1 partitioning.
    pub master_weights: u64,
    /// AdamW's f32 moments, after ZeRO-1 partitioning.
    pub optimizer_moments: u64,
    /// Ranks the optimizer state is partitioned over (1 without `sharded_optimizer`).
    pub optimizer_shards: usize,
    pub activations_full: u64,
    pub activations_checkpointed: u64,
    /// The one of the two the recipe uses.
    pub activations: u64,
    pub activation_checkpointing: bool,
    /// weights + gradients + masters + moments + activations.
    pub total: u64,
    pub gpu_memory: u64,
    /// `USABLE_FRACTION × gpu_memory`.
    pub usable: u64,
    pub fits: bool,
}

/// A recipe's plan on a set of GPUs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub params: u64,
    pub non_embedding_params: u64,
    pub gpus: usize,
    pub gpu: Gpu,
    pub gpu_name: &'static str,
    pub global_batch: usize,
    pub micro_batch: usize,
    pub seq_len: usize,
    /// Micro-batches per optimizer step on each GPU.
    pub accumulation: usize,
    pub steps: u64,
    pub tokens_per_step: u64,
    pub total_tokens: u64,
    pub flops_per_token: f64,
    pub total_flops: f64,
    pub memory: MemoryPlan,
    pub peak_flops_per_gpu: f64,
    pub mfu: f64,
    /// Tokens per second per GPU at that MFU.
    pub tokens_per_s_per_gpu: f64,
    pub wall_seconds: f64,
    pub gpu_hours: f64,
}

/// Plans `recipe` on `target`; errors when the batch does not split over the GPUs.
pub fn plan(recipe: &Recipe, target: &PlanTarget) -> Result<Plan> {
    if target.gpus == 0 {
        return Err(Error::config("gpus", "must be at least 1"));
    }
    if !(target.mfu.is_finite() && target.mfu > 0.0 && target.mfu <= 1.0) {
        return Err(Error::config(
            "mfu",
            format!("{} is outside (0, 1]", target.mfu),
        ));
    }
    let model = &recipe.model;
    let count = model.param_count()?;
    let accumulation = recipe.accumulation(target.gpus)?;
    let seq_len = recipe.data.seq_len;
    let tokens_per_step = (recipe.trainer.global_batch * seq_len) as u64;
    let total_tokens = tokens_per_step * recipe.trainer.steps;
    let flops_per_token = model.training_flops_per_token(seq_len)?;
    let total_flops = flops_per_token * total_tokens as f64;
    let peak = target.gpu.peak_bf16_flops();
    let cluster_flops = target.gpus as f64 * peak * target.mfu;
    let wall_seconds = total_flops / cluster_flops;
    Ok(Plan {
        params: count.total(),
        non_embedding_params: count.non_embedding(),
        gpus: target.gpus,
        gpu: target.gpu,
        gpu_name: target.gpu.name(),
        global_batch: recipe.trainer.global_batch,
        micro_batch: recipe.trainer.micro_batch,
        seq_len,
        accumulation,
        steps: recipe.trainer.steps,
        tokens_per_step,
        total_tokens,
        flops_per_token,
        total_flops,
        memory: memory_plan(recipe, target.gpus, target.gpu.memory_bytes())?,
        peak_flops_per_gpu: peak,
        mfu: target.mfu,
        tokens_per_s_per_gpu: peak * target.mfu / flops_per_token,
        wall_seconds,
        gpu_hours: wall_seconds * target.gpus as f64 / 3600.0,
    })
}

/// Memory per GPU of `recipe` on `world_size` data-parallel ranks with `gpu_memory` bytes each.
pub fn memory_plan(recipe: &Recipe, world_size: usize, gpu_memory: u64) -> Result<MemoryPlan> {
    let model = &recipe.model;
    let base = model.param_count()?.total();
    // A PEFT run trains (and keeps gradients, masters and moments for) its adapters only.
    let adapters = match &recipe.peft {
        Some(peft) => peft
            .adapter_params(model)
            .map_err(|e| Error::config("peft", e.to_string()))?,
        None => 0,
    };
    let trained = if recipe.peft.is_some() {
        adapters
    } else {
        base
    };
    let params = trained;
    let bf16 = recipe.trainer.precision == Precision::Bf16;
    let weight_bytes = if bf16 { 2 } else { 4 };
    let shards = if recipe.trainer.sharded_optimizer {
        world_size.max(1)
    } else {
        1
    };
    let master_bytes = if bf16 { 4 * params } else { 0 };
    let master_weights = master_bytes.div_ceil(shards as u64);
    let optimizer_moments = (8 * params).div_ceil(shards as u64);
    let tokens = (recipe.trainer.micro_batch * recipe.data.seq_len) as u64;
    let per_layer = layer_activation_bytes(model, recipe.trainer.precision)?;
    let a = weight_bytes;
    let head = head_activation_bytes(model, recipe.trainer.precision);
    let layer_inputs = per_layer.len() as u64 * a * model.model_dim as u64;
    let activations_full = tokens * (per_layer.iter().sum::<u64>() + head);
    let activations_checkpointed =
        tokens * (layer_inputs + per_layer.iter().copied().max().unwrap_or(0) + head);
    let checkpointing = recipe.trainer.activation_checkpointing;
    let activations = if checkpointing {
        activations_checkpointed
    } else {
        activations_full
    };
    let weights = weight_bytes * (base + adapters);
    let reference_weights = match recipe.dpo {
        Some(_) => weight_bytes * base,
        None => 0,
    };
    let gradients = weight_bytes * trained;
    let total =
        weights + reference_weights + gradients + master_weights + optimizer_moments + activations;
    let usable = (gpu_memory as f64 * USABLE_FRACTION) as u64;
    Ok(MemoryPlan {
        trainable_params: trained,
        weights,
        reference_weights,
        gradients,
        master_weights,
        optimizer_moments,
        optimizer_shards: shards,
        activations_full,
        activations_checkpointed,
        activations,
        activation_checkpointing: checkpointing,
        total,
        gpu_memory,
        usable,
        fits: total <= usable,
    })
}

/// Bytes per token that layer i keeps for backward, A_i, with a the activation bytes (2 bf16,
/// 4 f32), d the model width, q_i and kv_i the layer's query and key/value widths (heads ×
/// head_dim) and F_i its FFN width:
///
/// A_i = a·(4d + 4q_i + 5kv_i + 4F_i) + u·(2d + q_i + kv_i)
///
/// - 4d: the attention and FFN RMSNorms' inputs and outputs;
/// - 4q_i + 5kv_i: the fused qkv output (q + 2kv), the q/k-normed queries and keys (q + kv),
///   their rotated copies fed to SDPA (q + kv) and V (kv), and SDPA's output (q, the input of
///   out_proj); SDPA's flash/memory-efficient kernels keep no S×S score matrix;
/// - 4F_i: proj_1's output (gate and up, 2F), SiLU(gate) (F) and the product fed to proj_2 (F);
/// - u = 4 in bf16 runs (0 in f32): every RMSNorm computes in f32 and keeps that copy of its
///   input (attention and FFN norms 2d, q/k norms q + kv).
pub fn layer_activation_bytes(model: &OpenElmConfig, precision: Precision) -> Result<Vec<u64>> {
    let (a, u) = match precision {
        Precision::Bf16 => (2, 4),
        Precision::F32 => (4, 0),
    };
    let d = model.model_dim as u64;
    let h = model.head_dim as u64;
    Ok(model
        .layers()?
        .iter()
        .map(|l| {
            let (q, kv, f) = (
                l.query_heads as u64 * h,
                l.kv_heads as u64 * h,
                l.ffn_dim as u64,
            );
            a * (4 * d + 4 * q + 5 * kv + 4 * f) + u * (2 * d + q + kv)
        })
        .collect())
}

/// Bytes per token outside the blocks, H = a·2d + u·d + V·(a + 8): the embedding output and
/// the final norm's output (2d, plus its f32 copy in bf16 runs), and the logits (V in the
/// activation dtype) with the f32 copy and f32 log-softmax the cross-entropy and z-loss keep.
pub fn head_activation_bytes(model: &OpenElmConfig, precision: Precision) -> u64 {
    let (a, u) = match precision {
        Precision::Bf16 => (2, 4),
        Precision::F32 => (4, 0),
    };
    let d = model.model_dim as u64;
    a * 2 * d + u * d + model.vocab_size as u64 * (a + 8)
}

//! The training-throughput benchmark: synthetic random-token steps through exactly the code the
//! trainer runs (`recompute::forward_backward`, gradient clipping, `optim::AdamW`), reporting
//! tokens/s, MFU, peak memory and where a step's time goes.
//!
//! Two kinds of steps are timed, after `warmup` untimed ones:
//!
//! * `steps` unsynchronised steps: nothing reads a device value back to the host between them
//!   (the loss is read once at the end), so on CUDA the host may run ahead as in real training.
//!   tokens/s and MFU come from these: the window's wall time (closed by one synchronisation)
//!   over its steps.
//! * `split_steps` synchronised steps: the device is synchronised at every phase boundary
//!   (after the loss, after backward, after the optimizer) so that the forward / backward /
//!   optimizer times are real; a single process has no communication, reported as 0.
//!
//! The update is the trainer's: clipping, then fused AdamW whose skip of a non-finite step is
//! decided on the device (`found_inf`), so neither reads a value back inside a step.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use corenet_model::attention::native_gqa;
use corenet_model::{OpenElm, OpenElmConfig};

use crate::device_info;
use crate::error::{Error, Result};
use crate::metrics::{mfu, peak_bf16_flops};
use crate::optim::{found_inf, AdamW, OptimizerConfig};
use crate::overrides::{from_tree, Override};
use crate::recipe::{DeviceChoice, Precision};
use crate::recompute::{forward_backward, forward_backward_with, LossSpec};

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// A label for the report (a preset name, or "custom").
    pub model_name: String,
    pub model: OpenElmConfig,
    pub seq_len: usize,
    pub micro_batch: usize,
    /// Timed unsynchronised steps.
    pub steps: usize,
    /// Untimed steps first (allocator warm-up, kernel selection).
    pub warmup: usize,
    /// Timed synchronised steps for the phase split.
    pub split_steps: usize,
    pub precision: Precision,
    pub device: DeviceChoice,
    pub activation_checkpointing: bool,
    /// Intra-op CPU threads (libtorch's default when None).
    pub threads: Option<usize>,
    pub seed: u64,
    pub optimizer: OptimizerConfig,
    pub lr: f64,
    pub z_loss: f64,
}

impl BenchConfig {
    /// OpenELM's optimizer settings, lr 5.3e-3 (OpenELM-270M's peak), z-loss 1e-4, seed 0.
    pub fn new(model_name: impl Into<String>, model: OpenElmConfig) -> Self {
        BenchConfig {
            model_name: model_name.into(),
            model,
            seq_len: 2048,
            micro_batch: 1,
            steps: 10,
            warmup: 3,
            split_steps: 3,
            precision: Precision::Bf16,
            device: DeviceChoice::Auto,
            activation_checkpointing: false,
            threads: None,
            seed: 0,
            optimizer: OptimizerConfig::default(),
            lr: 5.3e-3,
            z_loss: 1e-4,
        }
    }

    /// Checks every field before anything is allocated; errors name the option.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.optimizer.validate()?;
        let positive = [
            ("seq", self.seq_len),
            ("micro_batch", self.micro_batch),
            ("steps", self.steps),
            ("split_steps", self.split_steps),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, "must be at least 1"));
            }
        }
        if self.threads == Some(0) {
            return Err(Error::config("threads", "must be at least 1"));
        }
        if self.seq_len > self.model.max_context_length {
            return Err(Error::config(
                "seq",
                format!(
                    "{} exceeds the model's max_context_length {} (raise it with --set model.max_context_length=N)",
                    self.seq_len, self.model.max_context_length
                ),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config("lr", "must be positive"));
        }
        Ok(())
    }
}

/// A preset's architecture with `--set model.key=value` overrides applied (the key path must
/// start with `model.`; unknown keys and bad values are errors naming the key).
pub fn model_config(preset: &str, overrides: &[Override]) -> Result<OpenElmConfig> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Tree {
        model: OpenElmConfig,
    }
    let base = OpenElmConfig::preset(preset)?;
    let mut tree = serde_json::json!({
        "model": serde_json::to_value(&base).map_err(|e| Error::config("model", e.to_string()))?
    });
    for o in overrides {
        if o.path.first().map(String::as_str) != Some("model") {
            return Err(Error::config(
                o.dotted_path(),
                "bench only overrides model keys (model.<field>=value)",
            ));
        }
        o.apply(&mut tree)?;
    }
    let config = from_tree::<Tree>(&tree)?.model;
    config.validate()?;
    Ok(config)
}

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

fn resolve_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(Error::config(
            "device",
            "cuda requested but no CUDA device is available (was the binary built with --features cuda?)",
        )),
    }
}

/// Random (B, T + 1) token rows on the device, split into inputs and next-token targets. On
/// CUDA the rows are drawn on the host, pinned and copied with non_blocking, so the copy does
/// not block the host; tch exposes no CUDA streams, so it is queued on the compute stream rather
/// than a side stream.
struct SyntheticTokens {
    device: Device,
    vocab: i64,
    shape: [i64; 2],
    pinned: bool,
}

impl SyntheticTokens {
    fn next(&self) -> (Tensor, Tensor) {
        let host = Tensor::randint(self.vocab, self.shape, (Kind::Int64, Device::Cpu));
        let rows = if self.pinned {
            host.pin_memory(self.device)
                .to_device_(self.device, Kind::Int64, true, false)
        } else {
            host.to_device(self.device)
        };
        let t = self.shape[1] - 1;
        (rows.narrow(1, 0, t), rows.narrow(1, 1, t)) // (B, T) each
    }
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || commit.is_empty() {
        return None;
    }
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark. `command` is recorded verbatim in the report.
pub fn run(config: &BenchConfig, command: &str) -> Result<BenchReport> {
    config.validate()?;
    if let Some(threads) = config.threads {
        tch::set_num_threads(threads as i32);
    }
    let device = resolve_device(config.device)?;
    tch::manual_seed(config.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let model = OpenElm::new(&vs.root(), &config.model)?;
    if config.precision == Precision::Bf16 {
        vs.bfloat16();
    }
    let mut optim = AdamW::new(model.named_parameters(), &config.optimizer)?;
    let spec = LossSpec {
        ignore_index: -100,
        z_coef: config.z_loss,
        scale: 1.0,
    };
    let tokens = SyntheticTokens {
        device,
        vocab: config.model.vocab_size as i64,
        shape: [config.micro_batch as i64, config.seq_len as i64 + 1],
        pinned: device.is_cuda(),
    };
    let ckpt = config.activation_checkpointing;
    let clip = config.optimizer.grad_clip;
    // The trainer's update: clip, then AdamW with the non-finite skip decided on the device
    // (the norm and loss are never read back).
    let update = |optim: &mut AdamW, loss: &Tensor| -> Result<()> {
        let norm = match clip {
            Some(max) => optim.clip_grad_norm(max),
            None => optim.grad_norm(),
        };
        let measured = Tensor::stack(
            &[
                loss.detach().to_kind(Kind::Float),
                norm.to_kind(Kind::Float),
            ],
            0,
        );
        optim.step(config.lr, Some(&found_inf(&measured)))?;
        optim.zero_grad()
    };
    tracing::info!(model = %config.model_name, ?device, seq = config.seq_len, micro_batch = config.micro_batch, "bench: warm-up");
    let mut batch = tokens.next();
    for _ in 0..config.warmup {
        let next = tokens.next();
        let terms = forward_backward(&model, &batch.0, &batch.1, spec, ckpt)?;
        update(&mut optim, &terms.total)?;
        batch = next;
    }
    device_info::synchronize(device);
    if let Device::Cuda(i) = device {
        if let Err(e) = device_info::reset_cuda_peak(i) {
            tracing::warn!(error = %e, "could not reset the CUDA peak-memory counter");
        }
    }

    // Unsynchronised window: the next batch is staged before the current step runs.
    let mut step_times = Vec::with_capacity(config.steps);
    let mut last_loss = Tensor::from(f32::NAN);
    let window = Instant::now();
    for _ in 0..config.steps {
        let t0 = Instant::now();
        let next = tokens.next();
        let terms = forward_backward(&model, &batch.0, &batch.1, spec, ckpt)?;
        update(&mut optim, &terms.total)?;
        last_loss = terms.total;
        batch = next;
        step_times.push(t0.elapsed().as_secs_f64());
    }
    let final_loss = last_loss.double_value(&[]); // the window's one host read
    let window_s = window.elapsed().as_secs_f64();

    // Synchronised steps for the phase split.
    let mut phases: Vec<[f64; 3]> = Vec::with_capacity(config.split_steps);
    for _ in 0..config.split_steps {
        let next = tokens.next();
        device_info::synchronize(device);
        let t0 = Instant::now();
        let mut t_fwd = t0;
        let terms = forward_backward_with(&model, &batch.0, &batch.1, spec, ckpt, || {
            device_info::synchronize(device);
            t_fwd = Instant::now();
        })?;
        device_info::synchronize(device);
        let t_bwd = Instant::now();
        update(&mut optim, &terms.total)?;
        device_info::synchronize(device);
        let t_opt = Instant::now();
        phases.push([
            (t_fwd - t0).as_secs_f64(),
            (t_bwd - t_fwd).as_secs_f64(),
            (t_opt - t_bwd).as_secs_f64(),
        ]);
        batch = next;
    }
    let column = |i: usize| median(&phases.iter().map(|p| p[i]).collect::<Vec<_>>());
    let split = TimeSplit {
        forward_s: column(0),
        backward_s: column(1),
        optimizer_s: column(2),
        communication_s: 0.0,
        step_s: median(&phases.iter().map(|p| p.iter().sum()).collect::<Vec<_>>()),
    };

    let (peak_memory_bytes, peak_memory_source) = match device {
        Device::Cuda(i) => match device_info::cuda_peak_allocated(i) {
            Ok(bytes) => (Some(bytes), "CUDA caching allocator peak".to_string()),
            Err(e) => (None, format!("unavailable: {e}")),
        },
        _ => (
            device_info::peak_rss_bytes(),
            "process VmHWM (resident high-water mark)".to_string(),
        ),
    };
    let tokens_per_step = (config.micro_batch * config.seq_len) as u64;
    let step_time_s = window_s / config.steps as f64;
    let tokens_per_s = tokens_per_step as f64 / step_time_s;
    let flops_per_token = config.model.training_flops_per_token(config.seq_len)?;
    let device_name = device_info::device_name(device);
    let peak_flops = match device {
        Device::Cuda(_) => peak_bf16_flops(&device_name),
        _ => None,
    };
    let report = BenchReport {
        implementation: "corenet-rs".into(),
        command: command.to_string(),
        git_commit: git_commit(),
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        host: gethostname::gethostname().to_string_lossy().into_owned(),
        device: match device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        },
        device_name,
        torch_version: device_info::torch_version()?,
        threads: tch::get_num_threads().max(0) as usize,
        model: config.model_name.clone(),
        model_config: config.model.clone(),
        params: config.model.param_count()?.total(),
        seq_len: config.seq_len,
        micro_batch: config.micro_batch,
        steps: config.steps,
        warmup: config.warmup,
        split_steps: config.split_steps,
        precision: match config.precision {
            Precision::F32 => "f32".into(),
            Precision::Bf16 => "bf16".into(),
        },
        activation_checkpointing: ckpt,
        tokens_per_step,
        step_time_s,
        step_time_median_s: median(&step_times),
        tokens_per_s,
        flops_per_token,
        achieved_flops_per_s: flops_per_token * tokens_per_s,
        peak_flops_per_s: peak_flops,
        mfu: peak_flops.and_then(|peak| mfu(flops_per_token, tokens_per_s, peak)),
        peak_memory_bytes,
        peak_memory_source,
        split,
        sdpa_backend: sdpa_choice(&model, &batch.0)?,
        gqa: if native_gqa(device) {
            "enable_gqa"
        } else {
            "repeat_interleave"
        }
        .into(),
        rms_norm: corenet_model::kernel_choice::rms_norm().name().into(),
        fused_adamw: config.optimizer.fused,
        pinned_input: tokens.pinned,
        final_loss,
        step_times_s: step_times,
    };
    tracing::info!(
        tokens_per_s = report.tokens_per_s,
        step_time_s = report.step_time_s,
        "bench: done"
    );
    Ok(report)
}

/// The SDPA backend libtorch would pick for the first layer's attention at this batch's shape,
/// dtype and device, called as the model calls it (causal, no mask, no dropout; KV heads shared
/// through `enable_gqa` where [`native_gqa`] says so, else repeated to the query heads).
fn sdpa_choice(model: &OpenElm, inputs: &Tensor) -> Result<String> {
    let Some(dims) = model.layer_dims().first() else {
        return Ok("none".into());
    };
    let (b, t) = inputs.size2()?;
    let d = model.config().head_dim as i64;
    let opts = (model.token_embeddings.kind(), inputs.device());
    let gqa = dims.query_heads != dims.kv_heads && native_gqa(inputs.device());
    let kv_heads = if gqa { dims.kv_heads } else { dims.query_heads } as i64;
    let q = Tensor::zeros([b, dims.query_heads as i64, t, d], opts); // (B, Hq, T, D)
    let kv = Tensor::zeros([b, kv_heads, t, d], opts); // (B, Hkv or Hq, T, D)
    let code =
        Tensor::f_internal_fused_sdp_choice(&q, &kv, &kv, None::<Tensor>, 0.0, true, None, gqa)?;
    Ok(sdpa_backend_name(code).into())
}

//! The benchmark loop: synthetic tokens through the trainer's own optimizer step
//! ([`optimizer_step`]), an unsynchronised window for tokens/s and MFU, then synchronised steps
//! for the phase split.

use std::time::Instant;

use tch::{nn, Device, Kind, Tensor};

use corenet_ffi::device;
use corenet_model::attention::native_gqa;
use corenet_model::OpenElm;

use crate::bench::config::BenchConfig;
use crate::bench::report::{sdpa_backend_name, BenchReport, TimeSplit};
use crate::error::{Error, Result};
use crate::log::{mfu, peak_bf16_flops};
use crate::optim::Optimizer;
use crate::recipe::Precision;
use crate::step::generator;
use crate::step::train_step::{
    optimizer_step, values, NoPhases, Phases, StepInput, StepParts, StepSettings,
};

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
        let host = generator::drawing(|| {
            Tensor::randint(self.vocab, self.shape, (Kind::Int64, Device::Cpu))
        });
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

/// Marks the phase boundaries of a synchronised step: the device is drained, then the clock
/// read, so each phase's time is its own.
struct SyncedPhases {
    device: Device,
    forward: Option<Instant>,
    backward: Option<Instant>,
}

impl SyncedPhases {
    fn mark(&self) -> Option<Instant> {
        device::synchronize(self.device);
        Some(Instant::now())
    }
}

impl Phases for SyncedPhases {
    fn forward_done(&mut self) {
        self.forward = self.mark();
    }

    fn backward_done(&mut self) {
        self.backward = self.mark();
    }
}

/// The benchmark's model and optimizer, stepped exactly as the trainer steps its own.
struct Bench {
    model: OpenElm,
    optim: Optimizer,
    settings: StepSettings,
    lr: f64,
}

impl Bench {
    /// One optimizer step on `batch`; returns the step's values on the device (unread).
    fn step(&mut self, batch: (Tensor, Tensor), phases: &mut dyn Phases) -> Result<Tensor> {
        let mut batch = Some(batch);
        let parts = StepParts {
            model: &self.model,
            optim: &mut self.optim,
            dp: None,
            // Stages only matter to an overlapped all-reduce, which one process never runs.
            stages: &[],
            reference: None,
        };
        let input = StepInput {
            lr: self.lr,
            dropout_seed: None,
            stop_vote: false,
            poison: false,
        };
        optimizer_step(
            parts,
            &self.settings,
            input,
            &mut || {
                batch
                    .take()
                    .ok_or_else(|| Error::config("bench", "a bench step takes one micro-batch"))
            },
            phases,
        )
    }
}

/// Runs the benchmark. `command` is recorded verbatim in the report.
pub fn run(config: &BenchConfig, command: &str) -> Result<BenchReport> {
    config.validate()?;
    if let Some(threads) = config.threads {
        tch::set_num_threads(threads as i32);
    }
    let device = config.device.resolve("device")?;
    let (mut vs, model) = generator::seeded(config.seed as i64, || {
        let vs = nn::VarStore::new(device);
        OpenElm::new(&vs.root(), &config.model).map(|model| (vs, model))
    })?;
    if config.precision == Precision::Bf16 {
        vs.bfloat16();
    }
    let optim = Optimizer::new(model.named_parameters(), &config.optimizer, false, None)?;
    let mut bench = Bench {
        model,
        optim,
        settings: StepSettings {
            accumulation: 1,
            ignore_index: -100,
            z_loss: config.z_loss,
            activation_checkpointing: config.activation_checkpointing,
            overlap_grad_reduce: false,
            grad_clip: config.optimizer.grad_clip,
            dpo: None,
            document_bos: None,
        },
        lr: config.lr,
    };
    let tokens = SyntheticTokens {
        device,
        vocab: config.model.vocab_size as i64,
        shape: [config.micro_batch as i64, config.seq_len as i64 + 1],
        pinned: device.is_cuda(),
    };
    tracing::info!(model = %config.model_name, ?device, seq = config.seq_len, micro_batch = config.micro_batch, "bench: warm-up");
    let mut batch = tokens.next();
    for _ in 0..config.warmup {
        let next = tokens.next();
        // Warm-up values are never read.
        let _ = bench.step(batch, &mut NoPhases)?;
        batch = next;
    }
    device::synchronize(device);
    if let Device::Cuda(i) = device {
        if let Err(e) = device::reset_cuda_peak(i) {
            tracing::warn!(error = %e, "could not reset the CUDA peak-memory counter");
        }
    }

    // Unsynchronised window: the next batch is staged before the current step runs.
    let mut step_times = Vec::with_capacity(config.steps);
    let mut last_values = Tensor::from_slice(&[f32::NAN]);
    let window = Instant::now();
    for _ in 0..config.steps {
        let t0 = Instant::now();
        let next = tokens.next();
        last_values = bench.step(batch, &mut NoPhases)?;
        batch = next;
        step_times.push(t0.elapsed().as_secs_f64());
    }
    // The window's one host read.
    let final_loss = last_values.double_value(&[values::LOSS as i64]);
    let window_s = window.elapsed().as_secs_f64();

    // Synchronised steps for the phase split.
    let mut splits: Vec<[f64; 3]> = Vec::with_capacity(config.split_steps);
    for _ in 0..config.split_steps {
        let next = tokens.next();
        device::synchronize(device);
        let t0 = Instant::now();
        let mut phases = SyncedPhases {
            device,
            forward: None,
            backward: None,
        };
        // Only the clock matters here; the values are not read.
        let _ = bench.step(batch, &mut phases)?;
        device::synchronize(device);
        let end = Instant::now();
        let at = |t: Option<Instant>| t.unwrap_or(t0);
        let (fwd, bwd) = (at(phases.forward), at(phases.backward));
        splits.push([
            (fwd - t0).as_secs_f64(),
            (bwd - fwd).as_secs_f64(),
            (end - bwd).as_secs_f64(),
        ]);
        batch = next;
    }
    let column = |i: usize| median(&splits.iter().map(|p| p[i]).collect::<Vec<_>>());
    let split = TimeSplit {
        forward_s: column(0),
        backward_s: column(1),
        optimizer_s: column(2),
        // One process: nothing to communicate (the bench has no process group).
        communication_s: 0.0,
        step_s: median(&splits.iter().map(|p| p.iter().sum()).collect::<Vec<_>>()),
    };
    let (peak_memory_bytes, peak_memory_source) = match device {
        Device::Cuda(i) => match device::cuda_peak_allocated(i) {
            Ok(bytes) => (Some(bytes), "CUDA caching allocator peak".to_string()),
            Err(e) => (None, format!("unavailable: {e}")),
        },
        _ => (
            device::peak_rss_bytes(),
            "process VmHWM (resident high-water mark)".to_string(),
        ),
    };
    let tokens_per_step = (config.micro_batch * config.seq_len) as u64;
    let step_time_s = window_s / config.steps as f64;
    let tokens_per_s = tokens_per_step as f64 / step_time_s;
    let flops_per_token = config.model.training_flops_per_token(config.seq_len)?;
    let device_name = device::device_name(device);
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
        torch_version: device::torch_version()?,
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
        activation_checkpointing: config.activation_checkpointing,
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
        sdpa_backend: sdpa_choice(&bench.model, &batch.0)?,
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

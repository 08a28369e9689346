//! Process-wide choices between kernels that compute the same thing, so that a benchmark can
//! time each on a device where the default has not been measured (`corenet bench --rms-norm
//! … --gqa …`). The defaults are what docs/performance.md measured best; a choice never changes
//! the model's arithmetic beyond rounding.

use std::sync::atomic::{AtomicU8, Ordering};

/// How [`crate::norm::RmsNorm::forward`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmsNormKernel {
    /// CoreNet's op-by-op composite: the default (libtorch's op was slower on every CPU shape).
    Composite,
    /// libtorch's `rms_norm` (a fused kernel on CUDA in 2.11).
    Native,
}

/// How attention shares KV heads between query heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GqaKernel {
    /// `enable_gqa` inside SDPA on the CPU, `repeat_interleave` on CUDA (see
    /// [`crate::attention::native_gqa`]).
    Auto,
    /// Always SDPA's `enable_gqa`.
    EnableGqa,
    /// Always CoreNet's `repeat_interleave` of K and V to the query heads.
    RepeatInterleave,
}

static RMS_NORM: AtomicU8 = AtomicU8::new(0);
static GQA: AtomicU8 = AtomicU8::new(0);

impl RmsNormKernel {
    pub fn name(self) -> &'static str {
        match self {
            RmsNormKernel::Composite => "composite",
            RmsNormKernel::Native => "native",
        }
    }
}

/// Selects the RMSNorm kernel for every model of this process from now on.
pub fn set_rms_norm(kernel: RmsNormKernel) {
    RMS_NORM.store(kernel as u8, Ordering::Relaxed);
}

pub fn rms_norm() -> RmsNormKernel {
    match RMS_NORM.load(Ordering::Relaxed) {
        1 => RmsNormKernel::Native,
        _ => RmsNormKernel::Composite,
    }
}

/// Selects how every model of this process shares KV heads from now on.
pub fn set_gqa(kernel: GqaKernel) {
    GQA.store(kernel as u8, Ordering::Relaxed);
}

pub fn gqa() -> GqaKernel {
    match GQA.load(Ordering::Relaxed) {
        1 => GqaKernel::EnableGqa,
        2 => GqaKernel::RepeatInterleave,
        _ => GqaKernel::Auto,
    }
}

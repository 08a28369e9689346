//! How fast a run goes: a windowed tokens/s meter, and model-FLOPs utilisation (MFU) against
//! known device peaks.

use std::collections::VecDeque;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    step: u64,
    tokens: u64,
}

/// Tokens/s over the last `window` samples (the progress bar keeps its own ETA). The caller
/// passes the clock reading, which keeps this deterministic to test and lets it use the time
/// *after* a device sync rather than whenever the meter is called.
#[derive(Debug, Clone)]
pub struct Throughput {
    window: usize,
    samples: VecDeque<Sample>,
}

impl Throughput {
    /// A meter averaging over the last `window` samples (at least 2 are needed for a rate).
    pub fn new(window: usize) -> Self {
        let window = window.max(2);
        Self {
            window,
            samples: VecDeque::with_capacity(window),
        }
    }

    /// Records that at time `at` the run had done `step` updates and seen `tokens_seen` tokens
    /// (both cumulative). Going backwards (a resume) restarts the window.
    pub fn record(&mut self, at: Instant, step: u64, tokens_seen: u64) {
        if self
            .samples
            .back()
            .is_some_and(|s| step < s.step || tokens_seen < s.tokens || at < s.at)
        {
            self.samples.clear();
        }
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            at,
            step,
            tokens: tokens_seen,
        });
    }

    fn span(&self) -> Option<(Sample, Sample, f64)> {
        let (first, last) = (*self.samples.front()?, *self.samples.back()?);
        let secs = last.at.duration_since(first.at).as_secs_f64();
        (secs > 0.0).then_some((first, last, secs))
    }

    /// Optimizer steps per second over the window, for the ETA.
    pub fn steps_per_s(&self) -> Option<f64> {
        self.span()
            .map(|(a, b, secs)| (b.step - a.step) as f64 / secs)
    }

    /// Tokens per second over the window; None until two samples a non-zero time apart.
    pub fn tokens_per_s(&self) -> Option<f64> {
        self.span()
            .map(|(a, b, secs)| (b.tokens - a.tokens) as f64 / secs)
    }
}

/// Dense (no sparsity) bf16 tensor-core peak FLOP/s per device, from vendor datasheets. Matched
/// in order against the lower-cased device name (as CUDA reports it, e.g.
/// "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"), so more specific entries come first.
pub const KNOWN_BF16_PEAKS: &[(&str, f64)] = &[
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("gh200", 989e12),
    ("h200", 989e12),
    ("h100", 989e12), // SXM
    ("a100", 312e12), // SXM and PCIe alike
];

/// Peak dense bf16 FLOP/s of one device named `device_name`, or None when unknown (CPUs,
/// unlisted GPUs): MFU is then simply not reported.
pub fn peak_bf16_flops(device_name: &str) -> Option<f64> {
    let name = device_name.to_ascii_lowercase();
    KNOWN_BF16_PEAKS
        .iter()
        .find(|(key, _)| name.contains(key))
        .map(|&(_, peak)| peak)
}

/// Model FLOPs utilisation: achieved model FLOP/s over the peak. `tokens_per_s` and
/// `peak_flops_per_s` must describe the same set of devices (per device, or both summed over
/// the world). `flops_per_token` counts forward + backward (about 6 × parameters, plus
/// attention). None when the inputs cannot give a meaningful ratio.
pub fn mfu(flops_per_token: f64, tokens_per_s: f64, peak_flops_per_s: f64) -> Option<f64> {
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    if !ok(flops_per_token) || !ok(tokens_per_s) || !ok(peak_flops_per_s) || peak_flops_per_s == 0.0
    {
        return None;
    }
    Some(flops_per_token * tokens_per_s / peak_flops_per_s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn throughput_window_rate() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut tp = Throughput::new(3);
        assert_eq!(tp.tokens_per_s(), None);
        tp.record(at(0), 0, 0);
        assert_eq!(tp.tokens_per_s(), None, "one sample has no rate");
        tp.record(at(1000), 1, 1000);
        assert_eq!(tp.tokens_per_s(), Some(1000.0));
        tp.record(at(2000), 2, 2000);
        // Fourth sample pushes out the first: rate over the last 3 (at 1s..3s: 5000 tokens, 2 steps).
        tp.record(at(3000), 3, 6000);
        assert_eq!(tp.tokens_per_s(), Some(2500.0));
        // A resume to an earlier step restarts the window.
        tp.record(at(4000), 1, 1000);
        assert_eq!(tp.tokens_per_s(), None);
        // No time passed: no rate rather than infinity.
        let mut same = Throughput::new(4);
        same.record(at(0), 0, 0);
        same.record(at(0), 1, 10);
        assert_eq!(same.tokens_per_s(), None);
    }

    #[test]
    fn peaks_and_mfu() {
        assert_eq!(peak_bf16_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(peak_bf16_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_bf16_flops("NVIDIA A100-PCIE-40GB"), Some(312e12));
        assert_eq!(peak_bf16_flops("cpu"), None);
        assert_eq!(peak_bf16_flops("NVIDIA GeForce RTX 4090"), None);

        // 270M model ~ 6 * 272e6 FLOPs/token; 250k tokens/s on one H100 ~ 41% MFU.
        let m = mfu(6.0 * 272e6, 250_000.0, 989e12).expect("known peak");
        assert!((m - 6.0 * 272e6 * 250_000.0 / 989e12).abs() < 1e-15);
        assert!(m > 0.4 && m < 0.42);
        assert_eq!(mfu(1e9, 1e3, 0.0), None);
        assert_eq!(mfu(f64::NAN, 1e3, 1e12), None);
        assert_eq!(mfu(1e9, -1.0, 1e12), None);
    }
}

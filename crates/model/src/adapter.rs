//! One LoRA or DoRA adapter on a frozen weight, computed as HF PEFT computes it (so adapters move
//! between corenet and `peft` unchanged):
//!
//!   linear     y = x W^T + s · drop(x) A^T B^T            A (r, in), B (out, r)
//!   embedding  y = E[x] + s · A^T[x] B^T                  A (r, V),  B (C, r)   (no dropout)
//!
//! with s = alpha / r (alpha / sqrt(r) with rsLoRA). DoRA rescales each output feature by
//! m / ||W + s·BA|| (the norm taken over the input dimension and kept out of the graph, as the
//! DoRA paper's §4.3 and PEFT do); m starts as the base weight's norms, so a fresh adapter
//! changes nothing.
//!
//! Dropout draws its mask from a counter-based hash of (the model's dropout key, the adapter's
//! index, the element's position) instead of libtorch's global generator: the mask of a step is
//! a function of the step, so activation checkpointing recomputes the same mask and a resumed
//! run draws the masks the uninterrupted one drew.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tch::{Kind, Tensor};

/// The module kind an adapter sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    Linear,
    Embedding,
}

/// Shared by every adapter of a model: `DropoutKey::OFF` (evaluation, generation) or the key of
/// the micro-batch being trained.
#[derive(Debug, Clone, Default)]
pub struct DropoutKey(Arc<AtomicU64>);

impl DropoutKey {
    pub const OFF: u64 = 0;

    pub fn set(&self, key: u64) {
        self.0.store(key, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct Adapter {
    pub kind: AdapterKind,
    /// PEFT's `lora_A` (`lora_embedding_A` on the embedding).
    pub a: Tensor,
    /// PEFT's `lora_B` (`lora_embedding_B` on the embedding).
    pub b: Tensor,
    /// DoRA's magnitude vector (out,) for a linear, (C,) for the embedding.
    pub magnitude: Option<Tensor>,
    pub scale: f64,
    pub dropout: f64,
    /// Mixed into the dropout hash so that no two adapters share a mask.
    pub index: u64,
    pub key: DropoutKey,
}

/// x (B, T, in) through `weight` (out, in), and `adapter` when the module has one.
pub fn project(x: &Tensor, weight: &Tensor, adapter: Option<&Adapter>) -> Tensor {
    match adapter {
        Some(adapter) => adapter.linear(x, weight),
        None => x.linear::<Tensor>(weight, None),
    }
}

impl Adapter {
    /// x: (B, T, in) -> (B, T, out) through `weight` (out, in) and this adapter.
    pub fn linear(&self, x: &Tensor, weight: &Tensor) -> Tensor {
        let base = x.linear::<Tensor>(weight, None); // (B, T, out)
        let dropped = self.drop(x);
        let x_d = dropped.as_ref().unwrap_or(x);
        let lora = x_d
            .linear::<Tensor>(&self.a, None)
            .linear::<Tensor>(&self.b, None)
            * self.scale;
        let Some(magnitude) = &self.magnitude else {
            return base + lora;
        };
        let ratio = magnitude / self.row_norm(weight); // (out,)
        match dropped {
            // PEFT: without dropout the base result is rescaled; with it, the rescaling's
            // correction goes through the dropped input.
            None => &base * &ratio + lora * &ratio,
            Some(x_d) => {
                let correction = x_d.linear::<Tensor>(weight, None) * (&ratio - 1.0);
                base + correction + lora * &ratio
            }
        }
    }

    /// `base`: the embedding rows E[tokens] (B, T, C); adds this adapter's rows.
    pub fn embedding(&self, tokens: &Tensor, base: Tensor, table: &Tensor, pad: i64) -> Tensor {
        let a_t = self.a.transpose(0, 1); // (V, r)
        let rows = Tensor::embedding(&a_t, tokens, pad, false, false); // (B, T, r)
        let lora = rows.linear::<Tensor>(&self.b, None) * self.scale; // (B, T, C)
        match &self.magnitude {
            None => base + lora,
            Some(magnitude) => {
                let ratio = magnitude / self.row_norm(table); // (C,)
                base * &ratio + lora * &ratio
            }
        }
    }

    /// The weight with the adapter folded in (what a merged export writes); shape of `weight`.
    pub fn merged(&self, weight: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let kind = weight.kind();
            let w = weight.to_kind(Kind::Float);
            let delta = self.delta().to_kind(Kind::Float);
            let adapted = match self.kind {
                AdapterKind::Linear => &w + delta,                    // (out, in)
                AdapterKind::Embedding => &w + delta.transpose(0, 1), // (V, C)
            };
            let Some(magnitude) = &self.magnitude else {
                return adapted.to_kind(kind);
            };
            let m = magnitude.to_kind(Kind::Float);
            let out = match self.kind {
                AdapterKind::Linear => {
                    let norm = adapted.norm_scalaropt_dim(2.0, [1i64].as_slice(), true);
                    &adapted * (m.unsqueeze(1) / norm)
                }
                AdapterKind::Embedding => {
                    let norm = adapted.norm_scalaropt_dim(2.0, [0i64].as_slice(), true);
                    &adapted * (m.unsqueeze(0) / norm)
                }
            };
            out.to_kind(kind)
        })
    }

    /// s · B A: (out, in) for a linear, (C, V) for the embedding.
    fn delta(&self) -> Tensor {
        self.b.matmul(&self.a) * self.scale
    }

    /// ||W + s·BA|| per output feature, detached: (out,) for a linear weight (out, in), (C,) for
    /// an embedding table (V, C).
    fn row_norm(&self, weight: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let delta = self.delta();
            match self.kind {
                AdapterKind::Linear => {
                    (weight + delta).norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
                }
                AdapterKind::Embedding => (weight.transpose(0, 1) + delta).norm_scalaropt_dim(
                    2.0,
                    [1i64].as_slice(),
                    false,
                ),
            }
        })
    }

    /// x with dropout applied, or None when dropout is off (p = 0 or no training key).
    fn drop(&self, x: &Tensor) -> Option<Tensor> {
        let key = self.key.get();
        if self.dropout <= 0.0 || key == DropoutKey::OFF {
            return None;
        }
        let keep = keep_mask(&x.size(), mix(key, self.index), self.dropout, x.device());
        Some(x * keep.to_kind(x.kind()) * (1.0 / (1.0 - self.dropout)))
    }
}

const LOW_31: i64 = (1 << 31) - 1;

/// A (shape) 0/1 float mask keeping each element with probability 1 - p, a pure function of
/// `seed` and the element's flat index (counter-based: multiply-xorshift rounds on 31-bit
/// values, so every product fits in an int64 on any device).
fn keep_mask(shape: &[i64], seed: u64, p: f64, device: tch::Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let (s1, s2) = (
        (seed & LOW_31 as u64) as i64,
        ((seed >> 31) & LOW_31 as u64) as i64,
    );
    let mut x = Tensor::arange(n, (Kind::Int64, device)).bitwise_and(LOW_31);
    x = x.bitwise_xor(s1);
    for (multiplier, shift) in [(0x5bd1_e995_i64, 15), (0x2c1b_3c6d, 12), (0x297a_2d39, 15)] {
        x = (x * multiplier + s2).bitwise_and(LOW_31);
        x = x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(shift));
    }
    let threshold = (p * (1i64 << 31) as f64) as i64;
    x.ge(threshold).to_kind(Kind::Float).view(shape)
}

/// splitmix64 of (key, index): the adapter's own mask seed for this micro-batch.
fn mix(key: u64, index: u64) -> u64 {
    let mut z = key
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(index.wrapping_add(1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_keeps_about_one_minus_p_and_depends_only_on_the_seed() {
        let a = keep_mask(&[64, 1000], 7, 0.1, tch::Device::Cpu);
        let b = keep_mask(&[64, 1000], 7, 0.1, tch::Device::Cpu);
        let c = keep_mask(&[64, 1000], 8, 0.1, tch::Device::Cpu);
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
        let kept = a.mean(Kind::Float).double_value(&[]);
        assert!((kept - 0.9).abs() < 0.01, "kept {kept}");
        // Neighbouring seeds are not shifted copies of each other.
        let agree = a.eq_tensor(&c).to_kind(Kind::Float).mean(Kind::Float);
        assert!(agree.double_value(&[]) < 0.9, "masks too alike");
    }

    #[test]
    fn mixing_separates_keys_and_indices() {
        assert_ne!(mix(1, 0), mix(1, 1));
        assert_ne!(mix(1, 0), mix(2, 0));
    }
}

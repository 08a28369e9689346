//! Causal grouped-query attention with per-layer head counts, fused bias-free QKV and per-head
//! q/k RMSNorm, as in CoreNet's `MultiHeadCausalAttention`.

use tch::{nn, Kind, Tensor};

use crate::adapter::{project, Adapter};
use crate::init::normal;
use crate::kernel_choice::{self, GqaKernel};
use crate::kv_cache::LayerCache;
use crate::norm::RmsNorm;
use crate::rope::Rope;

#[derive(Debug)]
pub struct Attention {
    /// Rows [Q heads | K heads | V heads], each block head-major with D rows per head.
    pub qkv_proj: Tensor,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub out_proj: Tensor,
    /// LoRA/DoRA on `qkv_proj` and `out_proj` (crate::peft).
    pub qkv_adapter: Option<Adapter>,
    pub out_adapter: Option<Adapter>,
    query_heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

/// The shape of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub model_dim: usize,
    pub head_dim: usize,
    pub query_heads: usize,
    pub kv_heads: usize,
    pub qk_norm: bool,
}

impl Attention {
    pub fn new(path: &nn::Path, shape: AttentionShape, out_proj_std: f64) -> Self {
        let d = shape.model_dim as i64;
        let (hq, hkv, hd) = (
            shape.query_heads as i64,
            shape.kv_heads as i64,
            shape.head_dim as i64,
        );
        let qkv_proj = normal(
            &(path / "qkv_proj"),
            &[(hq + 2 * hkv) * hd, d],
            (d as f64).powf(-0.5),
        );
        let (q_norm, k_norm) = if shape.qk_norm {
            (
                Some(RmsNorm::new(&(path / "q_norm"), shape.head_dim)),
                Some(RmsNorm::new(&(path / "k_norm"), shape.head_dim)),
            )
        } else {
            (None, None)
        };
        let out_proj = normal(&(path / "out_proj"), &[d, hq * hd], out_proj_std);
        Attention {
            qkv_proj,
            q_norm,
            k_norm,
            out_proj,
            qkv_adapter: None,
            out_adapter: None,
            query_heads: hq,
            kv_heads: hkv,
            head_dim: hd,
        }
    }

    /// x: (B, T, C) -> (B, T, C). With a cache, the new keys/values are appended to it and the
    /// queries sit at positions cache_len..cache_len+T. `mask` (B, 1, T, T) bool, true = may
    /// attend, replaces the causal mask of an uncached call ([`crate::document_mask`]).
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input must be (B, T, C)");
        let (hq, hkv, hd) = (self.query_heads, self.kv_heads, self.head_dim);
        let qkv = project(x, &self.qkv_proj, self.qkv_adapter.as_ref()) // (B, T, (Hq + 2Hkv) * D)
            .view([b, t, hq + 2 * hkv, hd])
            .transpose(1, 2); // (B, Hq + 2Hkv, T, D)
        let mut q = qkv.narrow(1, 0, hq); // (B, Hq, T, D)
        let mut k = qkv.narrow(1, hq, hkv); // (B, Hkv, T, D)
        let mut v = qkv.narrow(1, hq + hkv, hkv); // (B, Hkv, T, D)
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q);
            k = kn.forward(&k);
        }
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let q = rope.apply(&q, offset);
        k = rope.apply(&k, offset);
        if let Some(cache) = cache {
            (k, v) = cache.append(&k, &v); // (B, Hkv, S, D), S = offset + T
        }
        let mask = mask.filter(|_| offset == 0);
        let y = self.attend(&q, &k, &v, offset as i64, mask); // (B, Hq, T, D)
        let y = y.transpose(1, 2).contiguous().view([b, t, hq * hd]); // (B, T, Hq * D)
        project(&y, &self.out_proj, self.out_adapter.as_ref())
    }

    /// Scaled dot-product attention, causal, scale 1/sqrt(D); query head j reads KV head
    /// j / group (CoreNet's `repeat_interleave`). See [`native_gqa`] for how the KV heads are
    /// shared.
    /// `mask` (an uncached call's, (B, 1, T, T)) replaces the causal mask; the KV heads are
    /// then materialised, as the fused GQA path is not known to take a mask.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        offset: i64,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let group = self.query_heads / self.kv_heads;
        let gqa = group > 1 && mask.is_none() && native_gqa(q.device());
        let (k, v) = if group > 1 && !gqa {
            (
                k.repeat_interleave_self_int(group, 1, None),
                v.repeat_interleave_self_int(group, 1, None),
            ) // (B, Hq, S, D)
        } else {
            (k.shallow_clone(), v.shallow_clone()) // (B, Hkv, S, D) or already Hq
        };
        let t = q.size()[2];
        let sdpa = |mask: Option<Tensor>, causal: bool| {
            Tensor::scaled_dot_product_attention(q, &k, &v, mask, 0.0, causal, None, gqa)
        };
        if let Some(mask) = mask {
            return sdpa(Some(mask.shallow_clone()), false);
        }
        if offset == 0 {
            return sdpa(None, true);
        }
        if t == 1 {
            // One new token may attend to everything cached.
            return sdpa(None, false);
        }
        // Queries at offset..offset+T against keys 0..offset+T: SDPA's own causal mask would be
        // aligned top-left, so build the bottom-right one.
        let s = offset + t;
        let rows = Tensor::arange(t, (Kind::Int64, q.device())).unsqueeze(1) + offset;
        let cols = Tensor::arange(s, (Kind::Int64, q.device())).unsqueeze(0);
        let mask = cols.le_tensor(&rows); // (T, S), true = may attend
        sdpa(Some(mask), false)
    }
}

/// Whether attention on `device` shares KV heads inside SDPA (`enable_gqa`) instead of
/// materialising them with `repeat_interleave`. On CPU libtorch 2.11's flash kernel takes
/// `enable_gqa` directly, which saves the copies (about 20-30 % of the attention time at the
/// tiny recipe's shape, docs/performance.md); on CUDA not every fused backend accepts it and one
/// that does not would fall back to the math kernel, so the GPU path keeps CoreNet's
/// `repeat_interleave` until it is measured. [`kernel_choice::set_gqa`] overrides this (for
/// benchmarks).
pub fn native_gqa(device: tch::Device) -> bool {
    match kernel_choice::gqa() {
        GqaKernel::Auto => !device.is_cuda(),
        GqaKernel::EnableGqa => true,
        GqaKernel::RepeatInterleave => false,
    }
}

//! One pre-norm decoder layer: x + attn(attn_norm(x)), then + ffn(ffn_norm(.)).

use tch::{nn, Tensor};

use crate::attention::{Attention, AttentionShape};
use crate::ffn::FeedForward;
use crate::kv_cache::LayerCache;
use crate::norm::RmsNorm;
use crate::rope::Rope;

#[derive(Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub ffn_norm: RmsNorm,
    pub ffn: FeedForward,
}

impl Block {
    pub fn new(
        path: &nn::Path,
        shape: AttentionShape,
        ffn_dim: usize,
        glu: bool,
        residual_std: f64,
    ) -> Self {
        // CoreNet registers ffn_norm before attn_norm; the order only matters for
        // index-based optimizer state, which we do not use.
        Block {
            attn_norm: RmsNorm::new(&(path / "attn_norm"), shape.model_dim),
            attn: Attention::new(&(path / "attn"), shape, residual_std),
            ffn_norm: RmsNorm::new(&(path / "ffn_norm"), shape.model_dim),
            ffn: FeedForward::new(&(path / "ffn"), shape.model_dim, ffn_dim, glu, residual_std),
        }
    }

    /// x: (B, T, C) -> (B, T, C). `mask`: see [`Attention::forward`].
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        let y = x + self
            .attn
            .forward(&self.attn_norm.forward(x), rope, mask, cache);
        let ffn_out = self.ffn.forward(&self.ffn_norm.forward(&y));
        y + ffn_out
    }
}

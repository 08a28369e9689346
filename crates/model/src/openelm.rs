//! OpenELM: token embedding -> N pre-norm layers -> final RMSNorm -> (tied) output head.

use tch::{nn, Kind, Tensor};

use crate::adapter::{Adapter, DropoutKey};
use crate::attention::AttentionShape;
use crate::block::Block;
use crate::config::OpenElmConfig;
use crate::error::{Error, Result};
use crate::init::{normal, residual_std};
use crate::kv_cache::KvCache;
use crate::norm::RmsNorm;
use crate::rope::Rope;
use crate::scaling::LayerDims;

#[derive(Debug)]
pub struct OpenElm {
    pub(crate) config: OpenElmConfig,
    dims: Vec<LayerDims>,
    pub token_embeddings: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// Only when the head is not tied to the embedding (HF name `lm_head.weight`).
    pub lm_head: Option<Tensor>,
    /// LoRA/DoRA on the token lookup (crate::peft); the tied head keeps the base table.
    pub embedding_adapter: Option<Adapter>,
    /// Switches every adapter's dropout (off unless a trainer sets a micro-batch's key).
    pub(crate) dropout_key: DropoutKey,
    rope: Rope,
}

impl OpenElm {
    /// Builds the model under `root` (a VarStore root: tensor names come out as HF's
    /// `transformer.layers.N.attn.qkv_proj.weight`, ...), initialised as CoreNet does.
    pub fn new(root: &nn::Path, config: &OpenElmConfig) -> Result<Self> {
        let dims = config.layers()?;
        let d = config.model_dim;
        let t = root / "transformer";
        let token_embeddings = normal(
            &(&t / "token_embeddings"),
            &[config.vocab_size as i64, d as i64],
            (d as f64).powf(-0.5),
        );
        let res_std = residual_std(d, config.num_transformer_layers);
        let layers = dims
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let shape = AttentionShape {
                    model_dim: d,
                    head_dim: config.head_dim,
                    query_heads: l.query_heads,
                    kv_heads: l.kv_heads,
                    qk_norm: config.normalize_qk_projections,
                };
                Block::new(
                    &(&t / "layers" / i),
                    shape,
                    l.ffn_dim,
                    config.ffn_with_glu,
                    res_std,
                )
            })
            .collect();
        let norm = RmsNorm::new(&(&t / "norm"), d);
        let lm_head = (!config.tied()).then(|| {
            normal(
                &(root / "lm_head"),
                &[config.vocab_size as i64, d as i64],
                (d as f64).powf(-0.5),
            )
        });
        let rope = Rope::new(
            config.head_dim,
            config.rope_freq_constant,
            config.rope_max_length,
            root.device(),
        );
        Ok(OpenElm {
            config: config.clone(),
            dims,
            token_embeddings,
            layers,
            norm,
            lm_head,
            embedding_adapter: None,
            dropout_key: DropoutKey::default(),
            rope,
        })
    }

    pub fn config(&self) -> &OpenElmConfig {
        &self.config
    }

    pub fn layer_dims(&self) -> &[LayerDims] {
        &self.dims
    }

    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// tokens: (B, T) int64 -> logits (B, T, V).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        self.forward_masked(tokens, None)
    }

    /// [`Self::forward`] with attention under `mask` (B, 1, T, T) instead of the causal mask
    /// ([`crate::document_mask::document_mask`]).
    pub fn forward_masked(&self, tokens: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = self.embed(tokens)?;
        let x = self
            .layers
            .iter()
            .fold(x, |x, layer| layer.forward(&x, &self.rope, mask, None));
        Ok(self.head(&x))
    }

    /// Like `forward`, continuing from (and extending) a KV cache: the tokens sit at positions
    /// cache.len()..cache.len()+T.
    pub fn forward_cached(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.layers.len() != self.layers.len() {
            return Err(Error::config(
                "kv_cache",
                format!(
                    "has {} layers, the model {}",
                    cache.layers.len(),
                    self.layers.len()
                ),
            ));
        }
        let mut x = self.embed(tokens)?;
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &self.rope, None, Some(layer_cache));
        }
        Ok(self.head(&x))
    }

    /// tokens: (B, T) int64 -> (B, T, C). No scaling, no position embedding.
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        if tokens.dim() != 2 || tokens.kind() != Kind::Int64 {
            return Err(Error::config(
                "tokens",
                format!(
                    "expected (B, T) int64 ids, got {:?} {:?}",
                    tokens.size(),
                    tokens.kind()
                ),
            ));
        }
        let pad = self.config.padding_index.unwrap_or(-1);
        let rows = Tensor::embedding(&self.token_embeddings, tokens, pad, false, false);
        Ok(match &self.embedding_adapter {
            Some(adapter) => adapter.embedding(tokens, rows, &self.token_embeddings, pad),
            None => rows,
        })
    }

    /// x: (B, T, C) -> logits (B, T, V), after the final norm.
    pub fn head(&self, x: &Tensor) -> Tensor {
        let x = self.norm.forward(x);
        let weight = self.lm_head.as_ref().unwrap_or(&self.token_embeddings);
        x.linear::<Tensor>(weight, None)
    }
}

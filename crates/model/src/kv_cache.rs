//! Per-layer key/value cache for generation. OpenELM's head counts differ per layer, so each
//! layer owns its own tensors.

use tch::Tensor;

/// Keys (after q/k norm and RoPE) and values of one layer: (B, Hkv, S, D) each.
#[derive(Debug, Default)]
pub struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
}

impl LayerCache {
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.size()[2] as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends (B, Hkv, T, D) keys and values; returns the full (B, Hkv, S + T, D) tensors.
    pub fn append(&mut self, keys: &Tensor, values: &Tensor) -> (Tensor, Tensor) {
        let keys = match &self.keys {
            Some(k) => Tensor::cat(&[k, keys], 2),
            None => keys.shallow_clone(),
        };
        let values = match &self.values {
            Some(v) => Tensor::cat(&[v, values], 2),
            None => values.shallow_clone(),
        };
        self.keys = Some(keys.shallow_clone());
        self.values = Some(values.shallow_clone());
        (keys, values)
    }
}

/// One cache per layer.
#[derive(Debug, Default)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| LayerCache::default()).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

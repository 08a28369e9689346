//! Text generation: greedy or temperature / top-p sampling, with or without the per-layer KV
//! cache. Sampling uses its own seeded generator (not libtorch's global one), so a seed gives the
//! same continuation on every run.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::openelm::OpenElm;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches this.
    pub top_p: f64,
    pub seed: u64,
    /// Stop after emitting this id.
    pub eos_id: Option<i64>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            eos_id: None,
        }
    }
}

/// SplitMix64: small, seedable, and independent of libtorch's global RNG.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The next id from one row of logits (V).
fn pick(logits: &Tensor, config: &SamplingConfig, rng: &mut Rng) -> Result<i64> {
    if config.temperature <= 0.0 {
        return Ok(logits.argmax(-1, false).int64_value(&[]));
    }
    let probs = (logits.to_kind(Kind::Double) / config.temperature).softmax(-1, Kind::Double);
    let probs = Vec::<f64>::try_from(&probs)?;
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for &i in &order {
        kept.push(i);
        mass += probs[i];
        if mass >= config.top_p {
            break;
        }
    }
    let mut target = rng.next_f64() * mass;
    for &i in &kept {
        target -= probs[i];
        if target <= 0.0 {
            return Ok(i as i64);
        }
    }
    Ok(*kept.last().unwrap_or(&0) as i64)
}

/// Continues `prompt` (ids) by up to `max_new_tokens`; returns only the new ids.
pub fn generate(
    model: &OpenElm,
    prompt: &[i64],
    config: &SamplingConfig,
    use_cache: bool,
) -> Result<Vec<i64>> {
    if prompt.is_empty() {
        return Err(Error::config(
            "prompt",
            "needs at least one token (e.g. BOS)",
        ));
    }
    if !(config.temperature.is_finite() && config.temperature >= 0.0) {
        return Err(Error::config(
            "temperature",
            format!(
                "{} must be a finite number >= 0 (0 is greedy)",
                config.temperature
            ),
        ));
    }
    if !(config.top_p > 0.0 && config.top_p <= 1.0) {
        return Err(Error::config(
            "top_p",
            format!("{} is outside (0, 1]", config.top_p),
        ));
    }
    let device = model.token_embeddings.device();
    let mut rng = Rng(config.seed);
    let mut ids: Vec<i64> = prompt.to_vec();
    let mut cache = KvCache::new(model.layers.len());
    let mut out = Vec::new();
    tch::no_grad(|| -> Result<()> {
        let mut next_input = Tensor::from_slice(prompt).view([1, -1]).to_device(device); // (1, T)
        for _ in 0..config.max_new_tokens {
            let logits = if use_cache {
                model.forward_cached(&next_input, &mut cache)?
            } else {
                model.forward(&Tensor::from_slice(&ids).view([1, -1]).to_device(device))?
            }; // (1, T, V)
            let last = logits.select(1, -1).squeeze_dim(0); // (V)
            let id = pick(&last, config, &mut rng)?;
            ids.push(id);
            out.push(id);
            if config.eos_id == Some(id) {
                break;
            }
            next_input = Tensor::from_slice(&[id]).view([1, 1]).to_device(device);
        }
        Ok(())
    })?;
    Ok(out)
}

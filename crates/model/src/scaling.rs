//! Layer-wise scaling: OpenELM's per-layer query heads, KV heads and FFN widths, computed once
//! from the alpha/beta multipliers exactly as CoreNet's `GPTConfig.__post_init__` does.

use serde::{Deserialize, Serialize};

/// The resolved shape of one transformer layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDims {
    pub query_heads: usize,
    pub kv_heads: usize,
    pub ffn_dim: usize,
}

/// CoreNet's `make_divisible` (MobileNet rounding): the nearest multiple of `divisor` (ties up,
/// never below `min_value`, which defaults to `divisor`), plus one more `divisor` if that rounded
/// down by more than 10 %.
pub fn make_divisible(value: f64, divisor: usize, min_value: Option<usize>) -> usize {
    let d = divisor as f64;
    let floor = min_value.map_or(d, |m| m as f64);
    // Python: int(v + d / 2) // d * d — int() truncates toward zero.
    let nearest = ((value + d / 2.0).trunc() / d).floor() * d;
    let mut rounded = floor.max(nearest);
    if rounded < 0.9 * value {
        rounded += d;
    }
    rounded as usize
}

/// NumPy's `linspace(start, stop, num)` (endpoint included, last point forced to `stop`).
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// Python's `round(x, 2)`: round the exact binary value half-to-even at the second decimal, then
/// take the nearest double of that decimal.
pub fn round2(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // 80 fractional digits hold the exact expansion of any double >= 2^-26, which covers every
    // multiplier a config can sensibly have; smaller values round to 0 either way.
    let exact = format!("{:.80}", x.abs());
    let (int_part, frac) = exact.split_once('.').unwrap_or((exact.as_str(), ""));
    let frac = frac.as_bytes();
    let kept: u64 = int_part.parse::<u64>().unwrap_or(0) * 100
        + u64::from(frac[0] - b'0') * 10
        + u64::from(frac[1] - b'0');
    let third = frac[2] - b'0';
    let rest_nonzero = frac[3..].iter().any(|&c| c != b'0');
    let round_up = third > 5 || (third == 5 && (rest_nonzero || kept % 2 == 1));
    let kept = if round_up { kept + 1 } else { kept };
    let magnitude: f64 = format!("{}.{:02}", kept / 100, kept % 100)
        .parse()
        .unwrap_or(f64::NAN);
    magnitude.copysign(x)
}

/// Per-layer multipliers from a scalar (every layer the same, unrounded), a `[min, max]` range
/// (linspace over the layers, each rounded to 2 decimals), or — as HF's config.json stores
/// `ffn_multipliers` — an explicit list with one value per layer.
pub fn per_layer(multipliers: &[f64], num_layers: usize) -> Vec<f64> {
    match multipliers {
        [value] => vec![*value; num_layers],
        [min, max] => linspace(*min, *max, num_layers)
            .into_iter()
            .map(round2)
            .collect(),
        list if list.len() == num_layers => list.to_vec(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_rounds_to_nearest_multiple_and_applies_ten_percent_rule() {
        assert_eq!(make_divisible(640.0, 256, None), 768); // 640 + 128 = 768, ties up
        assert_eq!(make_divisible(857.6, 256, None), 1024); // 768 < 0.9 * 857.6
        assert_eq!(make_divisible(32.0, 256, None), 256); // floor = divisor
        assert_eq!(make_divisible(32.0, 64, None), 64);
        assert_eq!(make_divisible(1280.0 * 4.0, 256, None), 5120);
    }

    #[test]
    fn linspace_matches_numpy() {
        assert_eq!(linspace(0.25, 0.5, 1), vec![0.25]);
        let v = linspace(0.5, 4.0, 16);
        assert_eq!(v.len(), 16);
        assert_eq!(v[0], 0.5);
        assert_eq!(v[15], 4.0);
        assert!((v[1] - (0.5 + 3.5 / 15.0)).abs() < 1e-15);
    }

    #[test]
    fn round2_is_python_round() {
        assert_eq!(round2(0.5333333333), 0.53);
        assert_eq!(round2(0.6666666666), 0.67);
        assert_eq!(round2(2.675), 2.67); // 2.675 is 2.67499999... in binary
        assert_eq!(round2(0.125), 0.12); // exact tie: half to even
        assert_eq!(round2(0.375), 0.38);
        assert_eq!(round2(-1.005), -1.0); // -1.00499999...
        assert_eq!(round2(4.0), 4.0);
    }

    #[test]
    fn per_layer_270m_alphas() {
        let alphas = per_layer(&[0.5, 1.0], 16);
        let expected = [
            0.5, 0.53, 0.57, 0.6, 0.63, 0.67, 0.7, 0.73, 0.77, 0.8, 0.83, 0.87, 0.9, 0.93, 0.97,
            1.0,
        ];
        assert_eq!(alphas, expected);
    }
}

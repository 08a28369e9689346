//! Weighted source choice per row, driven by a serialisable counter-based generator.

use crate::rng::Rng;

/// Picks a source for each row with probability proportional to its weight.
#[derive(Debug, Clone)]
pub struct Mixer {
    cumulative: Vec<f64>,
}

impl Mixer {
    /// Weights must be positive (checked by the config).
    pub fn new(weights: &[f64]) -> Mixer {
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Mixer { cumulative }
    }

    /// The next source index.
    pub fn pick(&self, rng: &mut Rng) -> usize {
        if self.cumulative.len() <= 1 {
            return 0;
        }
        let u = rng.next_f64();
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportions_follow_weights() {
        let m = Mixer::new(&[1.0, 3.0]);
        let mut rng = Rng::new(&[1]);
        let ones = (0..20_000).filter(|_| m.pick(&mut rng) == 1).count();
        assert!((ones as f64 / 20_000.0 - 0.75).abs() < 0.02);
    }
}

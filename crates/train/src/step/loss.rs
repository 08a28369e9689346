//! CoreNet's language-model loss: cross-entropy over non-pad targets plus z-loss; and the DPO
//! loss of a pairs-mode batch in the same terms.

use tch::{Kind, Reduction, Tensor};

use crate::step::preference::{preference_loss, DpoConfig, SequenceScores};

/// Loss terms of one micro-batch; `total` carries the graph, the others are detached.
#[derive(Debug)]
pub struct LossTerms {
    pub total: Tensor,
    pub ce: Tensor,
    pub z_loss: Tensor,
    /// (5,) a preference loss's metrics ([`PreferenceTerms::metrics`]); zeros otherwise.
    ///
    /// [`PreferenceTerms::metrics`]: crate::step::preference::PreferenceTerms
    pub preference: Tensor,
}

/// logits: (B, T, V) any float dtype; targets: (B, T) int64.
///
/// - CE is the mean over targets != `ignore_index`, computed in f32.
/// - z-loss (ST-MoE eq. 5) = coef · Σ_rows logsumexp(row)² / n_valid. CoreNet zeroes the logits of
///   pad rows *before* the logsumexp, so each pad row adds the constant (ln V)² to the numerator
///   (no gradient). That is reproduced here so logged values match CoreNet's; in packed mode there
///   are no pad rows and the quirk vanishes.
pub fn lm_loss(logits: &Tensor, targets: &Tensor, ignore_index: i64, z_coef: f64) -> LossTerms {
    let vocab = logits.size()[2];
    let logits = logits.reshape([-1, vocab]).to_kind(Kind::Float); // (N, V)
    let targets = targets.reshape([-1]); // (N)
    let ce =
        logits.cross_entropy_loss::<Tensor>(&targets, None, Reduction::Mean, ignore_index, 0.0);
    if z_coef == 0.0 {
        let z_loss = ce.zeros_like().detach();
        return LossTerms {
            total: ce.shallow_clone(),
            ce: ce.detach(),
            preference: no_preference(&z_loss),
            z_loss,
        };
    }
    let valid = targets.ne(ignore_index); // (N) bool
    let pad_row = Tensor::from((vocab as f32).ln()).to_device(logits.device());
    let lse = logits.logsumexp([-1], false).where_self(&valid, &pad_row); // (N)
    let n_valid = valid.sum(Kind::Float).clamp_min(1.0);
    let z_loss = lse.square().sum(Kind::Float) / n_valid * z_coef;
    LossTerms {
        total: &ce + &z_loss,
        ce: ce.detach(),
        preference: no_preference(&z_loss),
        z_loss: z_loss.detach(),
    }
}

/// The preference metrics of a loss that has none: zeros on `like`'s device.
fn no_preference(like: &Tensor) -> Tensor {
    Tensor::zeros([5], (Kind::Float, like.device()))
}

/// A pairs-mode micro-batch's DPO loss ([`preference_loss`]) against the reference's summed
/// log-probabilities `reference` (2P,); `ce` is the policy's mean NLL on the chosen answers.
pub fn dpo_loss(
    logits: &Tensor,
    targets: &Tensor,
    ignore_index: i64,
    cfg: &DpoConfig,
    reference: &Tensor,
) -> LossTerms {
    let scores = SequenceScores::from_logits(logits, targets, ignore_index);
    let terms = preference_loss(&scores, reference, cfg);
    let chosen = |t: &Tensor| t.detach().view([-1, 2]).select(1, 0).sum(Kind::Float);
    let ce = -chosen(&scores.logps) / chosen(&scores.tokens).clamp_min(1.0);
    LossTerms {
        total: terms.total,
        z_loss: ce.zeros_like(),
        ce,
        preference: terms.metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn ce_ignores_pad_and_z_loss_follows_corenet_formula() {
        let logits =
            Tensor::from_slice(&[1.0f32, 2.0, 0.5, 0.0, 0.0, 3.0, 1.0, 1.0, 1.0]).view([1, 3, 3]);
        let targets = Tensor::from_slice(&[1i64, 2, 9]).view([1, 3]); // last row is pad (9)
        let terms = lm_loss(&logits, &targets, 9, 1e-4);
        let row = |r: [f64; 3], t: usize| {
            let lse = r.iter().map(|x| x.exp()).sum::<f64>().ln();
            (lse, lse - r[t])
        };
        let (lse0, ce0) = row([1.0, 2.0, 0.5], 1);
        let (lse1, ce1) = row([0.0, 0.0, 3.0], 2);
        let ce = (ce0 + ce1) / 2.0;
        let z = 1e-4 * (lse0 * lse0 + lse1 * lse1 + 3f64.ln().powi(2)) / 2.0;
        assert!((terms.ce.double_value(&[]) - ce).abs() < 1e-6);
        assert!((terms.z_loss.double_value(&[]) - z).abs() < 1e-9);
        assert!((terms.total.double_value(&[]) - ce - z).abs() < 1e-6);
    }

    #[test]
    fn zero_coefficient_gives_plain_ce() {
        let (logits, targets) = crate::step::generator::drawing(|| {
            (
                Tensor::randn([2, 4, 5], (Kind::Float, Device::Cpu)),
                Tensor::randint(5, [2, 4], (Kind::Int64, Device::Cpu)),
            )
        });
        let terms = lm_loss(&logits, &targets, -100, 0.0);
        assert_eq!(terms.z_loss.double_value(&[]), 0.0);
        let ce = logits
            .view([-1, 5])
            .cross_entropy_for_logits(&targets.view([-1]));
        assert!((terms.total.double_value(&[]) - ce.double_value(&[])).abs() < 1e-6);
    }
}

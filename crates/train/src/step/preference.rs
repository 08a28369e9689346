//! Direct preference optimisation (DPO): the recipe's `dpo:` section, the per-sequence
//! log-probabilities of a pairs-mode batch, and the sigmoid, hinge and IPO losses as the `trl`
//! library computes them (its `DPOTrainer._compute_loss`, reverse-KL divergence), with the
//! rewards, margins and accuracy it logs.
//!
//! A pairs-mode micro-batch holds P pairs as 2P rows, chosen and rejected side by side
//! (rows 2i and 2i+1); targets that are prompt or padding carry the ignore index.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Which preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreferenceLoss {
    /// -log σ(β·Δ) (the DPO paper).
    #[default]
    Sigmoid,
    /// max(0, 1 − β·Δ) (SLiC), what three of the four OpenELM-Instruct models used.
    Hinge,
    /// (Δ̄ − 1/(2β))² on the log-ratios averaged per answer token (trl's normalisation).
    Ipo,
}

/// The `dpo:` recipe section. The reference model is the run's starting weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoConfig {
    pub loss: PreferenceLoss,
    /// How far the policy may move from the reference (OpenELM-Instruct: 0.01).
    pub beta: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        DpoConfig {
            loss: PreferenceLoss::Sigmoid,
            beta: 0.01,
        }
    }
}

impl DpoConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(Error::config(
                "dpo.beta",
                format!("must be positive, got {}", self.beta),
            ));
        }
        Ok(())
    }
}

/// What the loss needs of each row: the summed log-probability of its answer tokens and
/// their count.
#[derive(Debug)]
pub struct SequenceScores {
    /// (2P,) with the graph to the logits.
    pub logps: Tensor,
    /// (2P,) answer tokens per row.
    pub tokens: Tensor,
}

impl SequenceScores {
    /// logits: (B, T, V); targets: (B, T) int64, `ignore` where a position is no target.
    pub fn from_logits(logits: &Tensor, targets: &Tensor, ignore: i64) -> Self {
        let logp = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float); // (B, T, V)
        let mask = targets.ne(ignore); // (B, T)
        let index = targets.where_scalarother(&mask, 0).unsqueeze(-1); // (B, T, 1)
        let token = logp.gather(-1, &index, false).squeeze_dim(-1); // (B, T)
        Self::from_token_logps(&token, &mask.to_kind(Kind::Float))
    }

    /// token: (B, T) log p of each target; mask: (B, T) 1 on answer tokens.
    pub fn from_token_logps(token: &Tensor, mask: &Tensor) -> Self {
        let logps = (token * mask).sum_dim_intlist([1i64].as_slice(), false, Kind::Float); // (B)
        let tokens = mask.sum_dim_intlist([1i64].as_slice(), false, Kind::Float); // (B)
        SequenceScores { logps, tokens }
    }
}

/// One micro-batch's preference loss and what a step logs of it; all but `total` detached.
#[derive(Debug)]
pub struct PreferenceTerms {
    /// Mean over the pairs, with the graph.
    pub total: Tensor,
    /// [chosen reward, rejected reward, accuracy, chosen log π, rejected log π], means over
    /// the pairs: reward = β·(log π − log π_ref); accuracy = the share of pairs whose chosen
    /// reward is the larger; log π the policy's summed log-probability of the answer. (The
    /// margin is the rewards' difference.)
    pub metrics: Tensor,
}

/// `policy`: the policy's scores of 2P rows; `reference`: (2P,) the reference's summed
/// log-probabilities of the same rows.
pub fn preference_loss(
    policy: &SequenceScores,
    reference: &Tensor,
    cfg: &DpoConfig,
) -> PreferenceTerms {
    let beta = cfg.beta;
    let pairs = |t: &Tensor| {
        let t = t.view([-1, 2]); // (P, 2)
        (t.select(1, 0), t.select(1, 1))
    };
    let ratios = &policy.logps - reference; // (2P)
    let (chosen, rejected) = pairs(&ratios); // (P), (P)
    let delta = &chosen - &rejected;
    let per_pair = match cfg.loss {
        PreferenceLoss::Sigmoid => -(&delta * beta).log_sigmoid(),
        PreferenceLoss::Hinge => (-(&delta * beta) + 1.0).relu(),
        PreferenceLoss::Ipo => {
            let (chosen_n, rejected_n) = pairs(&policy.tokens.clamp_min(1.0));
            let avg = &chosen / chosen_n - &rejected / rejected_n;
            (avg - 1.0 / (2.0 * beta)).square()
        }
    };
    let (reward_chosen, reward_rejected) = (chosen.detach() * beta, rejected.detach() * beta);
    let accuracy = reward_chosen
        .gt_tensor(&reward_rejected)
        .to_kind(Kind::Float);
    let (logps_chosen, logps_rejected) = pairs(&policy.logps.detach());
    let metrics = Tensor::stack(
        &[
            reward_chosen.mean(Kind::Float),
            reward_rejected.mean(Kind::Float),
            accuracy.mean(Kind::Float),
            logps_chosen.mean(Kind::Float),
            logps_rejected.mean(Kind::Float),
        ],
        0,
    );
    PreferenceTerms {
        total: per_pair.mean(Kind::Float),
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(logps: &[f32]) -> SequenceScores {
        SequenceScores {
            logps: Tensor::from_slice(logps),
            tokens: Tensor::from_slice(&vec![1f32; logps.len()]),
        }
    }

    #[test]
    fn losses_follow_their_formulas_and_rewards_compare_chosen_with_rejected() {
        // Two pairs: policy gains 2 on pair 0's chosen side; pair 1 prefers the rejected one.
        let policy = scores(&[-3.0, -6.0, -5.0, -4.0]);
        let reference = Tensor::from_slice(&[-5.0f32, -6.0, -5.0, -5.0]);
        let beta = 0.5;
        let delta = [2.0f64, -1.0];
        for (loss, expect) in [
            (
                PreferenceLoss::Sigmoid,
                delta.map(|d| (1.0 + (-beta * d).exp()).ln()),
            ),
            (
                PreferenceLoss::Hinge,
                delta.map(|d| (1.0 - beta * d).max(0.0)),
            ),
            (
                PreferenceLoss::Ipo,
                delta.map(|d| (d - 1.0 / (2.0 * beta)).powi(2)),
            ),
        ] {
            let terms = preference_loss(&policy, &reference, &DpoConfig { loss, beta });
            let want = (expect[0] + expect[1]) / 2.0;
            assert!(
                (terms.total.double_value(&[]) - want).abs() < 1e-6,
                "{loss:?}"
            );
            let m: Vec<f64> = (0..5).map(|i| terms.metrics.double_value(&[i])).collect();
            assert!((m[0] - beta * (2.0 + 0.0) / 2.0).abs() < 1e-6, "{m:?}");
            assert!((m[1] - beta * (0.0 + 1.0) / 2.0).abs() < 1e-6, "{m:?}");
            assert_eq!(m[2], 0.5);
            assert_eq!((m[3], m[4]), (-4.0, -5.0));
        }
    }

    #[test]
    fn sequence_logps_sum_only_the_answer_targets() {
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 2.0, 0.0, 1.0]).view([1, 2, 3]);
        let targets = Tensor::from_slice(&[2i64, -100]).view([1, 2]);
        let s = SequenceScores::from_logits(&logits, &targets, -100);
        let lse = (1.0f64 + 1f64.exp() + 2f64.exp()).ln();
        assert!((s.logps.double_value(&[0]) - (2.0 - lse)).abs() < 1e-6);
        assert_eq!(s.tokens.double_value(&[0]), 1.0);
    }

    #[test]
    fn beta_must_be_positive() {
        let bad = DpoConfig {
            beta: 0.0,
            ..DpoConfig::default()
        };
        assert!(bad
            .validate()
            .expect_err("beta")
            .to_string()
            .contains("beta"));
    }
}

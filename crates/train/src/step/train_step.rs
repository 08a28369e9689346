//! One optimizer step, the same for the trainer and for `corenet bench`: gradient accumulation
//! over micro-batches, the loss sums (and stop votes) all-reduced across ranks, the gradients
//! reduced and clipped, and the update — skipped on the device when the loss or the gradient
//! norm is not finite. Nothing is read back to the host: the step's values come back as one
//! device tensor for the caller to read when it likes.

use tch::{Kind, Tensor};

use corenet_model::adapter::DropoutKey;
use corenet_model::document_mask::document_mask;
use corenet_model::OpenElm;

use crate::dist::DataParallel;
use crate::error::Result;
use crate::optim::{found_inf, Optimizer};
use crate::step::forward_backward::{
    forward_backward_staged, forward_backward_with, LossSpec, Stage,
};
use crate::step::preference::DpoConfig;
use crate::step::reference::Reference;

/// Positions in the tensor [`optimizer_step`] returns.
pub(crate) mod values {
    pub const LOSS: usize = 0;
    pub const CE: usize = 1;
    pub const Z_LOSS: usize = 2;
    /// A DPO step's mean chosen reward, rejected reward, preference accuracy and the policy's
    /// chosen and rejected log-probabilities (0 otherwise).
    pub const REWARD_CHOSEN: usize = 3;
    pub const REWARD_REJECTED: usize = 4;
    pub const ACCURACY: usize = 5;
    pub const LOGPS_CHOSEN: usize = 6;
    pub const LOGPS_REJECTED: usize = 7;
    pub const GRAD_NORM: usize = 8;
    /// Ranks that asked to stop this step (0 in a single process).
    pub const STOP_VOTES: usize = 9;
    /// 1 when the device skipped the update.
    pub const SKIPPED: usize = 10;
    /// The values averaged over micro-batches and ranks (loss … rejected log-probability).
    pub(crate) const AVERAGED: i64 = 8;
}

/// What a step works on.
pub(crate) struct StepParts<'a> {
    pub model: &'a OpenElm,
    pub optim: &'a mut Optimizer,
    /// The process group of a data-parallel run.
    pub dp: Option<&'a DataParallel>,
    /// Every parameter with the backward stage that finishes its gradient (overlapped
    /// all-reduce only).
    pub stages: &'a [(Stage, Tensor)],
    /// A DPO run's frozen reference model.
    pub reference: Option<&'a Reference>,
}

/// How every step of a run goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepSettings {
    /// Micro-batches per step on this rank.
    pub accumulation: usize,
    /// Target id the loss ignores (the pad id).
    pub ignore_index: i64,
    pub z_loss: f64,
    pub activation_checkpointing: bool,
    /// All-reduce gradients bucket by bucket during the last micro-batch's backward
    /// (data-parallel runs with the replicated optimizer).
    pub overlap_grad_reduce: bool,
    pub grad_clip: Option<f64>,
    /// A DPO run: the loss is [`crate::step::preference::preference_loss`] against the
    /// reference model on pairs-mode batches.
    pub dpo: Option<DpoConfig>,
    /// `trainer.document_mask`: the BOS id that opens each packed document, whose tokens
    /// then attend inside their own document only.
    pub document_bos: Option<i64>,
}

/// What changes from one step to the next.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepInput {
    pub lr: f64,
    /// Seeds the adapters' dropout masks of this step (None: no dropout, as in benchmarks of
    /// full training). Each micro-batch gets its own key from it ([`micro_batch_key`]).
    pub dropout_seed: Option<u64>,
    /// This process asks to stop (SIGINT/SIGTERM); shared with the other ranks.
    pub stop_vote: bool,
    /// Fault injection for tests: make the loss NaN.
    pub poison: bool,
}

/// Called at a step's phase boundaries; the benchmark synchronises the device and reads the
/// clock there. The trainer passes [`NoPhases`].
pub(crate) trait Phases {
    /// The last micro-batch's loss exists; its backward has not started (not called for an
    /// overlapped backward, whose stages interleave with communication).
    fn forward_done(&mut self) {}
    /// Every micro-batch's backward is done.
    fn backward_done(&mut self) {}
}

/// No phase boundaries of interest.
pub(crate) struct NoPhases;

impl Phases for NoPhases {}

/// Runs one optimizer step on `settings.accumulation` micro-batches from `next_batch`
/// ((B, T) int64 inputs and targets on the model's device). Returns the step's values as a
/// 1-D f32 device tensor laid out as [`values`], identical on every rank.
pub(crate) fn optimizer_step(
    parts: StepParts<'_>,
    settings: &StepSettings,
    input: StepInput,
    next_batch: &mut dyn FnMut() -> Result<(Tensor, Tensor)>,
    phases: &mut dyn Phases,
) -> Result<Tensor> {
    let StepParts {
        model,
        optim,
        dp,
        stages,
        reference,
    } = parts;
    let lm = LossSpec {
        ignore_index: settings.ignore_index,
        z_coef: settings.z_loss,
        scale: 1.0 / settings.accumulation as f64,
        preference: None,
        mask: None,
    };
    let device = model.token_embeddings.device();
    let overlap =
        dp.filter(|_| settings.overlap_grad_reduce && matches!(optim, Optimizer::Replicated(_)));
    let checkpoint = settings.activation_checkpointing;
    let averaged = values::AVERAGED;
    let mut sums = Tensor::zeros([averaged], (Kind::Float, device)); // loss … log-probs
    let mut reduced = false;
    for micro in 0..settings.accumulation {
        let (inputs, targets) = next_batch()?;
        // (2P,) the reference's log-probabilities of this micro-batch, before the policy runs.
        let reference = match (settings.dpo, reference) {
            (Some(cfg), Some(r)) => Some((cfg, r.logps(&inputs, &targets, lm.ignore_index)?)),
            _ => None,
        };
        let mask = settings.document_bos.map(|bos| document_mask(&inputs, bos));
        let spec = LossSpec {
            preference: reference.as_ref().map(|(cfg, logps)| (*cfg, logps)),
            mask: mask.as_ref(),
            ..lm
        };
        if let Some(seed) = input.dropout_seed {
            model.dropout_key().set(micro_batch_key(seed, micro));
        }
        let last = micro + 1 == settings.accumulation;
        let terms = match overlap {
            // The last micro-batch completes the gradients: reduce them as they finish.
            Some(dp) if last => {
                let mut reducer = dp.overlap_reducer();
                let terms = forward_backward_staged(
                    model,
                    &inputs,
                    &targets,
                    spec,
                    checkpoint,
                    &mut |stage| {
                        let grads: Vec<Tensor> = stages
                            .iter()
                            .filter(|(s, _)| *s == stage)
                            .map(|(_, p)| p.grad())
                            .collect();
                        reducer.ready(&grads)
                    },
                )?;
                reducer.finish()?;
                reduced = true;
                terms
            }
            _ => forward_backward_with(model, &inputs, &targets, spec, checkpoint, || {
                if last {
                    phases.forward_done();
                }
            })?,
        };
        let losses = Tensor::stack(&[terms.total, terms.ce, terms.z_loss], 0);
        sums += Tensor::cat(&[losses.to_kind(Kind::Float), terms.preference], 0);
    }
    model.dropout_key().set(DropoutKey::OFF);
    phases.backward_done();
    if input.poison {
        sums *= f64::NAN;
    }
    // [total, ce, z, rewards, accuracy, log-probs, stop votes]: summed over ranks in a data-parallel run,
    // so every rank sees the same loss (the mean over all micro-batches of all ranks) and stop
    // decision.
    let vote = f32::from(u8::from(input.stop_vote));
    let packed = Tensor::cat(&[sums, Tensor::from_slice(&[vote]).to_device(device)], 0);
    let mut micro_batches = settings.accumulation;
    if let Some(dp) = dp {
        dp.all_reduce_sum(&packed)?;
        micro_batches *= dp.world_size();
    }
    optim.reduce_gradients(dp, reduced)?;
    let norm = optim.clip(dp, settings.grad_clip)?;
    // [loss … log-probs, grad norm]; identical on every rank, so every rank skips alike.
    let measured = Tensor::cat(
        &[
            packed.narrow(0, 0, averaged) / micro_batches as f64,
            norm.to_kind(Kind::Float).reshape([1]),
        ],
        0,
    );
    let found_inf = found_inf(&measured);
    optim.step(dp, input.lr, Some(&found_inf))?;
    optim.zero_grad()?;
    Ok(Tensor::cat(
        &[
            measured,
            packed.narrow(0, averaged, 1),
            found_inf.reshape([1]),
        ],
        0,
    ))
}

/// The dropout key of micro-batch `micro` of a step seeded `seed`: never [`DropoutKey::OFF`].
fn micro_batch_key(seed: u64, micro: usize) -> u64 {
    let key = seed ^ (micro as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    match key {
        DropoutKey::OFF => 1,
        key => key,
    }
}

/// A step's dropout seed from the run's seed, the step and the rank: a pure function, so a
/// resumed run draws the masks the uninterrupted run drew, and ranks draw different ones.
pub(crate) fn dropout_seed(run_seed: u64, step: u64, rank: usize) -> u64 {
    let mut z = run_seed
        .wrapping_add(step.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add((rank as u64).wrapping_mul(0x94d0_49bb_1331_11eb));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

//! Forward + backward of one micro-batch: plain, with activation checkpointing per block, or
//! stage by stage so a data-parallel run can all-reduce finished gradients during backward.
//!
//! tch has neither `torch.utils.checkpoint` nor custom autograd functions, so checkpointing is
//! done by hand: the blocks run forward under `no_grad` keeping only each block's input; the
//! head and loss run with autograd from a detached copy of the last activation; then the blocks
//! are re-run one at a time, newest first, each back-propagating the gradient of its output
//! through the graph of that block only. Peak activation memory is one block's graph plus the
//! block inputs (B·T·C per block), instead of every block's graph.

use tch::{Kind, Tensor};

use corenet_model::OpenElm;

use crate::error::Result;
use crate::step::loss::{dpo_loss, lm_loss, LossTerms};
use crate::step::preference::DpoConfig;

/// A point of a staged backward after which some parameters' gradients are final, newest
/// first: the head (final norm, untied output layer), each block from the last, then the
/// token embedding (last, since a tied head also feeds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Head,
    Block(usize),
    Embedding,
}

impl Stage {
    /// The stage that finishes the gradient of parameter `name` (HF OpenELM names).
    pub(crate) fn of(name: &str) -> Stage {
        if name.starts_with("transformer.token_embeddings") {
            return Stage::Embedding;
        }
        name.strip_prefix("transformer.layers.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse().ok())
            .map_or(Stage::Head, Stage::Block)
    }
}

/// What one micro-batch's forward and loss need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LossSpec<'a> {
    pub ignore_index: i64,
    pub z_coef: f64,
    /// Multiplies the loss before backward (1 / accumulation steps).
    pub scale: f64,
    /// A DPO step: its settings and the reference model's summed log-probabilities of this
    /// micro-batch's rows (2P,).
    pub preference: Option<(DpoConfig, &'a Tensor)>,
    /// Attention kept inside each packed document (B, 1, T, T), instead of causal over the row.
    pub mask: Option<&'a Tensor>,
}

impl LossSpec<'_> {
    /// The loss of `logits` (B, T, V) against `targets` (B, T).
    fn loss(&self, logits: &Tensor, targets: &Tensor) -> LossTerms {
        match &self.preference {
            Some((cfg, reference)) => dpo_loss(logits, targets, self.ignore_index, cfg, reference),
            None => lm_loss(logits, targets, self.ignore_index, self.z_coef),
        }
    }
}

/// Runs forward and backward, accumulating gradients into the model's parameters.
/// inputs, targets: (B, T) int64. Returns the (detached) loss terms. (The step calls
/// [`forward_backward_with`]; this plain form is what the equivalence tests compare against.)
#[cfg(test)]
pub(crate) fn forward_backward(
    model: &OpenElm,
    inputs: &Tensor,
    targets: &Tensor,
    spec: LossSpec<'_>,
    checkpoint: bool,
) -> corenet_model::Result<LossTerms> {
    forward_backward_with(model, inputs, targets, spec, checkpoint, || {})
}

/// [`forward_backward`] calling `after_forward` once the loss exists and before any backward
/// work starts (with checkpointing, the blocks' recomputation counts as backward). The benchmark
/// uses it to put a device synchronisation at the phase boundary.
pub(crate) fn forward_backward_with(
    model: &OpenElm,
    inputs: &Tensor,
    targets: &Tensor,
    spec: LossSpec<'_>,
    checkpoint: bool,
    mut after_forward: impl FnMut(),
) -> corenet_model::Result<LossTerms> {
    if !checkpoint {
        let logits = model.forward_masked(inputs, spec.mask)?; // (B, T, V)
        let terms = spec.loss(&logits, targets);
        after_forward();
        (&terms.total * spec.scale).backward();
        return Ok(detached(terms));
    }
    let embedded = model.embed(inputs)?; // (B, T, C), graph to the embedding
    let mut block_inputs = Vec::with_capacity(model.layers.len());
    let last = tch::no_grad(|| {
        model.layers.iter().fold(embedded.detach(), |x, layer| {
            block_inputs.push(x.shallow_clone());
            layer.forward(&x, model.rope(), spec.mask, None)
        })
    });
    let last = last.detach().set_requires_grad(true);
    let logits = model.head(&last); // (B, T, V)
    let terms = spec.loss(&logits, targets);
    after_forward();
    (&terms.total * spec.scale).backward();
    let mut grad = last.grad();
    for (layer, x) in model.layers.iter().zip(block_inputs).rev() {
        let x = x.set_requires_grad(true);
        let y = layer.forward(&x, model.rope(), spec.mask, None);
        // d(sum(y * g))/dy = g: back-propagates exactly the incoming gradient.
        (y * &grad).sum(Kind::Float).backward();
        grad = x.grad();
    }
    (embedded * &grad).sum(Kind::Float).backward();
    Ok(detached(terms))
}

/// [`forward_backward`] that back-propagates one stage at a time, newest first, and calls
/// `on_stage` as soon as a stage's parameter gradients are final — so a data-parallel run can
/// start reducing them while the earlier blocks are still being differentiated. Without
/// checkpointing every block keeps its graph (memory as in one backward); with it, blocks are
/// recomputed as in [`forward_backward`]. The gradients equal one backward's.
pub(crate) fn forward_backward_staged(
    model: &OpenElm,
    inputs: &Tensor,
    targets: &Tensor,
    spec: LossSpec<'_>,
    checkpoint: bool,
    on_stage: &mut dyn FnMut(Stage) -> Result<()>,
) -> Result<LossTerms> {
    let embedded = model.embed(inputs)?; // (B, T, C), graph to the embedding
    let mut block_inputs = Vec::with_capacity(model.layers.len());
    let mut block_outputs = Vec::with_capacity(model.layers.len());
    let mut x = embedded.detach();
    for layer in &model.layers {
        // Each block starts from a detached leaf, so its graph ends there.
        let input = if checkpoint {
            x
        } else {
            x.set_requires_grad(true)
        };
        let y = if checkpoint {
            tch::no_grad(|| layer.forward(&input, model.rope(), spec.mask, None))
        } else {
            layer.forward(&input, model.rope(), spec.mask, None)
        };
        x = y.detach();
        block_inputs.push(input);
        block_outputs.push(y);
    }
    let last = x.set_requires_grad(true);
    let logits = model.head(&last); // (B, T, V)
    let terms = spec.loss(&logits, targets);
    (&terms.total * spec.scale).backward();
    on_stage(Stage::Head)?;
    let mut grad = last.grad();
    let blocks = model
        .layers
        .iter()
        .zip(block_inputs.into_iter().zip(block_outputs));
    for (i, (layer, (x, y))) in blocks.enumerate().rev() {
        let (x, y) = if checkpoint {
            let x = x.set_requires_grad(true);
            let y = layer.forward(&x, model.rope(), spec.mask, None);
            (x, y)
        } else {
            (x, y)
        };
        // d(sum(y * g))/dy = g: back-propagates exactly the incoming gradient.
        (y * &grad).sum(Kind::Float).backward();
        on_stage(Stage::Block(i))?;
        grad = x.grad();
    }
    (embedded * &grad).sum(Kind::Float).backward();
    on_stage(Stage::Embedding)?;
    Ok(detached(terms))
}

/// Every trainable parameter of `model` (the adapters of a PEFT run) with the stage that
/// finishes its gradient.
pub(crate) fn parameter_stages(model: &OpenElm) -> Vec<(Stage, Tensor)> {
    model
        .trainable_parameters()
        .into_iter()
        .map(|(name, p)| (Stage::of(&name), p))
        .collect()
}

fn detached(terms: LossTerms) -> LossTerms {
    LossTerms {
        total: terms.total.detach(),
        ..terms
    }
}

#[cfg(test)]
mod tests {
    use super::Stage;

    #[test]
    fn parameters_map_to_the_stage_that_finishes_them() {
        assert_eq!(
            Stage::of("transformer.token_embeddings.weight"),
            Stage::Embedding
        );
        assert_eq!(
            Stage::of("transformer.layers.11.attn.qkv_proj.weight"),
            Stage::Block(11)
        );
        assert_eq!(Stage::of("transformer.norm.weight"), Stage::Head);
        assert_eq!(Stage::of("lm_head.weight"), Stage::Head);
    }
}

/// Checkpointed, staged and plain backward against each other.
#[cfg(test)]
#[path = "forward_backward_tests.rs"]
mod equivalence_tests;

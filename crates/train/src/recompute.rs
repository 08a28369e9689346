//! Forward + backward of one micro-batch, optionally with activation checkpointing per block.
//!
//! tch has neither `torch.utils.checkpoint` nor custom autograd functions, so checkpointing is
//! done by hand: the blocks run forward under `no_grad` keeping only each block's input; the
//! head and loss run with autograd from a detached copy of the last activation; then the blocks
//! are re-run one at a time, newest first, each back-propagating the gradient of its output
//! through the graph of that block only. Peak activation memory is one block's graph plus the
//! block inputs (B·T·C per block), instead of every block's graph.

use tch::{Kind, Tensor};

use corenet_model::OpenElm;

use crate::loss::{lm_loss, LossTerms};

/// What one micro-batch's loss function needs.
#[derive(Debug, Clone, Copy)]
pub struct LossSpec {
    pub ignore_index: i64,
    pub z_coef: f64,
    /// Multiplies the loss before backward (1 / accumulation steps).
    pub scale: f64,
}

/// Runs forward and backward, accumulating gradients into the model's parameters.
/// inputs, targets: (B, T) int64. Returns the (detached) loss terms.
pub fn forward_backward(
    model: &OpenElm,
    inputs: &Tensor,
    targets: &Tensor,
    spec: LossSpec,
    checkpoint: bool,
) -> corenet_model::Result<LossTerms> {
    forward_backward_with(model, inputs, targets, spec, checkpoint, || {})
}

/// [`forward_backward`] calling `after_forward` once the loss exists and before any backward
/// work starts (with checkpointing, the blocks' recomputation counts as backward). The benchmark
/// uses it to put a device synchronisation at the phase boundary.
pub fn forward_backward_with(
    model: &OpenElm,
    inputs: &Tensor,
    targets: &Tensor,
    spec: LossSpec,
    checkpoint: bool,
    mut after_forward: impl FnMut(),
) -> corenet_model::Result<LossTerms> {
    if !checkpoint {
        let logits = model.forward(inputs)?; // (B, T, V)
        let terms = lm_loss(&logits, targets, spec.ignore_index, spec.z_coef);
        after_forward();
        (&terms.total * spec.scale).backward();
        return Ok(detached(terms));
    }
    let embedded = model.embed(inputs)?; // (B, T, C), graph to the embedding
    let mut block_inputs = Vec::with_capacity(model.layers.len());
    let last = tch::no_grad(|| {
        model.layers.iter().fold(embedded.detach(), |x, layer| {
            block_inputs.push(x.shallow_clone());
            layer.forward(&x, model.rope(), None)
        })
    });
    let last = last.detach().set_requires_grad(true);
    let logits = model.head(&last); // (B, T, V)
    let terms = lm_loss(&logits, targets, spec.ignore_index, spec.z_coef);
    after_forward();
    (&terms.total * spec.scale).backward();
    let mut grad = last.grad();
    for (layer, x) in model.layers.iter().zip(block_inputs).rev() {
        let x = x.set_requires_grad(true);
        let y = layer.forward(&x, model.rope(), None);
        // d(sum(y * g))/dy = g: back-propagates exactly the incoming gradient.
        (y * &grad).sum(Kind::Float).backward();
        grad = x.grad();
    }
    (embedded * &grad).sum(Kind::Float).backward();
    Ok(detached(terms))
}

fn detached(terms: LossTerms) -> LossTerms {
    LossTerms {
        total: terms.total.detach(),
        ce: terms.ce,
        z_loss: terms.z_loss,
    }
}

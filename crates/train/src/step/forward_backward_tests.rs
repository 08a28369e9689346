//! Activation checkpointing gives the same loss and gradients as the plain backward.

use super::{forward_backward, forward_backward_staged, LossSpec, Stage};
use crate::step::generator;
use corenet_model::{OpenElm, OpenElmConfig};
use tch::{nn, Device, Kind, Tensor};

fn tiny() -> OpenElmConfig {
    OpenElmConfig::miniature(50, 3, 32, 8)
}

const SPEC: LossSpec<'static> = LossSpec {
    preference: None,
    mask: None,
    ignore_index: 49,
    z_coef: 1e-4,
    scale: 0.5,
};

fn model() -> (nn::VarStore, OpenElm) {
    generator::seeded(0, || {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = OpenElm::new(&vs.root(), &tiny()).expect("model");
        (vs, model)
    })
}

fn grads(checkpoint: bool, tokens: &Tensor) -> (f64, Vec<(String, Tensor)>) {
    let (_vs, model) = model();
    let terms = forward_backward(
        &model,
        &tokens.narrow(1, 0, 16),
        &tokens.narrow(1, 1, 16),
        SPEC,
        checkpoint,
    )
    .expect("step");
    let grads = model
        .named_parameters()
        .into_iter()
        .map(|(n, p)| (n, p.grad().copy()))
        .collect();
    (terms.total.double_value(&[]), grads)
}

fn assert_close(grads_a: &[(String, Tensor)], grads_b: &[(String, Tensor)]) {
    assert_eq!(grads_a.len(), grads_b.len());
    for ((name, a), (_, b)) in grads_a.iter().zip(grads_b) {
        assert!(a.defined() && b.defined(), "{name} has no gradient");
        let diff = (a - b).abs().max().double_value(&[]);
        let scale = a.abs().max().double_value(&[]).max(1e-12);
        assert!(
            diff / scale < 1e-5,
            "{name}: relative gradient difference {}",
            diff / scale
        );
    }
}

fn tokens() -> Tensor {
    generator::seeded(1, || {
        Tensor::randint(50, [2, 17], (Kind::Int64, Device::Cpu))
    })
}

#[test]
fn checkpointed_backward_equals_plain_backward() {
    let tokens = tokens();
    let (loss_a, grads_a) = grads(false, &tokens);
    let (loss_b, grads_b) = grads(true, &tokens);
    assert_eq!(loss_a, loss_b);
    assert_close(&grads_a, &grads_b);
}

/// The staged backward (what overlapping the all-reduce relies on) gives the plain backward's
/// gradients, with and without recomputation, and announces each stage once its parameters'
/// gradients are final: what a stage's callback sees equals the end result.
#[test]
fn staged_backward_announces_final_gradients_in_order() {
    let tokens = tokens();
    let (loss_plain, grads_plain) = grads(false, &tokens);
    for checkpoint in [false, true] {
        let (_vs, model) = model();
        let named = model.named_parameters();
        let mut seen: Vec<Stage> = Vec::new();
        let mut at_stage: Vec<(String, Tensor)> = Vec::new();
        let terms = forward_backward_staged(
            &model,
            &tokens.narrow(1, 0, 16),
            &tokens.narrow(1, 1, 16),
            SPEC,
            checkpoint,
            &mut |stage| {
                seen.push(stage);
                for (name, p) in named.iter().filter(|(n, _)| Stage::of(n) == stage) {
                    assert!(p.grad().defined(), "{name} has no gradient at {stage:?}");
                    at_stage.push((name.clone(), p.grad().copy()));
                }
                Ok(())
            },
        )
        .expect("staged step");
        assert_eq!(
            seen,
            [
                Stage::Head,
                Stage::Block(2),
                Stage::Block(1),
                Stage::Block(0),
                Stage::Embedding
            ]
        );
        assert_eq!(terms.total.double_value(&[]), loss_plain);
        assert_eq!(
            at_stage.len(),
            named.len(),
            "every parameter announced once"
        );
        for (name, early) in &at_stage {
            let (_, last) = named.iter().find(|(n, _)| n == name).expect("parameter");
            assert!(early.equal(&last.grad()), "{name} changed after its stage");
        }
        let staged: Vec<(String, Tensor)> = named
            .iter()
            .map(|(n, p)| (n.clone(), p.grad().copy()))
            .collect();
        assert_close(&grads_plain, &staged);
    }
}

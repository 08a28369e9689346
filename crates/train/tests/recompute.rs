//! Activation checkpointing gives the same loss and gradients as the plain backward.

use corenet_model::{OpenElm, OpenElmConfig};
use corenet_train::recompute::{forward_backward, LossSpec};
use tch::{nn, Device, Kind, Tensor};

fn tiny() -> OpenElmConfig {
    OpenElmConfig::miniature(50, 3, 32, 8)
}

fn grads(checkpoint: bool, tokens: &Tensor) -> (f64, Vec<(String, Tensor)>) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = OpenElm::new(&vs.root(), &tiny()).expect("model");
    let spec = LossSpec {
        ignore_index: 49,
        z_coef: 1e-4,
        scale: 0.5,
    };
    let terms = forward_backward(
        &model,
        &tokens.narrow(1, 0, 16),
        &tokens.narrow(1, 1, 16),
        spec,
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

#[test]
fn checkpointed_backward_equals_plain_backward() {
    let tokens = Tensor::randint(50, [2, 17], (Kind::Int64, Device::Cpu));
    let (loss_a, grads_a) = grads(false, &tokens);
    let (loss_b, grads_b) = grads(true, &tokens);
    assert_eq!(loss_a, loss_b);
    for ((name, a), (_, b)) in grads_a.iter().zip(&grads_b) {
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

//! The process-wide kernel choices (`corenet bench --rms-norm … --gqa …`): each selection is
//! honoured, and every combination computes the same model. One test function, because the
//! choices are global to the process and tests in one binary run in parallel.

use corenet_model::attention::native_gqa;
use corenet_model::kernel_choice::{self, GqaKernel, RmsNormKernel};
use corenet_model::OpenElm;
use tch::{nn, Device, Kind, Tensor};

mod common;

/// Logits and the gradient of the token embedding for one fixed batch.
fn run(model: &OpenElm, vs: &nn::VarStore, tokens: &Tensor) -> (Tensor, Tensor) {
    let logits = model.forward(tokens).expect("forward");
    logits.square().sum(Kind::Float).backward();
    let grad = model.token_embeddings.grad().copy();
    vs.variables().values().for_each(|v| {
        v.shallow_clone().zero_grad();
    });
    (logits.detach(), grad)
}

#[test]
fn every_kernel_choice_is_honoured_and_computes_the_same_model() {
    assert_eq!(kernel_choice::rms_norm(), RmsNormKernel::Composite);
    assert_eq!(kernel_choice::gqa(), GqaKernel::Auto);
    assert!(native_gqa(Device::Cpu) && !native_gqa(Device::Cuda(0)));

    let (vs, model) = common::build(&common::tiny(), 3);
    let tokens = Tensor::randint(97, [2, 12], (Kind::Int64, Device::Cpu));
    let (logits, grad) = run(&model, &vs, &tokens);

    for (norm, gqa) in [
        (RmsNormKernel::Native, GqaKernel::Auto),
        (RmsNormKernel::Composite, GqaKernel::RepeatInterleave),
        (RmsNormKernel::Native, GqaKernel::EnableGqa),
    ] {
        kernel_choice::set_rms_norm(norm);
        kernel_choice::set_gqa(gqa);
        assert_eq!(kernel_choice::rms_norm(), norm);
        assert_eq!(native_gqa(Device::Cpu), gqa != GqaKernel::RepeatInterleave);
        assert_eq!(native_gqa(Device::Cuda(0)), gqa == GqaKernel::EnableGqa);
        let (l, g) = run(&model, &vs, &tokens);
        let dl = (&l - &logits).abs().max().double_value(&[]);
        let dg = (&g - &grad).abs().max().double_value(&[]);
        assert!(
            dl < 1e-5 && dg < 1e-4,
            "{norm:?} {gqa:?}: logits {dl}, grad {dg}"
        );
    }
    kernel_choice::set_rms_norm(RmsNormKernel::Composite);
    kernel_choice::set_gqa(GqaKernel::Auto);
}

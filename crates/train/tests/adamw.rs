//! Our AdamW against torch.optim.AdamW (scripts/adamw_reference.py), and its state round trip.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use corenet_model::weights::tensor_from_view;
use corenet_train::optim::adamw::{AdamW, OptimizerConfig};
use tch::{Kind, Tensor};

fn load(path: &Path) -> HashMap<String, Tensor> {
    let bytes = std::fs::read(path).expect("fixture");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("parses");
    file.names()
        .into_iter()
        .map(|n| {
            (
                n.to_string(),
                tensor_from_view(path, n, &file.tensor(n).expect(n)).expect(n),
            )
        })
        .collect()
}

/// Sets `p.grad` to `g` through a dummy backward (tch has no grad setter).
fn set_grad(p: &Tensor, g: &Tensor) {
    let mut grad = p.grad();
    if grad.defined() {
        let _ = grad.zero_();
    }
    (p * g).sum(Kind::Float).backward();
}

fn check(path: &Path) {
    for fused in [true, false] {
        check_path(path, fused);
    }
}

fn check_path(path: &Path, fused: bool) {
    let f = load(path);
    let w = f["init.weight"].copy().set_requires_grad(true);
    let n = f["init.norm"].copy().set_requires_grad(true);
    let named = vec![
        ("w".to_string(), w.shallow_clone()),
        ("n".to_string(), n.shallow_clone()),
    ];
    let config = OptimizerConfig {
        fused,
        ..OptimizerConfig::default()
    };
    let mut opt = AdamW::new(named, &config).expect("optimizer");
    let lrs: Vec<f64> = Vec::<f64>::try_from(&f["lrs"]).expect("lrs");
    for (step, lr) in lrs.iter().enumerate() {
        set_grad(&w, &f[&format!("grad{step}.weight")]);
        set_grad(&n, &f[&format!("grad{step}.norm")]);
        opt.step(*lr, None).expect("step");
    }
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(
        diff(&w, &f["final.weight"]) < 1e-6,
        "weight {}",
        diff(&w, &f["final.weight"])
    );
    assert!(
        diff(&n, &f["final.norm"]) < 1e-6,
        "norm {}",
        diff(&n, &f["final.norm"])
    );
    let state: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    assert!(diff(&state["exp_avg.w"], &f["exp_avg.weight"]) < 1e-7);
    assert!(diff(&state["exp_avg_sq.w"], &f["exp_avg_sq.weight"]) < 1e-7);
}

#[test]
fn three_steps_match_committed_pytorch_fixture() {
    check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adamw_io.safetensors"));
}

fn reference_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [
        root.join(".venv-ref/bin/python"),
        root.join(".venv/bin/python"),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .find(|p| {
        Command::new(p)
            .args(["-c", "import torch, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn three_steps_match_freshly_generated_pytorch_fixture() {
    let Some(python) = reference_python() else {
        assert!(
            std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
            "no importable torch, and CORENET_REQUIRE_REFERENCE is set"
        );
        eprintln!("skipped: no importable torch (run scripts/setup.sh --reference)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/adamw_reference.py");
    let status = Command::new(python)
        .arg(script)
        .args(["--out", &dir.path().to_string_lossy(), "--seed", "11"])
        .status()
        .expect("run script");
    assert!(status.success());
    check(&dir.path().join("adamw_io.safetensors"));
}

#[test]
fn bf16_params_get_f32_master_weights_and_state_round_trips() {
    let p = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu))
        .to_kind(Kind::BFloat16)
        .set_requires_grad(true);
    let mut opt = AdamW::new(
        vec![("p".into(), p.shallow_clone())],
        &OptimizerConfig::default(),
    )
    .expect("opt");
    set_grad(
        &p,
        &Tensor::ones([4, 3], (Kind::BFloat16, tch::Device::Cpu)),
    );
    opt.step(1e-3, None).expect("step");
    let state: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    let master = &state["master.p"];
    assert_eq!(master.kind(), Kind::Float);
    // The model holds the master weights rounded to bf16.
    assert!(p.equal(&master.to_kind(Kind::BFloat16)));

    let q = p.detach().copy().set_requires_grad(true);
    let mut restored = AdamW::new(
        vec![("p".into(), q.shallow_clone())],
        &OptimizerConfig::default(),
    )
    .expect("opt");
    restored
        .load_state(
            state.iter().map(|(k, v)| (k.clone(), v.copy())).collect(),
            opt.step_count(),
        )
        .expect("load");
    let half = || Tensor::full([4, 3], 0.5, (Kind::BFloat16, tch::Device::Cpu));
    set_grad(&p, &half());
    set_grad(&q, &half());
    opt.step(1e-3, None).expect("step");
    restored.step(1e-3, None).expect("step");
    assert!(p.equal(&q), "resumed optimizer diverged");

    let mut wrong = AdamW::new(
        vec![("other".into(), q.shallow_clone())],
        &OptimizerConfig::default(),
    )
    .expect("opt");
    let err = wrong.load_state(state, 1).expect_err("wrong names");
    assert!(err.to_string().contains("exp_avg.other"), "{err}");
}

#[test]
fn clipping_scales_to_max_norm() {
    let p = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let opt = AdamW::new(
        vec![("p".into(), p.shallow_clone())],
        &OptimizerConfig::default(),
    )
    .expect("opt");
    set_grad(
        &p,
        &Tensor::full([2, 2], 3.0, (Kind::Float, tch::Device::Cpu)),
    ); // norm 6
    let norm = opt.clip_grad_norm(1.0).double_value(&[]);
    assert!((norm - 6.0).abs() < 1e-6);
    assert!((opt.grad_norm().double_value(&[]) - 1.0).abs() < 1e-5);
}

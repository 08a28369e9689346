//! The shim's fused kernels against the plain Rust paths: `fused_adamw_step` against
//! `optim::AdamW`, `foreach_grad_norm` against `AdamW::grad_norm`; `zero_grad`'s
//! `set_to_none` through the shim.

use corenet_ffi::{foreach_grad_norm, fused_adamw_step, FusedAdamW};
use corenet_train::optim::adamw::{AdamW, OptimizerConfig};
use tch::{Kind, Tensor};

const SHAPES: &[&[i64]] = &[&[16, 8], &[8], &[4, 3, 5], &[32], &[1, 7]];

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// A leaf parameter with gradients enabled, from `data`.
fn param(data: &Tensor) -> Tensor {
    data.detach().copy().set_requires_grad(true)
}

/// Sets `p.grad()` to `g` (tch has no grad setter: a dummy backward creates the grad first).
fn set_grad(p: &Tensor, g: &Tensor) {
    let mut grad = p.grad();
    if !grad.defined() {
        (p * 0.0).sum(Kind::Float).backward();
        grad = p.grad();
    }
    tch::no_grad(|| grad.copy_(g));
}

#[test]
fn fused_adamw_matches_plain_adamw() {
    tch::manual_seed(7);
    let config = OptimizerConfig {
        weight_decay: 0.1,
        fused: false,
        ..OptimizerConfig::default()
    };
    let init: Vec<Tensor> = SHAPES
        .iter()
        .map(|s| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)))
        .collect();

    // Plain path.
    let plain_params: Vec<Tensor> = init.iter().map(param).collect();
    let named = plain_params
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i}"), p.shallow_clone()))
        .collect();
    let mut plain = AdamW::new(named, &config).expect("valid config");

    // Fused path: the same tensors, split into a decayed (>= 2-D) and an undecayed group.
    let fused_params: Vec<Tensor> = init.iter().map(|t| t.detach().copy()).collect();
    let zeros = |t: &Tensor| Tensor::zeros_like(t);
    let exp_avgs: Vec<Tensor> = fused_params.iter().map(zeros).collect();
    let exp_avg_sqs: Vec<Tensor> = fused_params.iter().map(zeros).collect();
    let steps: Vec<Tensor> = fused_params.iter().map(|_| Tensor::from(0f32)).collect();
    let group = |decay: bool| -> Vec<usize> {
        (0..SHAPES.len())
            .filter(|&i| (SHAPES[i].len() >= 2) == decay)
            .collect()
    };
    let pick = |ts: &[Tensor], idx: &[usize]| -> Vec<Tensor> {
        idx.iter().map(|&i| ts[i].shallow_clone()).collect()
    };

    let lrs = [1e-3, 3e-3, 2e-3, 5e-4, 1e-3];
    for (k, &lr) in lrs.iter().enumerate() {
        let grads: Vec<Tensor> = SHAPES
            .iter()
            .map(|s| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)))
            .collect();
        for (p, g) in plain_params.iter().zip(&grads) {
            set_grad(p, g);
        }
        plain.step(lr, None).expect("step");

        for decay in [true, false] {
            let idx = group(decay);
            let hp = FusedAdamW {
                lr,
                beta1: config.beta1,
                beta2: config.beta2,
                eps: config.eps,
                weight_decay: if decay { config.weight_decay } else { 0.0 },
            };
            fused_adamw_step(
                &pick(&fused_params, &idx),
                &pick(&grads, &idx),
                &pick(&exp_avgs, &idx),
                &pick(&exp_avg_sqs, &idx),
                &pick(&steps, &idx),
                &hp,
                None,
            )
            .expect("fused step");
        }

        let mut worst = 0f64;
        for (i, (a, b)) in plain_params.iter().zip(&fused_params).enumerate() {
            let d = max_abs_diff(a, b);
            assert!(d <= 1e-6, "step {}: param {i} differs by {d}", k + 1);
            worst = worst.max(d);
        }
        eprintln!("step {}: max |plain - fused| = {worst:e}", k + 1);
        for s in &steps {
            assert_eq!(s.double_value(&[]), (k + 1) as f64, "step counters");
        }
    }
    // The moments agree too.
    let state = plain.state_tensors();
    for (name, t) in state {
        let i: usize = name
            .rsplit('p')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("index");
        let other = if name.starts_with("exp_avg_sq.") {
            &exp_avg_sqs[i]
        } else {
            &exp_avgs[i]
        };
        let d = max_abs_diff(&t, other);
        assert!(d <= 1e-6, "{name} differs by {d}");
    }
    // Weight decay really applied (the groups are not accidentally identical).
    assert!(max_abs_diff(&fused_params[0], &init[0]) > 0.0);
}

#[test]
fn fused_adamw_rejects_mismatched_lists() {
    let p = vec![Tensor::zeros([3], (Kind::Float, tch::Device::Cpu))];
    let hp = FusedAdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let err = fused_adamw_step(&p, &[], &p, &p, &[Tensor::from(0f32)], &hp, None)
        .expect_err("lengths differ");
    assert!(err.to_string().contains("grads"), "{err}");
    let err = fused_adamw_step(
        &p,
        &[Tensor::new()],
        &p,
        &p,
        &[Tensor::from(0f32)],
        &hp,
        None,
    )
    .expect_err("undefined grad");
    assert!(err.to_string().contains("undefined"), "{err}");
    let err =
        fused_adamw_step(&p, &p, &p, &p, &[Tensor::from(0i64)], &hp, None).expect_err("int step");
    assert!(err.to_string().contains("f32 scalar"), "{err}");
    let flag = Tensor::from(1i64);
    let err = fused_adamw_step(&p, &p, &p, &p, &[Tensor::from(0f32)], &hp, Some(&flag))
        .expect_err("int found_inf");
    assert!(err.to_string().contains("found_inf"), "{err}");
}

#[test]
fn foreach_norm_equals_plain_norm() {
    tch::manual_seed(3);
    let params: Vec<Tensor> = SHAPES
        .iter()
        .map(|s| param(&Tensor::randn(*s, (Kind::Float, tch::Device::Cpu))))
        .collect();
    let named = params
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i}"), p.shallow_clone()))
        .collect();
    // The per-tensor norm (`fused: true` would itself use `_foreach_norm`).
    let unfused = OptimizerConfig {
        fused: false,
        ..OptimizerConfig::default()
    };
    let plain = AdamW::new(named, &unfused).expect("valid config");
    for p in &params {
        set_grad(
            p,
            &(Tensor::randn(p.size(), (Kind::Float, tch::Device::Cpu)) * 3.0),
        );
    }
    let mut grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
    grads.push(Tensor::new()); // undefined grads are skipped
    let fused = foreach_grad_norm(&grads).expect("norm");
    assert_eq!(fused.kind(), Kind::Float);
    assert_eq!(fused.dim(), 0);
    let a = fused.double_value(&[]);
    let b = plain.grad_norm().double_value(&[]);
    assert!((a - b).abs() <= 1e-5 * b, "foreach {a} vs plain {b}");

    // bf16 gradients are measured in f32.
    let bf: Vec<Tensor> = grads[..2]
        .iter()
        .map(|g| g.to_kind(Kind::BFloat16))
        .collect();
    let want = Tensor::cat(
        &bf.iter()
            .map(|g| g.to_kind(Kind::Float).flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    )
    .norm()
    .double_value(&[]);
    let got = foreach_grad_norm(&bf).expect("bf16 norm").double_value(&[]);
    assert!((got - want).abs() <= 1e-5 * want, "bf16: {got} vs {want}");

    assert_eq!(
        foreach_grad_norm(&[]).expect("empty").double_value(&[]),
        0.0
    );
}

/// Both optimizer paths, two clean steps with a flagged (non-finite) step between them: the
/// flagged step changes no weight, moment or step count, and a zero flag is the same as none.
#[test]
fn a_found_inf_flag_skips_the_update_on_the_device() {
    for fused in [true, false] {
        tch::manual_seed(11);
        let config = OptimizerConfig {
            fused,
            ..OptimizerConfig::default()
        };
        let init: Vec<Tensor> = SHAPES
            .iter()
            .map(|s| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)))
            .collect();
        let grads: Vec<Vec<Tensor>> = (0..3)
            .map(|_| init.iter().map(Tensor::randn_like).collect())
            .collect();
        let build = || {
            let params: Vec<Tensor> = init.iter().map(param).collect();
            let named = params
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("p{i}"), p.shallow_clone()))
                .collect();
            (params, AdamW::new(named, &config).expect("valid config"))
        };
        let (flagged_params, mut flagged) = build();
        let (plain_params, mut plain) = build();
        let set = |params: &[Tensor], k: usize| {
            for (p, g) in params.iter().zip(&grads[k]) {
                set_grad(p, g);
            }
        };
        let (zero, one) = (Tensor::from(0f32), Tensor::from(1f32));

        set(&flagged_params, 0);
        flagged.step(1e-2, Some(&zero)).expect("step");
        let before: Vec<Tensor> = flagged_params.iter().map(Tensor::copy).collect();
        let state_before = flagged.state_tensors();
        let state_before: Vec<Tensor> = state_before.iter().map(|(_, t)| t.copy()).collect();
        set(&flagged_params, 1);
        flagged.step(1e-2, Some(&one)).expect("skipped step");
        for (i, (a, b)) in flagged_params.iter().zip(&before).enumerate() {
            assert_eq!(
                max_abs_diff(a, b),
                0.0,
                "fused={fused}: p{i} moved on a skipped step"
            );
        }
        for ((name, a), b) in flagged.state_tensors().iter().zip(&state_before) {
            assert_eq!(max_abs_diff(a, b), 0.0, "fused={fused}: {name} moved");
        }
        assert_eq!(
            flagged.step_count(),
            1,
            "fused={fused}: a skip is not counted"
        );
        set(&flagged_params, 2);
        flagged.step(1e-2, Some(&zero)).expect("step");

        // The same updates without the skipped one.
        set(&plain_params, 0);
        plain.step(1e-2, None).expect("step");
        set(&plain_params, 2);
        plain.step(1e-2, None).expect("step");
        assert_eq!(plain.step_count(), 2);
        assert_eq!(flagged.step_count(), 2);
        for (i, (a, b)) in flagged_params.iter().zip(&plain_params).enumerate() {
            assert_eq!(max_abs_diff(a, b), 0.0, "fused={fused}: p{i} differs");
        }
    }
}

#[test]
fn zero_grad_drops_gradients_and_the_next_backward_writes_them_afresh() {
    let w = param(&Tensor::from_slice(&[1f32, 2.0, 3.0]));
    let unused = param(&Tensor::from_slice(&[5f32]));
    let named = vec![
        ("w".to_string(), w.shallow_clone()),
        ("unused".to_string(), unused.shallow_clone()),
    ];
    let adamw = AdamW::new(named, &OptimizerConfig::default()).expect("valid config");
    let backward = |scale: f64| (&w * &w * scale).sum(Kind::Float).backward();
    let grad = || Vec::<f32>::try_from(w.grad()).expect("f32 gradient");

    backward(1.0);
    backward(1.0);
    assert_eq!(grad(), [4.0, 8.0, 12.0], "two backwards accumulate");
    let held = w.grad();
    // `unused` has no gradient at all: clearing it is not an error.
    adamw.zero_grad().expect("clear gradients");
    assert!(!w.grad().defined(), "the gradient is dropped, not zeroed");
    assert_eq!(
        Vec::<f32>::try_from(&held).expect("f32"),
        [4.0, 8.0, 12.0],
        "a tensor held elsewhere keeps its values"
    );
    backward(3.0);
    assert_eq!(grad(), [6.0, 12.0, 18.0], "the next backward starts afresh");
    assert!(!unused.grad().defined());
}

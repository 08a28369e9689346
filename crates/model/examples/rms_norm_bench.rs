//! RMSNorm speed: libtorch's native `rms_norm` against the composite, forward + backward, on
//! the shapes a model's norms see, in f32 and bf16. Prints one line per case (median of the
//! repetitions, the two implementations interleaved so machine contention hits both alike).
//!
//! `cargo run --release -p corenet-model --example rms_norm_bench -- [REPS] [THREADS]`

use std::time::Instant;

use corenet_model::norm::RmsNorm;
use tch::{nn, Device, Kind, Tensor};

fn step(norm: &RmsNorm, x: &Tensor, native: bool) -> f64 {
    let t0 = Instant::now();
    let x = x.detach().set_requires_grad(true);
    let y = if native {
        norm.forward_native(&x)
    } else {
        norm.forward_composite(&x)
    };
    y.sum(Kind::Float).backward();
    t0.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    if let Some(threads) = std::env::args().nth(2).and_then(|s| s.parse().ok()) {
        tch::set_num_threads(threads);
    }
    println!("threads {}", tch::get_num_threads());
    // (B, T, C) of a block norm and (B, H, T, D) of a q/k norm, tiny and 270M-like widths.
    let shapes: [&[i64]; 4] = [
        &[8, 256, 192],
        &[8, 6, 256, 32],
        &[4, 256, 1280],
        &[4, 20, 256, 64],
    ];
    for kind in [Kind::Float, Kind::BFloat16] {
        for shape in shapes {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let c = *shape.last().unwrap_or(&1) as usize;
            let norm = RmsNorm::new(&vs.root(), c);
            if kind == Kind::BFloat16 {
                vs.bfloat16();
            }
            let x = Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind);
            for _ in 0..10 {
                step(&norm, &x, true);
                step(&norm, &x, false);
            }
            let (mut native, mut composite) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                native.push(step(&norm, &x, true));
                composite.push(step(&norm, &x, false));
            }
            let (n, c) = (median(native), median(composite));
            println!(
                "{kind:?} {shape:?}: native {:.1} us, composite {:.1} us, native/composite {:.3}",
                n * 1e6,
                c * 1e6,
                n / c
            );
        }
    }
}

//! Rotary position embeddings, rotate-half layout (GPT-NeoX / HF LLaMA), over the full head dim.

use tch::{Device, Kind, Tensor};

/// cos/sin tables (P, D) in f32 for P = `rope_max_length` positions; longer sequences get
/// tables built on the fly (CoreNet grows its cache the same way).
#[derive(Debug)]
pub struct Rope {
    head_dim: usize,
    base: f64,
    cos: Tensor,
    sin: Tensor,
}

fn build_tables(head_dim: usize, base: f64, positions: usize, device: Device) -> (Tensor, Tensor) {
    let opts = (Kind::Float, device);
    // inv_freq_j = base^(-2j/D), j = 0..D/2, in f32 as CoreNet computes it.
    let exponents = Tensor::arange_start_step(0, head_dim as i64, 2, opts) / head_dim as f64;
    let inv_freq = Tensor::from(base as f32)
        .to_device(device)
        .pow(&exponents)
        .reciprocal();
    let pos = Tensor::arange(positions as i64, opts);
    let angles = pos.outer(&inv_freq); // (P, D/2)
    let angles = Tensor::cat(&[&angles, &angles], -1); // (P, D): [theta, theta]
    (angles.cos(), angles.sin())
}

impl Rope {
    pub fn new(head_dim: usize, base: f64, max_positions: usize, device: Device) -> Self {
        let (cos, sin) = build_tables(head_dim, base, max_positions, device);
        Rope {
            head_dim,
            base,
            cos,
            sin,
        }
    }

    /// x: (B, H, T, D) at absolute positions offset..offset+T -> same shape and dtype.
    /// Rotated in f32 and cast back, as CoreNet does.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Tensor {
        let seq = x.size()[2];
        let (cos, sin) = self.tables(offset as i64, seq, x.device());
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let half = (self.head_dim / 2) as i64;
        let x1 = xf.narrow(-1, 0, half);
        let x2 = xf.narrow(-1, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
        (xf * cos + rotated * sin).to_kind(kind)
    }

    /// (T, D) cos and sin for positions offset..offset+T.
    fn tables(&self, offset: i64, seq: i64, device: Device) -> (Tensor, Tensor) {
        let end = offset + seq;
        if end <= self.cos.size()[0] && self.cos.device() == device {
            return (
                self.cos.narrow(0, offset, seq),
                self.sin.narrow(0, offset, seq),
            );
        }
        let (cos, sin) = build_tables(self.head_dim, self.base, end as usize, device);
        (cos.narrow(0, offset, seq), sin.narrow(0, offset, seq))
    }
}

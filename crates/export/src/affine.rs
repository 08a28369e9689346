//! MLX's affine quantization, in the layout mlx-lm loads: each row of a weight matrix is cut
//! into groups of `group_size`; a group stores `scale` and `bias` (in the folder's float type)
//! and one `bits`-wide code per weight, `w ≈ scale * code + bias`; codes are packed
//! little-end first into `uint32` words (8 per word at 4 bits, 4 at 8 bits), so a `[R, C]`
//! matrix becomes `weight` `[R, C * bits / 32]`, `scales` and `biases` `[R, C / group_size]`.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::options::Quantization;

/// One quantized matrix.
pub struct AffineQuantized {
    /// `[R, C * bits / 32]` packed codes.
    pub packed: Vec<u32>,
    pub packed_shape: [usize; 2],
    /// `[R, C / group_size]` in the storage float type.
    pub scales: Tensor,
    pub biases: Tensor,
}

/// Checks that a `[R, C]` matrix can be quantized with `q` (the error names the tensor).
pub fn check_shape(name: &str, shape: &[i64], q: Quantization) -> Result<()> {
    let columns = match shape {
        [_, c] => *c,
        _ => {
            return Err(Error::Tensor {
                tensor: name.to_string(),
                shape: shape.to_vec(),
                reason: "only matrices are quantized".into(),
            })
        }
    };
    if columns % q.group_size as i64 != 0 {
        return Err(Error::Tensor {
            tensor: name.to_string(),
            shape: shape.to_vec(),
            reason: format!(
                "its width {columns} is not a multiple of --group-size {}; pick a group size that divides it",
                q.group_size
            ),
        });
    }
    Ok(())
}

/// Quantizes the `[R, C]` matrix `w`; scales and biases are stored as `store` and the codes are
/// chosen against those stored values, so that dequantizing what is written is as close as the
/// storage allows.
pub fn quantize(name: &str, w: &Tensor, q: Quantization, store: Kind) -> Result<AffineQuantized> {
    let shape = w.size();
    check_shape(name, &shape, q)?;
    let (rows, cols) = (shape[0], shape[1]);
    let g = q.group_size as i64;
    let levels = f64::from((1u32 << q.bits) - 1);
    // (R, C/g, g)
    let groups = w
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .view([rows, cols / g, g]);
    let low = groups.amin([-1].as_slice(), true);
    let high = groups.amax([-1].as_slice(), true);
    let range = &high - &low;
    // A constant group has range 0: any scale reproduces it (every code is 0).
    let scale = Tensor::ones_like(&range).where_self(&range.eq(0.0), &(&range / levels));
    let scale = scale.to_kind(store).to_kind(Kind::Float);
    let bias = low.to_kind(store).to_kind(Kind::Float);
    let codes = ((&groups - &bias) / &scale)
        .round()
        .clamp(0.0, levels)
        .to_kind(Kind::Int64)
        .view([rows, cols]);
    let per_word = i64::from(32 / q.bits);
    // Code k of a word is shifted left by k * bits: multiplied by 2^(k * bits).
    let place: Vec<i64> = (0..per_word)
        .map(|k| 1i64 << (k * i64::from(q.bits)))
        .collect();
    let place = Tensor::from_slice(&place);
    // (R, C/per_word, per_word) codes shifted into place, summed into one word each.
    let words = (codes.view([rows, cols / per_word, per_word]) * place.view([1, 1, per_word]))
        .sum_dim_intlist([-1].as_slice(), false, Kind::Int64);
    let words = Vec::<i64>::try_from(words.view([-1]))?;
    let packed = words.into_iter().map(|w| w as u32).collect();
    Ok(AffineQuantized {
        packed,
        packed_shape: [rows as usize, (cols / per_word) as usize],
        scales: scale.view([rows, cols / g]).to_kind(store),
        biases: bias.view([rows, cols / g]).to_kind(store),
    })
}

/// The `[R, C]` f32 matrix a quantized one stands for (what MLX computes with).
pub fn dequantize(aq: &AffineQuantized, q: Quantization) -> Result<Tensor> {
    let [rows, words] = aq.packed_shape;
    let per_word = 32 / q.bits as usize;
    let cols = words * per_word;
    let mask = (1u32 << q.bits) - 1;
    let codes: Vec<f32> = aq
        .packed
        .iter()
        .flat_map(|&w| (0..per_word).map(move |k| ((w >> (k as u32 * q.bits)) & mask) as f32))
        .collect();
    let g = q.group_size as i64;
    let codes = Tensor::from_slice(&codes).view([rows as i64, cols as i64 / g, g]);
    let scales = aq.scales.to_kind(Kind::Float).unsqueeze(-1);
    let biases = aq.biases.to_kind(Kind::Float).unsqueeze(-1);
    Ok((codes * scales + biases).view([rows as i64, cols as i64]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(bits: u32, group_size: usize) -> Quantization {
        Quantization { bits, group_size }
    }

    #[test]
    fn codes_are_packed_low_bits_first() {
        // One row, one group of 32 at 4 bits: codes 0..15 twice.
        let w = Tensor::arange(32, (Kind::Float, Device::Cpu))
            .remainder(16.0)
            .view([1, 32]);
        let aq = quantize("w", &w, q(4, 32), Kind::Float).expect("quantize");
        assert_eq!(aq.packed_shape, [1, 4]);
        assert_eq!(aq.packed[0], 0x7654_3210);
        assert_eq!(aq.packed[1], 0xfedc_ba98);
        let back = dequantize(&aq, q(4, 32)).expect("dequantize");
        assert!(back.allclose(&w, 0.0, 1e-6, false));
    }

    #[test]
    fn the_error_is_within_half_a_step_of_each_group() {
        tch::manual_seed(0);
        let w = Tensor::randn([8, 128], (Kind::Float, Device::Cpu));
        for (bits, group) in [(4, 32), (4, 64), (8, 64), (8, 128)] {
            let aq = quantize("w", &w, q(bits, group), Kind::Float).expect("quantize");
            let back = dequantize(&aq, q(bits, group)).expect("dequantize");
            let groups = w.view([8, -1, group as i64]);
            let step = (groups.amax([-1].as_slice(), true) - groups.amin([-1].as_slice(), true))
                / f64::from((1u32 << bits) - 1);
            let err = (back.view([8, -1, group as i64]) - &groups).abs();
            let worst = (err - step * 0.5001).max().double_value(&[]);
            assert!(worst <= 1e-6, "{bits} bits, group {group}: {worst}");
        }
    }

    #[test]
    fn a_width_the_group_does_not_divide_is_refused_naming_the_tensor() {
        let err = check_shape(
            "transformer.layers.0.ffn.proj_2.weight",
            &[64, 96],
            q(4, 64),
        )
        .expect_err("96 % 64");
        let text = err.to_string();
        assert!(text.contains("proj_2") && text.contains("96"), "{text}");
        check_shape("x", &[64, 128], q(4, 64)).expect("128 % 64");
    }
}

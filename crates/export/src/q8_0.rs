//! llama.cpp's `Q8_0`: blocks of 32 consecutive weights along a row, each block an f16 scale
//! `d = max|x| / 127` followed by 32 signed bytes `round(x / d)` (34 bytes a block). Rounding is
//! half away from zero, as llama.cpp's reference quantizer (and the `gguf` package) rounds.

use tch::{Device, Kind, Tensor};

/// Weights per block.
pub const BLOCK: i64 = 32;
/// Bytes per block: the f16 scale and 32 codes.
pub const BLOCK_BYTES: usize = 34;

/// The Q8_0 bytes of `w` (any shape whose element count is a multiple of 32, rows contiguous).
pub fn quantize_q8_0(w: &Tensor) -> crate::error::Result<Vec<u8>> {
    // (N, 32) blocks, f32 like the reference.
    let blocks = w
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .contiguous()
        .view([-1, BLOCK]);
    let d = blocks.abs().amax([-1].as_slice(), true) / 127.0;
    let inverse = Tensor::zeros_like(&d).where_self(&d.eq(0.0), &d.reciprocal());
    let codes = round_half_away(&(&blocks * &inverse)).to_kind(Kind::Int8);
    let scales = d.to_kind(Kind::Half).view([-1]);
    let n = scales.size()[0] as usize;
    let mut scale_bytes = vec![0u8; n * 2];
    scales.f_copy_data_u8(&mut scale_bytes, n)?;
    let mut code_bytes = vec![0u8; n * BLOCK as usize];
    codes.f_copy_data_u8(&mut code_bytes, n * BLOCK as usize)?;
    let mut out = Vec::with_capacity(n * BLOCK_BYTES);
    for (scale, block) in scale_bytes
        .chunks_exact(2)
        .zip(code_bytes.chunks_exact(BLOCK as usize))
    {
        out.extend_from_slice(scale);
        out.extend_from_slice(block);
    }
    Ok(out)
}

/// Rounds half away from zero without the `floor(x + 0.5)` error near 0.5: the integer part plus
/// whether the fraction reaches one half, computed exactly in f32.
fn round_half_away(x: &Tensor) -> Tensor {
    let a = x.abs();
    let whole = a.floor();
    let up = ((&a - &whole) * 2.0).floor();
    x.sign() * (whole + up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_its_scale_then_its_codes() {
        let mut values = vec![0.0f32; 32];
        values[0] = 127.0;
        values[1] = -63.5; // a tie: away from zero gives -64
        values[2] = 1.49;
        let bytes = quantize_q8_0(&Tensor::from_slice(&values)).expect("q8_0");
        assert_eq!(bytes.len(), BLOCK_BYTES);
        assert_eq!(
            u16::from_le_bytes([bytes[0], bytes[1]]),
            0x3c00,
            "d = 1.0 in f16"
        );
        assert_eq!(bytes[2] as i8, 127);
        assert_eq!(bytes[3] as i8, -64);
        assert_eq!(bytes[4] as i8, 1);
        assert!(bytes[5..].iter().all(|&b| b == 0));
    }

    #[test]
    fn an_all_zero_block_has_scale_zero() {
        let bytes = quantize_q8_0(&Tensor::zeros([64], (Kind::Float, Device::Cpu))).expect("q8_0");
        assert_eq!(bytes.len(), 2 * BLOCK_BYTES);
        assert!(bytes.iter().all(|&b| b == 0));
    }
}

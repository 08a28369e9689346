//! An MLX folder for `mlx_lm.load`: the HF layout (config, tokenizer files) with weights in
//! `{"format": "mlx"}` safetensors. Quantized, every matrix (projections and the embedding,
//! which mlx-lm then also uses as the output layer) is stored as packed codes plus `scales`
//! and `biases` ([`crate::affine`]), and `config.json` carries mlx-lm's `quantization` block;
//! norms stay in the float type.

use std::path::Path;

use corenet_model::hf::WEIGHTS_FILE;
use corenet_model::{write_safetensors, OpenElmConfig, RawTensor};
use safetensors::Dtype;
use serde_json::json;
use tch::Tensor;

use crate::affine::{check_shape, quantize};
use crate::error::Result;
use crate::hf_folder::write_configs;
use crate::options::{FloatType, Quantization};
use crate::shipped_tokenizer::ShippedTokenizer;

/// Whether a tensor is quantized: every matrix.
fn quantized(t: &Tensor) -> bool {
    t.dim() == 2
}

/// Checks every matrix against the group size, before anything is written.
pub fn check_quantization(tensors: &[(String, Tensor)], q: Quantization) -> Result<()> {
    for (name, t) in tensors.iter().filter(|(_, t)| quantized(t)) {
        check_shape(name, &t.size(), q)?;
    }
    Ok(())
}

/// Writes the MLX folder's files into `dir` (a staging folder the caller seals).
pub fn write_mlx_folder(
    dir: &Path,
    config: &OpenElmConfig,
    tensors: &[(String, Tensor)],
    float: FloatType,
    quantization: Option<Quantization>,
    tokenizer: &ShippedTokenizer,
) -> Result<()> {
    let path = dir.join(WEIGHTS_FILE);
    let mut raw = Vec::new();
    for (name, t) in tensors {
        match quantization.filter(|_| quantized(t)) {
            Some(q) => raw.extend(quantized_entries(name, t, q, float, &path)?),
            None => raw.push(RawTensor::from_tensor(
                name,
                &t.to_kind(float.kind()),
                &path,
            )?),
        }
    }
    write_safetensors(&raw, "mlx", &path)?;
    let mut extra = serde_json::Map::new();
    if let Some(q) = quantization {
        let block = json!({ "group_size": q.group_size, "bits": q.bits, "mode": "affine" });
        extra.insert("quantization".into(), block.clone());
        extra.insert("quantization_config".into(), block);
    }
    write_configs(dir, config, float, tokenizer, extra)
}

/// `p.weight` (packed `uint32`), `p.scales` and `p.biases` for the matrix `p.weight`.
fn quantized_entries(
    name: &str,
    t: &Tensor,
    q: Quantization,
    float: FloatType,
    path: &Path,
) -> Result<Vec<RawTensor>> {
    let aq = quantize(name, t, q, float.kind())?;
    let prefix = name.strip_suffix(".weight").unwrap_or(name);
    let packed = RawTensor {
        name: name.to_string(),
        dtype: Dtype::U32,
        shape: aq.packed_shape.to_vec(),
        data: aq.packed.iter().flat_map(|w| w.to_le_bytes()).collect(),
    };
    Ok(vec![
        packed,
        RawTensor::from_tensor(&format!("{prefix}.scales"), &aq.scales, path)?,
        RawTensor::from_tensor(&format!("{prefix}.biases"), &aq.biases, path)?,
    ])
}

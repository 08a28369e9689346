//! One GGUF file for llama.cpp's `openelm` architecture: per-layer head counts and FFN widths
//! as arrays, the fused QKV projection as it is, the fused `proj_1` split into `ffn_gate` and
//! `ffn_up` (gate first, as the model computes `silu(gate) * up`), norms in f32, and the
//! tokenizer embedded ([`crate::gguf_vocab`]). llama.cpp's OpenELM always ties the output layer
//! to the embedding, normalizes q and k and uses SwiGLU; other models are refused.

use std::path::Path;

use gguf_rs_lib::builder::gguf_builder::GGUFBuilder;
use gguf_rs_lib::format::metadata::{MetadataArray, MetadataValue};
use gguf_rs_lib::format::types::{GGUFTensorType, GGUFValueType};
use tch::{Kind, Tensor};

use corenet_model::{OpenElmConfig, RawTensor};

use crate::error::{Error, Result};
use crate::gguf_vocab::vocab_metadata;
use crate::options::GgufType;
use crate::q8_0::{quantize_q8_0, BLOCK};
use crate::shipped_tokenizer::ShippedTokenizer;

const ARCH: &str = "openelm";
/// CoreNet's RMSNorm epsilon (llama.cpp reads it from the file).
const RMS_EPS: f32 = 1e-6;

/// One tensor as the file stores it.
pub struct GgufTensor {
    pub name: String,
    /// GGUF order: the contiguous dimension first.
    pub dims: Vec<u64>,
    pub kind: GGUFTensorType,
    pub source: Tensor,
}

/// Maps the HF tensors onto llama.cpp's names and types, checking everything a write could
/// fail on before it starts.
pub fn plan_gguf(
    config: &OpenElmConfig,
    tensors: &[(String, Tensor)],
    ty: GgufType,
) -> Result<Vec<GgufTensor>> {
    check_architecture(config)?;
    let ffn: Vec<i64> = config.layers()?.iter().map(|l| l.ffn_dim as i64).collect();
    let mut plan = Vec::new();
    for (name, t) in tensors {
        for (gguf_name, part) in gguf_names(name, t, &ffn)? {
            let kind = storage(&gguf_name, &part, ty)?;
            let dims = part.size().iter().rev().map(|&d| d as u64).collect();
            plan.push(GgufTensor {
                name: gguf_name,
                dims,
                kind,
                source: part,
            });
        }
    }
    Ok(plan)
}

fn check_architecture(config: &OpenElmConfig) -> Result<()> {
    let refuse = |reason: &str| {
        Err(Error::Unsupported {
            format: "gguf",
            reason: format!("llama.cpp's openelm {reason}"),
        })
    };
    if !config.share_input_output_layers {
        return refuse("ties the output layer to the embedding; this model has its own (share_input_output_layers: false)");
    }
    if !config.normalize_qk_projections {
        return refuse("normalizes q and k; this model does not (normalize_qk_projections: false)");
    }
    if !config.ffn_with_glu {
        return refuse("uses a gated FFN; this model does not (ffn_with_glu: false)");
    }
    Ok(())
}

/// llama.cpp's name(s) for an HF tensor, splitting `proj_1` into gate and up.
fn gguf_names(name: &str, t: &Tensor, ffn: &[i64]) -> Result<Vec<(String, Tensor)>> {
    let one = |n: &str| Ok(vec![(n.to_string(), t.shallow_clone())]);
    match name {
        "transformer.token_embeddings.weight" => return one("token_embd.weight"),
        "transformer.norm.weight" => return one("output_norm.weight"),
        _ => {}
    }
    let unknown = || Error::Unsupported {
        format: "gguf",
        reason: format!("tensor `{name}` has no llama.cpp name"),
    };
    let rest = name
        .strip_prefix("transformer.layers.")
        .ok_or_else(unknown)?;
    let (layer, part) = rest.split_once('.').ok_or_else(unknown)?;
    let i: usize = layer.parse().map_err(|_| unknown())?;
    let blk = |n: &str| format!("blk.{i}.{n}.weight");
    let mapped = match part {
        "attn_norm.weight" => blk("attn_norm"),
        "attn.qkv_proj.weight" => blk("attn_qkv"),
        "attn.q_norm.weight" => blk("attn_q_norm"),
        "attn.k_norm.weight" => blk("attn_k_norm"),
        "attn.out_proj.weight" => blk("attn_output"),
        "ffn_norm.weight" => blk("ffn_norm"),
        "ffn.proj_2.weight" => blk("ffn_down"),
        "ffn.proj_1.weight" => {
            let f = *ffn.get(i).ok_or_else(unknown)?;
            return Ok(vec![
                (blk("ffn_gate"), t.narrow(0, 0, f)),
                (blk("ffn_up"), t.narrow(0, f, f)),
            ]);
        }
        _ => return Err(unknown()),
    };
    Ok(vec![(mapped, t.shallow_clone())])
}

/// Norms (vectors) stay f32; matrices take the requested type.
fn storage(name: &str, t: &Tensor, ty: GgufType) -> Result<GGUFTensorType> {
    if t.dim() < 2 {
        return Ok(GGUFTensorType::F32);
    }
    Ok(match ty {
        GgufType::F32 => GGUFTensorType::F32,
        GgufType::F16 => GGUFTensorType::F16,
        GgufType::Q8_0 => {
            let width = *t.size().last().unwrap_or(&0);
            if width % BLOCK != 0 {
                return Err(Error::Tensor {
                    tensor: name.to_string(),
                    shape: t.size(),
                    reason: format!(
                        "its width {width} is not a multiple of Q8_0's block of {BLOCK}"
                    ),
                });
            }
            GGUFTensorType::Q8_0
        }
    })
}

/// The model's hyper-parameters under llama.cpp's `openelm.*` keys.
pub fn model_metadata(
    config: &OpenElmConfig,
    ty: GgufType,
    name: &str,
) -> Result<Vec<(String, MetadataValue)>> {
    let layers = config.layers()?;
    let per_layer = |f: fn(&corenet_model::LayerDims) -> usize| -> Result<MetadataValue> {
        let values = layers
            .iter()
            .map(|l| MetadataValue::I32(f(l) as i32))
            .collect();
        let array = MetadataArray::new(GGUFValueType::I32, values).map_err(|e| Error::Gguf {
            path: Default::default(),
            message: e.to_string(),
        })?;
        Ok(MetadataValue::Array(Box::new(array)))
    };
    let u32_of = |v: usize| MetadataValue::U32(v as u32);
    let file_type = match ty {
        GgufType::F32 => 0,
        GgufType::F16 => 1,
        GgufType::Q8_0 => 7,
    };
    let key = |k: &str| format!("{ARCH}.{k}");
    Ok(vec![
        (
            "general.architecture".into(),
            MetadataValue::String(ARCH.into()),
        ),
        ("general.name".into(), MetadataValue::String(name.into())),
        ("general.file_type".into(), MetadataValue::U32(file_type)),
        (key("context_length"), u32_of(config.max_context_length)),
        (key("embedding_length"), u32_of(config.model_dim)),
        (key("block_count"), u32_of(config.num_transformer_layers)),
        (key("feed_forward_length"), per_layer(|l| l.ffn_dim)?),
        (key("attention.head_count"), per_layer(|l| l.query_heads)?),
        (key("attention.head_count_kv"), per_layer(|l| l.kv_heads)?),
        (key("attention.key_length"), u32_of(config.head_dim)),
        (key("attention.value_length"), u32_of(config.head_dim)),
        (
            key("attention.layer_norm_rms_epsilon"),
            MetadataValue::F32(RMS_EPS),
        ),
        (key("rope.dimension_count"), u32_of(config.head_dim)),
        (
            key("rope.freq_base"),
            MetadataValue::F32(config.rope_freq_constant as f32),
        ),
    ])
}

/// Writes the planned tensors and all metadata to `path` (a staging file the caller renames).
pub fn write_gguf(
    path: &Path,
    config: &OpenElmConfig,
    plan: Vec<GgufTensor>,
    ty: GgufType,
    tokenizer: &ShippedTokenizer,
    name: &str,
) -> Result<()> {
    let gguf_err = |e: gguf_rs_lib::GGUFError| Error::Gguf {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut builder = GGUFBuilder::new();
    let metadata = model_metadata(config, ty, name)?
        .into_iter()
        .chain(vocab_metadata(tokenizer, config.vocab_size)?);
    for (key, value) in metadata {
        builder = builder.add_metadata(key, value);
    }
    for t in plan {
        let data = tensor_bytes(&t, path)?;
        builder = builder
            .add_tensor(t.name, t.dims, t.kind, data)
            .map_err(gguf_err)?;
    }
    builder.build_to_file(path).map_err(gguf_err)?;
    Ok(())
}

fn tensor_bytes(t: &GgufTensor, path: &Path) -> Result<Vec<u8>> {
    let raw = |kind: Kind| -> Result<Vec<u8>> {
        Ok(RawTensor::from_tensor(&t.name, &t.source.to_kind(kind), path)?.data)
    };
    match t.kind {
        GGUFTensorType::F16 => raw(Kind::Half),
        GGUFTensorType::Q8_0 => quantize_q8_0(&t.source),
        _ => raw(Kind::Float),
    }
}

//! What an export is asked for: the format, the storage type of the weights, quantization. All
//! combinations are checked here, before a model is loaded or a byte written.

use crate::error::{Error, Result};

/// The target format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A Hugging Face folder: weights, config, tokenizer files and our modeling code.
    Hf,
    /// An MLX folder for `mlx_lm`: the HF layout with `{"format": "mlx"}` weights, optionally
    /// quantized (packed `uint32` weights with per-group scales and biases).
    Mlx,
    /// One GGUF file for llama.cpp, tokenizer embedded.
    Gguf,
    /// A PEFT checkpoint's adapters alone, in HF PEFT's layout (`adapter_config.json`,
    /// `adapter_model.safetensors`) for `PeftModel.from_pretrained` on the base's HF export.
    Peft,
}

/// Floating-point storage of the weights (HF and MLX folders).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    pub fn kind(self) -> tch::Kind {
        match self {
            FloatType::F32 => tch::Kind::Float,
            FloatType::F16 => tch::Kind::Half,
            FloatType::Bf16 => tch::Kind::BFloat16,
        }
    }

    /// The name `config.json`'s `torch_dtype` uses.
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::Bf16 => "bfloat16",
        }
    }
}

/// MLX affine quantization: `bits` per weight, one scale and bias per `group_size` weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantization {
    pub bits: u32,
    pub group_size: usize,
}

/// GGUF tensor types: all f32, f16 matrices, or llama.cpp's 8-bit blocks of 32 (`Q8_0`); norms
/// stay f32 in every case, as llama.cpp's own converter keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
}

/// One export request.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    /// Keep only the first N embedding rows (e.g. 32000, the LLaMA tokenizer's ids).
    pub vocab_size: Option<usize>,
    /// HF and MLX only; f32 unless given (f16 for a quantized MLX export, as mlx_lm.convert).
    pub dtype: Option<FloatType>,
    /// MLX only.
    pub quantization: Option<Quantization>,
    /// GGUF only; f32 unless given.
    pub gguf_type: Option<GgufType>,
    /// A PEFT checkpoint's adapters are folded into the base weights (hf, mlx, gguf).
    pub merge_adapters: bool,
    /// A PEFT checkpoint's base weights, when not at the folder its `adapters.json` names.
    pub base: Option<std::path::PathBuf>,
}

impl ExportOptions {
    /// `format` with every other option at its default.
    pub fn new(format: Format) -> Self {
        ExportOptions {
            format,
            vocab_size: None,
            dtype: None,
            quantization: None,
            gguf_type: None,
            merge_adapters: false,
            base: None,
        }
    }

    /// Checks that every option given applies to the format and is in range.
    pub fn validate(&self) -> Result<()> {
        let only = |key: &str, format: &str| {
            Error::option(key, format!("applies to --format {format} only"))
        };
        if self.quantization.is_some() && self.format != Format::Mlx {
            return Err(only("quantize", "mlx"));
        }
        if self.gguf_type.is_some() && self.format != Format::Gguf {
            return Err(only("type", "gguf"));
        }
        if self.dtype.is_some() && self.format == Format::Gguf {
            return Err(Error::option(
                "dtype",
                "a GGUF export takes --type f32|f16|q8_0 instead",
            ));
        }
        if let Some(q) = self.quantization {
            if !matches!(q.bits, 4 | 8) {
                return Err(Error::option(
                    "quantize",
                    format!(
                        "{} bits: mlx-lm's affine layout is used with 4 or 8",
                        q.bits
                    ),
                ));
            }
            if !matches!(q.group_size, 32 | 64 | 128) {
                return Err(Error::option(
                    "group-size",
                    format!("{}: MLX quantizes in groups of 32, 64 or 128", q.group_size),
                ));
            }
        }
        if self.format == Format::Peft && self.merge_adapters {
            return Err(Error::option(
                "merge-adapters",
                "--format peft writes the adapters unmerged",
            ));
        }
        if self.vocab_size == Some(0) {
            return Err(Error::option("vocab-size", "must be at least 1"));
        }
        Ok(())
    }

    /// The storage type of floating-point weights in an HF or MLX folder.
    pub fn float_type(&self) -> FloatType {
        match (self.dtype, self.quantization) {
            (Some(t), _) => t,
            (None, Some(_)) => FloatType::F16,
            (None, None) => FloatType::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_of_another_format_are_refused_naming_the_option() {
        let mut o = ExportOptions::new(Format::Hf);
        o.quantization = Some(Quantization {
            bits: 4,
            group_size: 64,
        });
        assert!(o
            .validate()
            .expect_err("hf")
            .to_string()
            .contains("`quantize`"));
        let mut o = ExportOptions::new(Format::Mlx);
        o.gguf_type = Some(GgufType::Q8_0);
        assert!(o
            .validate()
            .expect_err("mlx")
            .to_string()
            .contains("`type`"));
        let mut o = ExportOptions::new(Format::Gguf);
        o.dtype = Some(FloatType::F16);
        assert!(o
            .validate()
            .expect_err("gguf")
            .to_string()
            .contains("`dtype`"));
    }

    #[test]
    fn quantization_settings_outside_mlx_lm_layouts_are_refused() {
        let mut o = ExportOptions::new(Format::Mlx);
        o.quantization = Some(Quantization {
            bits: 3,
            group_size: 64,
        });
        assert!(o.validate().is_err());
        o.quantization = Some(Quantization {
            bits: 4,
            group_size: 48,
        });
        assert!(o
            .validate()
            .expect_err("48")
            .to_string()
            .contains("group-size"));
        o.quantization = Some(Quantization {
            bits: 8,
            group_size: 32,
        });
        o.validate().expect("valid");
        assert_eq!(o.float_type(), FloatType::F16);
    }
}

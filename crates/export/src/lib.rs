//! corenet-export: a trained checkpoint as the folders and files people run on laptops and
//! phones — a complete Hugging Face folder (weights, config, tokenizer files, our own
//! `modeling_openelm.py`, loadable offline with `trust_remote_code`), an MLX folder for
//! `mlx_lm` (f32/f16/bf16, or 4/8-bit affine quantized in mlx-lm's layout), and a GGUF file for
//! llama.cpp with the tokenizer embedded; a PEFT checkpoint's adapters merged into any of them or
//! alone in HF PEFT's layout. Every option is checked and every output target
//! refused (if not new) before a byte is written; folders are written whole or not at all.

#![forbid(unsafe_code)]

pub mod affine;
pub mod error;
pub mod export;
pub mod gguf_file;
pub mod gguf_vocab;
pub mod hf_folder;
pub mod mlx_folder;
pub mod model_card;
pub mod options;
pub mod peft_adapter;
pub mod q8_0;
pub mod remote_code;
pub mod shipped_tokenizer;

pub use error::{Error, Result};
pub use export::{export, ExportSummary};
pub use options::{ExportOptions, FloatType, Format, GgufType, Quantization};
pub use shipped_tokenizer::ShippedTokenizer;

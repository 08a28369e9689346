//! corenet-model: OpenELM (CoreNet's `general_gpt`) on libtorch through tch.
//!
//! Layer-wise scaling is resolved once from the config (`OpenElmConfig::layers`); the modules
//! then only see per-layer head counts and FFN widths. Tensor names are HF OpenELM's, so
//! safetensors files map 1:1 onto Apple's released checkpoints.

#![forbid(unsafe_code)]

pub mod adapter;
pub mod adapter_record;
pub mod attention;
pub mod block;
pub mod config;
pub mod document_mask;
pub mod error;
pub mod ffn;
pub mod flops;
pub mod generate;
pub mod hf;
pub mod init;
pub mod kernel_choice;
pub mod kv_cache;
pub mod manifest;
pub mod norm;
pub mod openelm;
pub mod peft;
pub mod preset;
pub mod pretrained;
pub mod rope;
pub mod scaling;
pub mod staged_folder;
pub mod weights;

pub use adapter_record::{AdapterRecord, ADAPTERS_FILE};
pub use config::{Multiplier, OpenElmConfig};
pub use error::{Error, Result};
pub use flops::{LayerParams, ParamCount};
pub use kv_cache::KvCache;
pub use openelm::OpenElm;
pub use peft::{AdapterMethod, PeftConfig};
pub use preset::PRESETS;
pub use scaling::LayerDims;
pub use staged_folder::StagedFolder;
pub use weights::{load_tensors, save_tensors, tensor_shapes, write_safetensors, RawTensor};

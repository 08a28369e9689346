//! Model weights in safetensors with HF OpenELM tensor names
//! (`transformer.layers.N.attn.qkv_proj.weight`, ...).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::config::OpenElmConfig;
use crate::error::{Error, Result};
use crate::openelm::OpenElm;

/// Tensors whose first dimension is the vocabulary.
const VOCAB_TENSORS: [&str; 2] = ["transformer.token_embeddings.weight", "lm_head.weight"];

/// Every tensor of the model with its shape, in CoreNet's registration order.
pub fn tensor_shapes(config: &OpenElmConfig) -> Result<Vec<(String, Vec<i64>)>> {
    let dims = config.layers()?;
    let (v, d, h) = (
        config.vocab_size as i64,
        config.model_dim as i64,
        config.head_dim as i64,
    );
    let mut shapes = vec![(
        "transformer.token_embeddings.weight".to_string(),
        vec![v, d],
    )];
    for (i, l) in dims.iter().enumerate() {
        let (q, kv, f) = (l.query_heads as i64, l.kv_heads as i64, l.ffn_dim as i64);
        let p = format!("transformer.layers.{i}");
        shapes.push((
            format!("{p}.attn.qkv_proj.weight"),
            vec![(q + 2 * kv) * h, d],
        ));
        if config.normalize_qk_projections {
            shapes.push((format!("{p}.attn.q_norm.weight"), vec![h]));
            shapes.push((format!("{p}.attn.k_norm.weight"), vec![h]));
        }
        shapes.push((format!("{p}.attn.out_proj.weight"), vec![d, q * h]));
        let proj_1 = if config.ffn_with_glu { 2 * f } else { f };
        shapes.push((format!("{p}.ffn.proj_1.weight"), vec![proj_1, d]));
        shapes.push((format!("{p}.ffn.proj_2.weight"), vec![d, f]));
        shapes.push((format!("{p}.ffn_norm.weight"), vec![d]));
        shapes.push((format!("{p}.attn_norm.weight"), vec![d]));
    }
    shapes.push(("transformer.norm.weight".to_string(), vec![d]));
    if !config.tied() {
        shapes.push(("lm_head.weight".to_string(), vec![v, d]));
    }
    Ok(shapes)
}

impl OpenElm {
    /// Parameters with their HF names, in registration order (handles share storage).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "transformer.token_embeddings.weight".to_string(),
            self.token_embeddings.shallow_clone(),
        )];
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("transformer.layers.{i}");
            out.push((
                format!("{p}.attn.qkv_proj.weight"),
                layer.attn.qkv_proj.shallow_clone(),
            ));
            if let (Some(qn), Some(kn)) = (&layer.attn.q_norm, &layer.attn.k_norm) {
                out.push((format!("{p}.attn.q_norm.weight"), qn.weight.shallow_clone()));
                out.push((format!("{p}.attn.k_norm.weight"), kn.weight.shallow_clone()));
            }
            out.push((
                format!("{p}.attn.out_proj.weight"),
                layer.attn.out_proj.shallow_clone(),
            ));
            out.push((
                format!("{p}.ffn.proj_1.weight"),
                layer.ffn.proj_1.shallow_clone(),
            ));
            out.push((
                format!("{p}.ffn.proj_2.weight"),
                layer.ffn.proj_2.shallow_clone(),
            ));
            out.push((
                format!("{p}.ffn_norm.weight"),
                layer.ffn_norm.weight.shallow_clone(),
            ));
            out.push((
                format!("{p}.attn_norm.weight"),
                layer.attn_norm.weight.shallow_clone(),
            ));
        }
        out.push((
            "transformer.norm.weight".to_string(),
            self.norm.weight.shallow_clone(),
        ));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.shallow_clone()));
        }
        out
    }

    /// Writes every parameter to `path` (safetensors, `{"format": "pt"}` metadata).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        save_tensors(&self.named_parameters(), path)
    }

    /// Copies the tensors of `path` into the parameters (converted to their dtype and device).
    /// The file must hold exactly this model's tensors with these shapes.
    pub fn load_safetensors(&self, path: &Path) -> Result<()> {
        copy_tensors(self.named_parameters(), &[path.to_path_buf()], false)
    }

    /// [`Self::load_safetensors`] over several files that together hold every tensor once (the
    /// per-rank parts of a data-parallel checkpoint).
    pub fn load_safetensors_files(&self, paths: &[PathBuf]) -> Result<()> {
        copy_tensors(self.named_parameters(), paths, false)
    }

    /// [`Self::load_safetensors_files`] for what a checkpoint of this model holds: the adapters
    /// when it has any ([`Self::trainable_parameters`]), else every parameter.
    pub fn load_trainable_files(&self, paths: &[PathBuf]) -> Result<()> {
        copy_tensors(self.trainable_parameters(), paths, false)
    }

    /// sha256 over every base parameter's name, shape and bytes, in model order: what an
    /// adapter checkpoint records of the model it was trained on. Taken at bf16 precision, so
    /// that a bf16 run's base (rounded on load) and the same folder opened in f32 agree.
    pub fn base_fingerprint(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for (name, t) in self.named_parameters() {
            let rounded = t.detach().to_kind(Kind::BFloat16);
            let raw = RawTensor::from_tensor(&name, &rounded, Path::new(&name))?;
            hash.update(format!("{name}:{:?};", raw.shape).as_bytes());
            hash.update(&raw.data);
        }
        Ok(format!("{:x}", hash.finalize()))
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    match kind {
        Kind::Float => Some(Dtype::F32),
        Kind::BFloat16 => Some(Dtype::BF16),
        Kind::Half => Some(Dtype::F16),
        Kind::Double => Some(Dtype::F64),
        Kind::Int64 => Some(Dtype::I64),
        Kind::Int => Some(Dtype::I32),
        _ => None,
    }
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        Dtype::F64 => Some(Kind::Double),
        Dtype::I64 => Some(Kind::Int64),
        Dtype::I32 => Some(Kind::Int),
        _ => None,
    }
}

/// A CPU tensor holding a copy of `view`'s data.
pub fn tensor_from_view(path: &Path, name: &str, view: &TensorView<'_>) -> Result<Tensor> {
    let kind = kind_of(view.dtype()).ok_or_else(|| Error::UnsupportedDtype {
        path: path.to_path_buf(),
        name: name.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })?;
    let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind)?)
}

/// One tensor's bytes as a safetensors file stores them (little-endian, row-major).
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    /// A CPU copy of `tensor`'s bytes; `path` names the file in errors.
    pub fn from_tensor(name: &str, tensor: &Tensor, path: &Path) -> Result<Self> {
        let dtype = dtype_of(tensor.kind()).ok_or_else(|| Error::UnsupportedDtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: format!("{:?}", tensor.kind()),
        })?;
        let cpu = tensor.detach().to_device(Device::Cpu).contiguous();
        let numel = cpu.numel();
        let mut data = vec![0u8; numel * cpu.kind().elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut data, numel)?;
        let shape: Vec<usize> = cpu.size().iter().map(|&s| s as usize).collect();
        Ok(RawTensor {
            name: name.to_string(),
            dtype,
            shape,
            data,
        })
    }
}

/// Writes named tensors to a safetensors file with `{"format": "pt"}` metadata, which several
/// transformers versions require.
pub fn save_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let raw = tensors
        .iter()
        .map(|(name, t)| RawTensor::from_tensor(name, t, path))
        .collect::<Result<Vec<_>>>()?;
    write_safetensors(&raw, "pt", path)
}

/// Writes raw tensors to a safetensors file with `{"format": format}` metadata (`pt` for
/// PyTorch readers, `mlx` for MLX).
pub fn write_safetensors(tensors: &[RawTensor], format: &str, path: &Path) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|view| (t.name.clone(), view))
                .map_err(|e| Error::SafeTensors {
                    path: path.to_path_buf(),
                    message: format!("tensor `{}`: {e}", t.name),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = HashMap::from([("format".to_string(), format.to_string())]);
    // safetensors writes a private (0600) temporary file and renames it into place. Weights are
    // shared with teammates like every other file of a run, so they get the mode a plain create
    // under this process's umask gives: taken from creating the file first, restored after.
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let permissions = std::fs::File::create(path)
        .and_then(|f| f.metadata())
        .map_err(io)?
        .permissions();
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(|e| {
        Error::SafeTensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    std::fs::set_permissions(path, permissions).map_err(io)
}

/// Reads every tensor of a safetensors file (CPU copies, in file order).
pub fn load_tensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = read_file(path)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::SafeTensors {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        let tensor = tensor_from_view(path, &name, &view)?;
        out.push((name, tensor));
    }
    Ok(out)
}

/// Copies the tensors of `files` into `params` (a model's, by name); every parameter must be found
/// exactly once and every tensor must be a parameter. With `resize_vocab`, vocabulary tensors
/// may differ in rows.
pub(crate) fn copy_tensors(
    params: Vec<(String, Tensor)>,
    files: &[PathBuf],
    resize_vocab: bool,
) -> Result<()> {
    let params: HashMap<String, Tensor> = params.into_iter().collect();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        // One shard in memory at a time.
        let bytes = read_file(path)?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::SafeTensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (name, view) in file.tensors() {
            let param = params.get(&name).ok_or_else(|| Error::UnexpectedTensor {
                path: path.clone(),
                name: name.clone(),
            })?;
            if let Some(first) = seen.insert(name.clone(), path.clone()) {
                return Err(Error::SafeTensors {
                    path: path.clone(),
                    message: format!("tensor `{name}` is also in {}", first.display()),
                });
            }
            let source = tensor_from_view(path, &name, &view)?;
            check_finite(path, &name, &source)?;
            let source = fit_rows(path, &name, param, source, resize_vocab)?;
            copy_into(param, &source)?;
        }
    }
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    if let Some(missing) = names.into_iter().find(|n| !seen.contains_key(*n)) {
        return Err(Error::MissingTensor {
            path: files.first().cloned().unwrap_or_default(),
            name: missing.clone(),
        });
    }
    Ok(())
}

/// Weights with NaN or infinity can only come from a diverged run or a damaged file; training
/// or evaluating from them would fail later and far from the cause.
fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    if !t.is_floating_point() {
        return Ok(());
    }
    let bad = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
    if bad > 0 {
        return Err(Error::NonFinite {
            path: path.to_path_buf(),
            name: name.to_string(),
            count: bad,
        });
    }
    Ok(())
}

/// `source` shaped like `param`: the same shape, or for a vocabulary tensor (V', C) against
/// (V, C) the shared min(V, V') rows written over a copy of `param`'s current rows.
fn fit_rows(
    path: &Path,
    name: &str,
    param: &Tensor,
    source: Tensor,
    resize_vocab: bool,
) -> Result<Tensor> {
    let (want, found) = (param.size(), source.size());
    if want == found {
        return Ok(source);
    }
    let resizable =
        resize_vocab && VOCAB_TENSORS.contains(&name) && want.len() == 2 && found.len() == 2;
    if !resizable || want[1] != found[1] {
        return Err(Error::ShapeMismatch {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: want,
            found,
        });
    }
    let rows = want[0].min(found[0]);
    let merged = param.detach().to_device(Device::Cpu).to_kind(source.kind()); // (V, C)
    tch::no_grad(|| {
        merged
            .narrow(0, 0, rows)
            .f_copy_(&source.narrow(0, 0, rows))
    })?;
    Ok(merged)
}

/// Writes `source` (same shape) into `param`, converting dtype and device.
fn copy_into(param: &Tensor, source: &Tensor) -> Result<()> {
    tch::no_grad(|| {
        let mut target = param.shallow_clone();
        target.f_copy_(&source.to_kind(param.kind()).to_device(param.device()))
    })?;
    Ok(())
}

//! `corenet model export`: one checkpoint (or HF folder) to one target, verified on the way in
//! and written whole or not at all on the way out. Options, the target, the tokenizer and
//! every tensor's shape are checked before the first byte is written.

use std::path::{Path, PathBuf};

use corenet_model::manifest::{read_manifest, MANIFEST_FILE};
use corenet_model::{staged_folder::check_target, AdapterRecord, StagedFolder, ADAPTERS_FILE};

use crate::error::{Error, Result};
use crate::gguf_file::{plan_gguf, write_gguf};
use crate::hf_folder::write_hf_folder;
use crate::mlx_folder::{check_quantization, write_mlx_folder};
use crate::model_card::write_model_card;
use crate::options::{ExportOptions, Format, GgufType};
use crate::peft_adapter::write_peft_adapter;
use crate::shipped_tokenizer::ShippedTokenizer;

/// What was written.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub out: PathBuf,
    /// The tokenizer file shipped with it.
    pub tokenizer: PathBuf,
    /// Embedding rows written.
    pub vocab_size: usize,
}

/// Exports `checkpoint` to `out` as `options` say; `tokenizer` overrides the one the
/// checkpoint carries.
pub fn export(
    checkpoint: &Path,
    tokenizer: Option<&Path>,
    out: &Path,
    options: &ExportOptions,
) -> Result<ExportSummary> {
    options.validate()?;
    match options.format {
        Format::Gguf => check_file_target(out)?,
        Format::Hf | Format::Mlx | Format::Peft => check_target(out)?,
    }
    let shipped = ShippedTokenizer::find(checkpoint, tokenizer)?;
    // Verifies the checkpoint's manifest (or an HF folder's tensors) before reading weights; a
    // PEFT checkpoint opens as its (fingerprint-checked) base with the adapters attached.
    let device = tch::Device::Cpu;
    let (_vs, mut model) =
        corenet_model::pretrained::open_with_base(checkpoint, options.base.as_deref(), device)?;
    if let Some(summary) = adapters_only(checkpoint, &model, out, options, &shipped)? {
        return Ok(summary);
    }
    fold_adapters(&mut model, options)?;
    let (config, tensors) = corenet_model::hf::hf_tensors(&model, options.vocab_size)?;
    check_rows_hold_tokenizer(config.vocab_size, &shipped)?;
    let step = source_step(checkpoint);
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "exported_from".into(),
        checkpoint.display().to_string().into(),
    );
    match options.format {
        Format::Hf => {
            let staged = StagedFolder::create(out)?;
            write_hf_folder(
                staged.path(),
                &config,
                &tensors,
                options.float_type(),
                &shipped,
            )?;
            write_model_card(staged.path(), Format::Hf, checkpoint, step)?;
            metadata.insert("format".into(), "hf".into());
            staged.commit(step, metadata)?;
        }
        Format::Mlx => {
            if let Some(q) = options.quantization {
                check_quantization(&tensors, q)?;
            }
            let staged = StagedFolder::create(out)?;
            write_mlx_folder(
                staged.path(),
                &config,
                &tensors,
                options.float_type(),
                options.quantization,
                &shipped,
            )?;
            write_model_card(staged.path(), Format::Mlx, checkpoint, step)?;
            metadata.insert("format".into(), "mlx".into());
            staged.commit(step, metadata)?;
        }
        // Written (and returned) by `adapters_only` above.
        Format::Peft => {}
        Format::Gguf => {
            let ty = options.gguf_type.unwrap_or(GgufType::F32);
            let plan = plan_gguf(&config, &tensors, ty)?;
            let name = out
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "openelm".into());
            let staged = StagedFile::new(out)?;
            write_gguf(staged.path(), &config, plan, ty, &shipped, &name)?;
            staged.commit()?;
        }
    }
    tracing::info!(out = %out.display(), tokenizer = %shipped.source.display(), "exported");
    Ok(ExportSummary {
        out: out.to_path_buf(),
        tokenizer: shipped.source,
        vocab_size: config.vocab_size,
    })
}

/// The exported vocabulary must hold every id of the shipped tokenizer.
fn check_rows_hold_tokenizer(rows: usize, shipped: &ShippedTokenizer) -> Result<()> {
    if shipped.vocab_size > rows {
        return Err(Error::option(
            "vocab-size",
            format!(
                "{rows} rows cannot hold the ids of {} ({} ids)",
                shipped.source.display(),
                shipped.vocab_size
            ),
        ));
    }
    Ok(())
}

/// `--format peft`: the adapters in HF PEFT's layout, written whole or not at all.
fn adapters_only(
    checkpoint: &Path,
    model: &corenet_model::OpenElm,
    out: &Path,
    options: &ExportOptions,
    shipped: &ShippedTokenizer,
) -> Result<Option<ExportSummary>> {
    if options.format != Format::Peft {
        return Ok(None);
    }
    let record = AdapterRecord::read(checkpoint)?.ok_or_else(|| Error::Unsupported {
        format: "peft",
        reason: format!(
            "{} is not a PEFT checkpoint (no {ADAPTERS_FILE})",
            checkpoint.display()
        ),
    })?;
    let base = options.base.as_deref().or(record.base.as_deref());
    let rows = options.vocab_size.unwrap_or(model.config().vocab_size);
    if rows > model.config().vocab_size {
        return Err(Error::option(
            "vocab-size",
            format!(
                "{rows} is more than the model's {} rows",
                model.config().vocab_size
            ),
        ));
    }
    check_rows_hold_tokenizer(rows, shipped)?;
    let staged = StagedFolder::create(out)?;
    write_peft_adapter(
        staged.path(),
        model,
        &record.peft,
        base,
        options.float_type(),
        rows,
    )?;
    let mut metadata = serde_json::Map::new();
    metadata.insert(
        "exported_from".into(),
        checkpoint.display().to_string().into(),
    );
    metadata.insert("format".into(), "peft".into());
    staged.commit(source_step(checkpoint), metadata)?;
    tracing::info!(out = %out.display(), "exported the adapters (HF PEFT layout)");
    Ok(Some(ExportSummary {
        out: out.to_path_buf(),
        tokenizer: shipped.source.clone(),
        vocab_size: rows,
    }))
}

/// A model with adapters is written merged, and only when asked to be.
fn fold_adapters(model: &mut corenet_model::OpenElm, options: &ExportOptions) -> Result<()> {
    match (model.has_adapters(), options.merge_adapters) {
        (true, true) => Ok(model.merge_adapters()?),
        (true, false) => Err(Error::option(
            "merge-adapters",
            "the checkpoint holds LoRA/DoRA adapters on a frozen base: export them merged into the base (--merge-adapters) or alone in HF PEFT's layout (--format peft)",
        )),
        (false, true) => Err(Error::option(
            "merge-adapters",
            "the checkpoint has no adapters to merge",
        )),
        (false, false) => Ok(()),
    }
}

/// The training step a checkpoint's manifest records (0 for an HF folder without one).
fn source_step(checkpoint: &Path) -> u64 {
    match checkpoint.join(MANIFEST_FILE).is_file() {
        true => read_manifest(checkpoint).map(|m| m.step).unwrap_or(0),
        false => 0,
    }
}

/// A single output file must be new.
fn check_file_target(out: &Path) -> Result<()> {
    if out.exists() {
        return Err(Error::option(
            "out",
            format!("{} exists; give a new file name", out.display()),
        ));
    }
    if out.file_name().is_none() {
        return Err(Error::option(
            "out",
            format!("{} is not a file name", out.display()),
        ));
    }
    Ok(())
}

/// A file written under a hidden name next to its target and renamed into place at the end;
/// removed if dropped before.
struct StagedFile {
    target: PathBuf,
    staging: Option<PathBuf>,
}

impl StagedFile {
    fn new(target: &Path) -> Result<Self> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&parent).map_err(|e| Error::io("create directory", &parent, e))?;
        Ok(StagedFile {
            target: target.to_path_buf(),
            staging: Some(parent.join(format!(".{name}.partial"))),
        })
    }

    fn path(&self) -> &Path {
        self.staging.as_deref().unwrap_or(&self.target)
    }

    fn commit(mut self) -> Result<()> {
        if let Some(staging) = self.staging.take() {
            std::fs::rename(&staging, &self.target)
                .map_err(|e| Error::io("rename", &self.target, e))?;
        }
        Ok(())
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take() {
            let _ = std::fs::remove_file(staging);
        }
    }
}

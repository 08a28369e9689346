//! A source resolved from its config: the sorted list of its files with their formats.

use std::path::PathBuf;

use crate::config::{LossOn, SourceConfig};
use crate::error::{Error, Result};
use crate::format::Format;
use crate::remote::{self, Scheme, StorageConfig};
use crate::template::Template;

/// One shard file of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardFile {
    pub path: PathBuf,
    pub format: Format,
}

/// A source with its globs expanded.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text_key: String,
    pub template: Option<Template>,
    pub loss_on: LossOn,
    pub weight: f64,
    /// Fraction of documents held back for validation.
    pub hold_back: f64,
    /// Sorted, so every rank sees the same list.
    pub files: Vec<ShardFile>,
}

impl Source {
    /// Expands the config's paths and globs (local, or URLs listed on their store through
    /// `storage`); errors when nothing matches.
    pub fn resolve(cfg: &SourceConfig, storage: &StorageConfig) -> Result<Source> {
        cfg.validate()?;
        let mut paths = Vec::new();
        for pattern in &cfg.paths {
            if Scheme::of(pattern).is_some() {
                paths.extend(
                    remote::expand(pattern, storage)?
                        .into_iter()
                        .map(PathBuf::from),
                );
                continue;
            }
            let glob_err = |message: String| Error::Glob {
                source_name: cfg.name.clone(),
                pattern: pattern.clone(),
                message,
            };
            for entry in glob::glob(pattern).map_err(|e| glob_err(e.to_string()))? {
                let path = entry.map_err(|e| glob_err(e.to_string()))?;
                if path.is_file() {
                    paths.push(path);
                }
            }
        }
        paths.sort();
        paths.dedup();
        if paths.is_empty() {
            return Err(Error::NoFiles {
                source_name: cfg.name.clone(),
                patterns: cfg.paths.clone(),
            });
        }
        let files = paths
            .into_iter()
            .map(|path| {
                let format = match cfg.format {
                    Some(f) => f,
                    None => Format::infer(&path)?,
                };
                if cfg.template.is_some() && !format.is_lines() {
                    return Err(Error::Config(format!(
                        "source `{}`: {} is {format:?}; a template renders JSON-lines records",
                        cfg.name,
                        path.display()
                    )));
                }
                Ok(ShardFile { path, format })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Source {
            name: cfg.name.clone(),
            text_key: cfg.text_key.clone(),
            template: cfg.template,
            loss_on: cfg.loss_on(),
            weight: cfg.weight,
            hold_back: cfg.hold_back,
            files,
        })
    }
}

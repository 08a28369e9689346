//! The picture file: its format, told by the file extension, and writing a [`Figure`] to it
//! through a temporary file next to it that is renamed into place, so a reader never sees half
//! a picture.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::figure::Figure;
use super::theme::WIDTH;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    Png,
    Svg,
}

impl Format {
    pub(super) fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(Format::Png),
            "svg" => Some(Format::Svg),
            _ => None,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Svg => "svg",
        }
    }
}

/// Draws `figure` into `out` (created with its parent directories; replaced atomically if it
/// exists). A failed drawing leaves neither the temporary file nor a changed `out` behind.
pub(super) fn write(figure: &Figure, out: &Path, format: Format) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
    }
    let tmp = temp_path(out, format);
    if let Err(reason) = draw(figure, &tmp, format) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Plot {
            path: out.to_path_buf(),
            reason,
        });
    }
    std::fs::rename(&tmp, out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("rename", &tmp, e)
    })
}

fn draw(figure: &Figure, path: &Path, format: Format) -> std::result::Result<(), String> {
    let size = (WIDTH, figure.height());
    match format {
        Format::Png => present(figure, BitMapBackend::new(path, size)),
        Format::Svg => present(figure, SVGBackend::new(path, size)),
    }
}

/// Draws the figure and finishes the file (`present` is what writes the file).
fn present<DB: DrawingBackend>(figure: &Figure, backend: DB) -> std::result::Result<(), String> {
    let root = backend.into_drawing_area();
    figure
        .draw(&root)
        .and_then(|()| root.present())
        .map_err(|e| e.to_string())
}

/// A hidden name in the destination's directory (so the rename stays on one file system),
/// keeping the extension: the PNG encoder picks its format from it.
fn temp_path(out: &Path, format: Format) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!(
        ".{stem}.{}.tmp.{}",
        std::process::id(),
        format.extension()
    ))
}

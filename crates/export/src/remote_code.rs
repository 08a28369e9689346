//! Our own Hugging Face modeling code for OpenELM (`hf/configuration_openelm.py`,
//! `hf/modeling_openelm.py`, written here from the spec, KV cache included), shipped in every
//! HF export next to a `config.json` whose `auto_map` names it: `transformers` then loads the
//! folder with `trust_remote_code=True` and nothing from the Hub.

use std::path::Path;

use crate::error::{Error, Result};

/// (file name, contents) of the modeling code.
pub const FILES: [(&str, &str); 2] = [
    (
        "configuration_openelm.py",
        include_str!("../hf/configuration_openelm.py"),
    ),
    (
        "modeling_openelm.py",
        include_str!("../hf/modeling_openelm.py"),
    ),
];

/// Writes the modeling code into `dir`.
pub fn write_remote_code(dir: &Path) -> Result<()> {
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}

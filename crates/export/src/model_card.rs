//! The `README.md` an exported folder carries: what it is, where it came from, and the lines
//! that load it, so a folder copied to a laptop or uploaded to a hub explains itself.

use std::path::Path;

use crate::error::{Error, Result};
use crate::options::Format;

/// Writes `README.md` into `dir` for an export of `source` (trained `step` steps).
pub fn write_model_card(dir: &Path, format: Format, source: &Path, step: u64) -> Result<()> {
    let (library, usage) = match format {
        Format::Mlx => (
            "mlx",
            "```python\nfrom mlx_lm import load, generate\nmodel, tokenizer = load(\"PATH\", tokenizer_config={\"trust_remote_code\": True})\nprint(generate(model, tokenizer, prompt=\"Once upon a time\", max_tokens=32))\n```",
        ),
        _ => (
            "transformers",
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained(\"PATH\", trust_remote_code=True)\nmodel = AutoModelForCausalLM.from_pretrained(\"PATH\", trust_remote_code=True)\n```\n\n`trust_remote_code` runs `modeling_openelm.py` and `configuration_openelm.py` from this folder; nothing is fetched.",
        ),
    };
    let text = format!(
        "---\nlibrary_name: {library}\ntags: [openelm, corenet-rs]\n---\n\n# OpenELM exported by corenet-rs\n\n\
         Exported by `corenet model export` from `{}` (step {step}). The tokenizer is the one \
         the run trained with; `manifest.json` lists the size and SHA-256 of every file.\n\n{usage}\n",
        source.display()
    );
    let path = dir.join("README.md");
    std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))
}

//! The token streams validation scores, built once when a run starts: each set's documents
//! (a training source's held-back ones, or a held-out source's) become BOS + ids + EOS,
//! concatenated and cut to `sequences` windows of `seq_len`, the packed layout of `corenet eval
//! perplexity`. A set is a pure function of its files and the recipe, so it is the same on
//! every rank, after every resume and on every world size.

use std::collections::BTreeMap;
use std::path::PathBuf;

use corenet_data::{for_each_document, DocumentFilter, HoldBack, Source, TextTokenizer};

use crate::error::{Error, Result};
use crate::recipe::Recipe;

/// One named set of validation windows.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationSet {
    pub name: String,
    /// BOS + ids + EOS of each document, concatenated and truncated.
    pub stream: Vec<i64>,
    /// `[start, end)` of each window over `stream` (see `corenet_eval::windows`).
    pub windows: Vec<(usize, usize)>,
}

impl ValidationSet {
    /// Targets the set predicts.
    pub fn tokens(&self) -> usize {
        self.windows.iter().map(|(s, e)| e - s - 1).sum()
    }
}

/// Every set the recipe's `eval:` section asks for: held-back parts of training sources first
/// (in the data section's order), then the held-out sources. A held-out source that shares a
/// file with a training source is refused: validation would score text the run trains on.
pub fn build_sets(recipe: &Recipe, tokenizer: &dyn TextTokenizer) -> Result<Vec<ValidationSet>> {
    let eval = &recipe.eval;
    let training = training_files(recipe)?;
    let mut sets = Vec::new();
    for config in eval.held_back_sources(&recipe.data) {
        let source = Source::resolve(config, &recipe.data.storage)?;
        let filter = DocumentFilter::HeldBack(HoldBack::new(config.hold_back));
        sets.push(build_set(recipe, tokenizer, &source, filter)?);
    }
    for (i, config) in eval.sources.iter().enumerate() {
        let source = Source::resolve(&config.as_source(), &recipe.data.storage)
            .map_err(|e| Error::config(format!("eval.sources.{i}.paths"), e.to_string()))?;
        if let Some((file, owner)) = source
            .files
            .iter()
            .find_map(|f| training.get(&f.path).map(|owner| (&f.path, owner)))
        {
            return Err(Error::config(
                format!("eval.sources.{i}.paths"),
                format!(
                    "{} is also read by training source `{owner}`: validation would score documents the run trains on. Hold back part of that source instead (data.sources.N.hold_back) and drop the file from eval.sources",
                    file.display()
                ),
            ));
        }
        sets.push(build_set(recipe, tokenizer, &source, DocumentFilter::All)?);
    }
    Ok(sets)
}

/// Every file a training source reads, with the source's name.
fn training_files(recipe: &Recipe) -> Result<BTreeMap<PathBuf, String>> {
    let mut files = BTreeMap::new();
    for config in &recipe.data.sources {
        for file in Source::resolve(config, &recipe.data.storage)?.files {
            files.insert(file.path, config.name.clone());
        }
    }
    Ok(files)
}

fn build_set(
    recipe: &Recipe,
    tokenizer: &dyn TextTokenizer,
    source: &Source,
    filter: DocumentFilter,
) -> Result<ValidationSet> {
    let seq_len = recipe.data.seq_len;
    let wanted = corenet_eval::ids_for_sequences(recipe.eval.sequences, seq_len);
    let mut stream: Vec<i64> = Vec::with_capacity(wanted);
    let mut documents = 0usize;
    let bad = for_each_document(
        source,
        filter,
        recipe.data.max_record_bytes,
        &recipe.data.storage,
        |text| {
            stream.push(i64::from(tokenizer.bos_id()));
            stream.extend(tokenizer.encode(text)?.into_iter().map(i64::from));
            stream.push(i64::from(tokenizer.eos_id()));
            documents += 1;
            Ok(stream.len() < wanted)
        },
    )?;
    stream.truncate(wanted);
    let windows = corenet_eval::windows(stream.len(), seq_len);
    if windows.is_empty() {
        return Err(Error::config(
            "eval",
            format!(
                "validation set `{}` has no documents to score ({} files{})",
                source.name,
                source.files.len(),
                match filter {
                    DocumentFilter::All => String::new(),
                    DocumentFilter::HeldBack(_) =>
                        ": the held-back fraction selects none of them; raise hold_back".into(),
                }
            ),
        ));
    }
    if windows.len() < recipe.eval.sequences {
        tracing::warn!(set = %source.name, windows = windows.len(), wanted = recipe.eval.sequences, "validation set is shorter than eval.sequences");
    }
    let set = ValidationSet {
        name: source.name.clone(),
        stream,
        windows,
    };
    tracing::info!(set = %set.name, documents, windows = set.windows.len(), tokens = set.tokens(), bad_records = bad, "validation set ready");
    Ok(set)
}

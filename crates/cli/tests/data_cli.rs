//! `corenet data sample|stats|peek` and `corenet tokenizer train`, run as the real binary on a
//! tiny generated corpus.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use corenet_data::{DataConfig, SourceConfig};

const WORDS: [&str; 24] = [
    "the", "king", "queen", "speaks", "of", "love", "and", "war", "in", "a", "fair", "city",
    "where", "night", "falls", "upon", "gentle", "hearts", "that", "dream", "sweet", "sorrow",
    "with", "honour",
];

/// Deterministic English-like paragraphs: `files` text files of `paragraphs` each.
fn write_corpus(dir: &Path, files: usize, paragraphs: usize) -> Result<()> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    for f in 0..files {
        let mut text = String::new();
        for _ in 0..paragraphs {
            for _ in 0..3 {
                let n = 8 + next() % 8;
                let words: Vec<&str> = (0..n).map(|_| WORDS[next() % WORDS.len()]).collect();
                let sentence = words.join(" ");
                let mut chars = sentence.chars();
                if let Some(first) = chars.next() {
                    text.extend(first.to_uppercase());
                    text.push_str(chars.as_str());
                }
                text.push_str(". ");
            }
            text.push_str("\n\n");
        }
        std::fs::write(dir.join(format!("play{f}.txt")), text)?;
    }
    Ok(())
}

fn corenet(args: &[&str], cwd: &Path) -> Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_corenet"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running corenet {args:?}"))
}

/// Runs the binary and returns stdout, failing with its stderr when it exits non-zero.
fn corenet_ok(args: &[&str], cwd: &Path) -> Result<String> {
    let out = corenet(args, cwd)?;
    ensure!(
        out.status.success(),
        "corenet {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs the binary expecting failure; returns stderr.
fn corenet_err(args: &[&str], cwd: &Path) -> Result<String> {
    let out = corenet(args, cwd)?;
    ensure!(
        !out.status.success(),
        "corenet {args:?} unexpectedly succeeded"
    );
    Ok(String::from_utf8(out.stderr)?)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("temp path is not UTF-8")
}

fn files_with_suffix(dir: &Path, suffix: &str) -> Result<usize> {
    let pattern = format!("{}/**/*{suffix}", path_str(dir)?);
    Ok(glob::glob(&pattern)?.filter_map(Result::ok).count())
}

#[test]
fn sample_tokenizer_stats_peek() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();
    let corpus = root.join("corpus");
    let sample = root.join("sample");
    std::fs::create_dir_all(&corpus)?;
    write_corpus(&corpus, 3, 20)?;

    // Shards in every layout, and the source list.
    let out = corenet_ok(
        &[
            "data",
            "sample",
            "--corpus",
            path_str(&corpus)?,
            "--out",
            path_str(&sample)?,
            "--files-per-source",
            "2",
            "--doc-chars",
            "300",
        ],
        root,
    )?;
    for suffix in [".parquet", ".jsonl", ".jsonl.zst", ".json.gz"] {
        ensure!(
            files_with_suffix(&sample, suffix)? >= 2,
            "no {suffix} shards under {}",
            sample.display()
        );
    }
    let sources_text = std::fs::read_to_string(sample.join("sources.yaml"))?;
    let sources: Vec<SourceConfig> = serde_norway::from_str(&sources_text)?;
    ensure!(sources.len() == 6, "sources.yaml: {sources_text}");
    for s in &sources {
        ensure!(out.contains(&s.name), "summary lacks {}: {out}", s.name);
    }

    // A tokenizer trained on the corpus files (pattern expanded by the command, not the shell).
    let tokenizer = root.join("tok").join("tokenizer.json");
    let pattern = format!("{}/*.txt", path_str(&corpus)?);
    let out = corenet_ok(
        &[
            "tokenizer",
            "train",
            "--files",
            &pattern,
            "--vocab-size",
            "300",
            "--out",
            path_str(&tokenizer)?,
        ],
        root,
    )?;
    ensure!(tokenizer.is_file(), "no tokenizer written: {out}");
    ensure!(out.contains("vocab"), "{out}");

    // A bare data config for stats …
    let config = DataConfig {
        sources: sources.clone(),
        tokenizer: tokenizer.clone(),
        seq_len: 32,
        micro_batch: 2,
        ..Default::default()
    };
    let yaml = serde_norway::to_string(&config)?;
    let config_path = root.join("data.yaml");
    std::fs::write(&config_path, &yaml)?;
    let out = corenet_ok(
        &[
            "data",
            "stats",
            "--config",
            path_str(&config_path)?,
            "--batches",
            "3",
        ],
        root,
    )?;
    for s in &sources {
        ensure!(out.contains(&s.name), "stats lack {}: {out}", s.name);
    }
    ensure!(out.contains("total") && out.contains("3 batches"), "{out}");

    // … and a recipe-shaped file (`data:` section, micro_batch from `trainer`) for peek.
    let indented: String = yaml
        .lines()
        .filter(|l| !l.starts_with("micro_batch:"))
        .map(|l| format!("  {l}\n"))
        .collect();
    let recipe_path = root.join("recipe.yaml");
    std::fs::write(
        &recipe_path,
        format!("trainer:\n  micro_batch: 2\ndata:\n{indented}"),
    )?;
    let out = corenet_ok(
        &[
            "data",
            "peek",
            "--config",
            path_str(&recipe_path)?,
            "--batches",
            "1",
        ],
        root,
    )?;
    ensure!(out.matches("=== batch 0 row").count() == 2, "{out}");
    let decoded_words = out
        .split_whitespace()
        .filter(|w| WORDS.contains(&w.trim_matches(|c: char| !c.is_alphabetic())))
        .count();
    ensure!(decoded_words >= 10, "peek shows no decoded text: {out}");
    Ok(())
}

#[test]
fn bad_input_names_itself() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path();

    let missing = root.join("no-such-corpus");
    let err = corenet_err(
        &[
            "data",
            "sample",
            "--corpus",
            path_str(&missing)?,
            "--out",
            path_str(&root.join("out"))?,
        ],
        root,
    )?;
    ensure!(err.contains("no-such-corpus"), "{err}");

    let config = root.join("typo.yaml");
    std::fs::write(
        &config,
        "sources: [{name: a, paths: [x.jsonl]}]\ntokenizer: t.json\nseqlen: 32\n",
    )?;
    let err = corenet_err(&["data", "stats", "--config", path_str(&config)?], root)?;
    ensure!(err.contains("seqlen") && err.contains("typo.yaml"), "{err}");

    let err = corenet_err(
        &[
            "tokenizer",
            "train",
            "--files",
            "nothing-here/*.txt",
            "--vocab-size",
            "300",
            "--out",
            "t.json",
        ],
        root,
    )?;
    ensure!(err.contains("nothing-here/*.txt"), "{err}");
    Ok(())
}

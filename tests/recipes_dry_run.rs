//! Every recipe in recipes/ goes through `corenet train --dry-run`, shrunk with `--set` to a
//! toy model on the sample shards: it must pass, print a finite loss and leave no run
//! directory behind. A dry run with a missing shard or a batch that does not split over the
//! world size must fail with a message naming the problem.

use std::path::{Path, PathBuf};
use std::process::Output;

use corenet_e2e::{build_sample_data, corenet_bin, workspace_root};

/// Sample shard groups built by `corenet data sample`, with their text key; source i of a
/// recipe reads group i mod 6.
const SAMPLE_GROUPS: [(&str, &str); 6] = [
    ("refinedweb/*.parquet", "content"),
    ("redpajama/arxiv/*.jsonl", "text"),
    ("redpajama/c4/*.jsonl.zst", "text"),
    ("pile/jsonl/*.jsonl.zst", "text"),
    ("pile/dedup/*.parquet", "text"),
    ("dolma/books/*.json.gz", "text"),
];

fn recipes() -> Vec<PathBuf> {
    recipes_in("recipes")
}

fn recipes_in(folder: &str) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(workspace_root().join(folder))
        .expect("recipes/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    all.sort();
    all
}

/// Number of `data.sources` entries of a recipe (its `- name:` / `- {` items under sources).
fn source_count(recipe: &Path) -> usize {
    let text = std::fs::read_to_string(recipe).expect("recipe");
    let mut in_sources = false;
    let mut count = 0;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with("sources:") {
            in_sources = true;
            continue;
        }
        if in_sources {
            if !trimmed.is_empty() && !trimmed.starts_with('#') && indent <= 2 {
                break;
            }
            if indent == 4 && trimmed.starts_with("- ") {
                count += 1;
            }
        }
    }
    assert!(count > 0, "{}: no sources found", recipe.display());
    count
}

/// `--set` overrides shrinking `recipe` to a toy run on the sample data under `dir`.
fn shrink(recipe: &Path, dir: &Path, run_dir: &Path) -> Vec<String> {
    let sample = dir.join("data/sample");
    let mut sets: Vec<String> = [
        "model.vocab_size=512",
        "model.padding_index=null",
        "model.num_transformer_layers=2",
        "model.model_dim=64",
        "model.head_dim=16",
        "data.seq_len=32",
        "data.workers=1",
        "data.corenet.min_tokens=8",
        "data.corenet.min_characters=20",
        "trainer.global_batch=4",
        "trainer.micro_batch=2",
        "trainer.threads=1",
        "trainer.device=cpu",
        "logging.progress=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sets.push(format!(
        "data.tokenizer={}",
        sample.join("tokenizer.json").display()
    ));
    sets.push(format!("run.dir={}", run_dir.display()));
    for i in 0..source_count(recipe) {
        let (glob, key) = SAMPLE_GROUPS[i % SAMPLE_GROUPS.len()];
        sets.push(format!(
            "data.sources.{i}.paths=[{}]",
            sample.join(glob).display()
        ));
        sets.push(format!("data.sources.{i}.text_key={key}"));
    }
    sets
}

fn dry_run(recipe: &Path, dir: &Path, sets: &[String], extra: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(corenet_bin());
    cmd.current_dir(dir)
        .arg("train")
        .arg(recipe)
        .arg("--dry-run");
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.args(extra)
        .output()
        .expect("run corenet train --dry-run")
}

fn loss(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("dry run ok"))
        .unwrap_or_else(|| panic!("no `dry run ok` line in {stdout}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no loss in {line}"))
}

#[test]
fn every_recipe_passes_a_dry_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let recipes = recipes();
    let names: Vec<String> = recipes
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    for size in ["270M", "450M", "1_1B", "3B"] {
        assert!(names.contains(&format!("openelm-{size}.yaml")), "{names:?}");
    }
    for recipe in &recipes {
        let run_dir = dir
            .path()
            .join("runs")
            .join(recipe.file_stem().expect("stem"));
        let sets = shrink(recipe, dir.path(), &run_dir);
        let out = dry_run(recipe, dir.path(), &sets, &["--world-size", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}\n{stdout}",
            recipe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let loss = loss(&stdout);
        // A 512-way softmax starts near ln 512 ≈ 6.24 (plus a small z-loss).
        assert!(
            loss.is_finite() && loss > 1.0 && loss < 20.0,
            "{}: loss {loss}",
            recipe.display()
        );
        assert!(
            stdout.contains("1 micro-batch(es) of 2 × 2 rank(s)"),
            "{stdout}"
        );
        assert!(
            !run_dir.exists(),
            "{}: dry run wrote {}",
            recipe.display(),
            run_dir.display()
        );
    }
}

#[test]
fn dry_run_names_a_missing_shard_and_a_bad_batch_split() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let recipe = workspace_root().join("recipes/openelm-270M.yaml");
    let run_dir = dir.path().join("runs/missing");
    let missing = dir
        .path()
        .join("data/openelm/pile/pile-00000-of-01650.parquet");
    let mut sets = shrink(&recipe, dir.path(), &run_dir);
    sets.push(format!("data.sources.2.paths=[{}]", missing.display()));
    let out = dry_run(&recipe, dir.path(), &sets, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("data.sources.2.paths"),
        "{stderr}"
    );
    assert!(stderr.contains("matches no file"), "{stderr}");
    assert!(!run_dir.exists());

    // 4 sequences do not split into micro-batches of 2 over 3 ranks.
    let sets = shrink(&recipe, dir.path(), &run_dir);
    let out = dry_run(&recipe, dir.path(), &sets, &["--world-size", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("trainer.global_batch") && stderr.contains("world size 3"),
        "{stderr}"
    );
}

#[test]
fn dry_run_loads_a_sentencepiece_model_and_checks_it_against_the_vocabulary() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let recipe = workspace_root().join("recipes/openelm-270M.yaml");
    let run_dir = dir.path().join("runs/spm");
    // 512 SentencePiece pieces; the pad id is 512, as LLaMA's is 32000.
    let spm = workspace_root().join("crates/data/tests/fixtures/spm_bpe.model");
    let mut sets = shrink(&recipe, dir.path(), &run_dir);
    sets.push(format!("data.tokenizer={}", spm.display()));
    sets.push("model.vocab_size=640".into());
    let out = dry_run(&recipe, dir.path(), &sets, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tokenizer: 512 ids, model vocabulary 640"),
        "{stdout}"
    );
    assert!(loss(&stdout).is_finite());

    // The pad id 512 needs a 513th embedding row.
    sets.push("model.vocab_size=512".into());
    let out = dry_run(&recipe, dir.path(), &sets, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("model.vocab_size") && stderr.contains("pads with id 512"),
        "{stderr}"
    );
    assert!(!run_dir.exists());
}

/// The PEFT recipes (recipes/peft) on CommonSense-style records through their `alpaca` template,
/// the adapters shrunk with the model.
#[test]
fn every_peft_recipe_passes_a_dry_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let records = dir.path().join("commonsense.jsonl");
    let lines: Vec<String> = (0..64)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Does the queen {i} rise by night? Answer true or false."),
                "input": "",
                "output": "the correct answer is true",
                "answer": "true",
            })
            .to_string()
        })
        .collect();
    std::fs::write(&records, lines.join("\n")).expect("records");
    dry_run_each(
        "recipes/peft",
        8,
        dir.path(),
        &records,
        &["peft.rank=8"],
        |recipe, loss| {
            assert!(
                loss.is_finite() && loss > 1.0 && loss < 20.0,
                "{}: loss {loss}",
                recipe.display()
            );
        },
    );
}

/// Dry-runs the `expected` recipes of `folder`, shrunk, their one source reading `records`
/// (plus `extra` settings) on 2 ranks; `check` judges each one's loss.
fn dry_run_each(
    folder: &str,
    expected: usize,
    dir: &Path,
    records: &Path,
    extra: &[&str],
    check: impl Fn(&Path, f64),
) {
    let recipes = recipes_in(folder);
    assert_eq!(recipes.len(), expected, "{recipes:?}");
    for recipe in &recipes {
        let run_dir = dir.join("runs").join(recipe.file_stem().expect("stem"));
        let mut sets: Vec<String> = shrink(recipe, dir, &run_dir)
            .into_iter()
            .filter(|s| !s.starts_with("data.sources.0."))
            .collect();
        sets.push(format!("data.sources.0.paths=[{}]", records.display()));
        sets.extend(extra.iter().map(|s| s.to_string()));
        let out = dry_run(recipe, dir, &sets, &["--world-size", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}\n{stdout}",
            recipe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        check(recipe, loss(&stdout));
        assert!(
            !run_dir.exists(),
            "{}: dry run wrote into the run directory",
            recipe.display()
        );
    }
}

/// The DPO recipes (recipes/instruct) on UltraFeedback-style pairs: the first step scores the
/// policy against itself as reference, so its loss is exactly the loss at a zero margin (ln 2
/// for sigmoid, 1 for hinge).
#[test]
fn every_dpo_recipe_passes_a_dry_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let pairs = dir.path().join("pairs.jsonl");
    let lines: Vec<String> = (0..32)
        .map(|i| {
            let prompt = format!("the king {i}?");
            let side = |answer: &str| {
                serde_json::json!([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
            };
            serde_json::json!({
                "prompt": prompt,
                "chosen": side("the queen rises."),
                "rejected": side("night falls on the river."),
            })
            .to_string()
        })
        .collect();
    std::fs::write(&pairs, lines.join("\n")).expect("pairs");
    // A later `data.seq_len` wins over the shrunk one: room for the chat layout.
    dry_run_each(
        "recipes/instruct",
        4,
        dir.path(),
        &pairs,
        &["data.seq_len=64"],
        |recipe, loss| {
            let text = std::fs::read_to_string(recipe).expect("recipe");
            let zero_margin = match text.contains("loss: hinge") {
                true => 1.0,
                false => std::f64::consts::LN_2,
            };
            assert!(
                (loss - zero_margin).abs() < 1e-4,
                "{}: loss {loss}",
                recipe.display()
            );
        },
    );
}

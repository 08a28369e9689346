//! Validation during training on the tiny real setup: the loss equals `corenet eval
//! perplexity`'s on the same windows, it is bit-identical after a crash and resume, held-back
//! sets are scored, the best checkpoint survives `keep_last`, and a held-out source that
//! overlaps training is refused before any work.

mod common;
mod run_recipe;

use std::io::Write;
use std::path::Path;

use corenet_eval::{perplexity, PerplexityOptions};
use corenet_train::{Recipe, Resume, TrainOptions, Trainer};
use serde_json::{json, Value};

use run_recipe::in_run_dir;

/// Held-out documents unlike the training ones, one JSON object per line.
fn write_heldout(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("heldout.jsonl");
    let mut f = std::fs::File::create(&path).expect("create");
    let words = [
        "the", "queen", "of", "gold", "rises", "by", "night", "and", "war",
    ];
    for d in 0..60usize {
        let text: Vec<&str> = (0..30)
            .map(|i| words[(d * 7 + i * i) % words.len()])
            .collect();
        writeln!(f, "{}", json!({ "body": { "text": text.join(" ") } })).expect("write");
    }
    path
}

fn train(recipe: &Recipe, resume: Resume, stop_at: Option<u64>) -> Trainer {
    let options = TrainOptions {
        resume,
        stop_at,
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(recipe.clone(), options).expect("trainer");
    trainer.train().expect("train");
    trainer
}

fn validation_lines(run_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run_dir.join("validation.jsonl")).expect("validation.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// A recipe validating every 4 steps on `heldout.jsonl` (8 windows of 32 in batches of 3).
fn validating(base: &Value, dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    let heldout = write_heldout(dir);
    let mut tree = base.clone();
    tree["eval"] = json!({
        "interval": 4, "sequences": 8, "batch_size": 3,
        "sources": [{ "name": "heldout", "paths": [heldout], "text_key": "body.text" }]
    });
    in_run_dir(&tree, dir, name, sets)
}

#[test]
fn validation_loss_equals_eval_perplexity_on_the_same_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let recipe = validating(&base, dir.path(), "run", &[]);
    train(&recipe, Resume::Fresh, None);
    let lines = validation_lines(&recipe.run.dir);
    let steps: Vec<u64> = lines
        .iter()
        .map(|l| l["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(steps, [4, 8, 12]);
    let first = lines[0]["val_loss"].as_f64().expect("loss");
    let last = lines[2]["val_loss"].as_f64().expect("loss");
    assert!(
        last < first,
        "validation loss should fall: {first} -> {last}"
    );
    assert_eq!(lines[2]["sources"]["heldout"]["tokens"], 8 * 32);
    assert!(lines[2]["elapsed_s"].as_f64().expect("elapsed") > 0.0);

    // The checkpoint of step 8 scored the way `corenet eval perplexity` scores a shard.
    let checkpoint = recipe.checkpoint_dir().join("step-00000008");
    let (_vs, model) =
        corenet_model::pretrained::open(&checkpoint, tch::Device::Cpu).expect("checkpoint");
    let tokenizer = corenet_data::load_tokenizer(&recipe.data.tokenizer).expect("tokenizer");
    let options = PerplexityOptions {
        seq_len: 32,
        batch_size: 3,
        text_key: "body.text".into(),
        max_documents: None,
        max_sequences: Some(8),
    };
    let report = perplexity(
        &model,
        tokenizer.as_ref(),
        &dir.path().join("heldout.jsonl"),
        &options,
    )
    .expect("perplexity");
    let logged = lines[1]["sources"]["heldout"]["loss"]
        .as_f64()
        .expect("loss");
    assert_eq!(report.tokens, 8 * 32);
    assert!(
        (report.mean_nll - logged).abs() < 1e-6,
        "{} vs {logged}",
        report.mean_nll
    );
    // The checkpoint records the loss it was validated at.
    let manifest =
        corenet_train::checkpoint::store::CheckpointStore::verify(&checkpoint).expect("manifest");
    assert_eq!(manifest.metadata["validation_loss"], lines[1]["val_loss"]);
}

#[test]
fn validation_is_bit_identical_after_a_crash_and_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let straight = validating(&base, dir.path(), "straight", &[]);
    train(&straight, Resume::Fresh, None);

    let crashed = validating(&base, dir.path(), "crashed", &[]);
    train(&crashed, Resume::Fresh, Some(6));
    // As after kill -9 at step 6: its exit checkpoint never happened.
    std::fs::remove_dir_all(crashed.checkpoint_dir().join("step-00000006")).expect("remove");
    train(&crashed, Resume::Auto, None);

    let (a, b) = (
        validation_lines(&straight.run.dir),
        validation_lines(&crashed.run.dir),
    );
    assert_eq!(a.len(), 3, "{a:?}");
    assert_eq!(b.len(), 3, "one line per validation, none repeated: {b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["val_loss"], y["val_loss"], "step {}", x["step"]);
        assert_eq!(x["sources"], y["sources"], "step {}", x["step"]);
    }
}

#[test]
fn held_back_documents_are_scored_and_the_best_checkpoint_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let mut tree = base.clone();
    tree["eval"] = json!({ "interval": 4, "sequences": 4, "batch_size": 4 });
    let recipe = in_run_dir(
        &tree,
        dir.path(),
        "held",
        &[
            "data.sources.0.hold_back=0.2",
            "data.sources.1.hold_back=0.2",
            "checkpoint.keep_last=1",
            "trainer.steps=16",
            // A high constant LR after warmup: the validation loss goes up again late.
            "schedule.min_lr=0.05",
            "schedule.max_lr=0.05",
        ],
    );
    train(&recipe, Resume::Fresh, None);
    let lines = validation_lines(&recipe.run.dir);
    let names: Vec<&String> = lines[0]["sources"]
        .as_object()
        .expect("sources")
        .keys()
        .collect();
    assert_eq!(names, ["a", "b"]);
    let losses: Vec<(u64, f64)> = lines
        .iter()
        .map(|l| {
            (
                l["step"].as_u64().expect("step"),
                l["val_loss"].as_f64().expect("loss"),
            )
        })
        .collect();
    let best = losses
        .iter()
        .copied()
        .fold(None, |b: Option<(u64, f64)>, x| match b {
            Some(b) if b.1 <= x.1 => Some(b),
            _ => Some(x),
        })
        .expect("some validation");
    let store = corenet_train::checkpoint::store::CheckpointStore::new(recipe.checkpoint_dir(), 1)
        .expect("store");
    let kept: Vec<u64> = store.list().expect("list").iter().map(|e| e.step).collect();
    assert!(kept.contains(&16), "the newest is kept: {kept:?}");
    assert!(
        kept.contains(&best.0),
        "the best ({best:?}) is kept: {kept:?} of {losses:?}"
    );
    assert_eq!(kept.len(), if best.0 == 16 { 1 } else { 2 }, "{kept:?}");
    assert_eq!(store.best().map(|b| b.0), Some(best.0));
    #[cfg(unix)]
    assert_eq!(
        std::fs::read_link(recipe.checkpoint_dir().join("best")).expect("best link"),
        std::path::PathBuf::from(format!("step-{:08}", best.0))
    );
}

#[test]
fn a_held_out_source_that_overlaps_training_is_refused_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let mut tree = base.clone();
    tree["eval"] = json!({
        "interval": 4,
        "sources": [{ "name": "leak", "paths": [dir.path().join("*.jsonl")] }]
    });
    let recipe = in_run_dir(&tree, dir.path(), "leak", &[]);
    let err = Trainer::new(recipe.clone(), TrainOptions::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("eval.sources.0.paths") && err.contains("a.jsonl") && err.contains("`a`"),
        "{err}"
    );
    assert!(!recipe.checkpoint_dir().exists(), "nothing written");

    // Nothing to score at all is a recipe error.
    let mut tree = base;
    tree["eval"] = json!({ "interval": 4 });
    let err = Recipe::from_value(tree).expect_err("refused").to_string();
    assert!(
        err.contains("eval.interval") && err.contains("hold_back"),
        "{err}"
    );
}

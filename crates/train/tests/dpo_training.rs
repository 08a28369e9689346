//! DPO runs on the trainer: the first step's policy is its reference (rewards 0, sigmoid loss
//! ln 2), preference accuracy rises clearly on pairs not yet seen, the reference stays the
//! starting weights, a stopped and resumed run equals the uninterrupted one bit for bit (the
//! reference reloaded from its folder and checked), DPO composes with LoRA, and a foreign
//! reference or a recipe without pairs is refused before any step.

mod common;
mod fine_tune;
mod run_recipe;
mod same_state;

use std::path::Path;

use corenet_train::log::metrics::read_metrics;
use corenet_train::{Recipe, Resume, Trainer};
use fine_tune::{assert_base_unchanged, base_folder, error_of, options};
use serde_json::{json, Value};

/// The synthetic setup turned into a DPO recipe tree on 64 pairs (4 pairs per step in two
/// micro-batches of 2).
fn dpo_tree(dir: &Path) -> Value {
    let mut tree = common::setup(dir);
    let pairs = dir.join("pairs.jsonl");
    common::write_pairs(&pairs, 64);
    tree["data"]["sources"] = json!([{ "name": "uf", "paths": [pairs], "template": "preference" }]);
    tree["data"]["mode"] = json!("pairs");
    tree["data"]["seq_len"] = json!(48);
    tree["data"]["workers"] = json!(1);
    tree["dpo"] = json!({ "loss": "sigmoid", "beta": 0.5 });
    tree["schedule"]["max_lr"] = json!(3e-3);
    tree["optimizer"]["weight_decay"] = json!(0.0);
    tree
}

fn recipe(tree: &Value, dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    run_recipe::in_run_dir(tree, dir, name, sets)
}

fn metric(record: &corenet_train::log::metrics::MetricsRecord, key: &str) -> f64 {
    record.extras[key].as_f64().expect(key)
}

#[test]
fn dpo_raises_preference_accuracy_against_a_fixed_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dpo_tree(dir.path());
    let r = recipe(
        &tree,
        dir.path(),
        "dpo",
        &["trainer.steps=16", "checkpoint.interval=16"],
    );
    let mut trainer = Trainer::new(r, options(Resume::Fresh, None, None)).expect("trainer");
    let start = trainer.model().base_fingerprint().expect("fingerprint");
    trainer.train().expect("train");
    let metrics = read_metrics(dir.path().join("dpo/metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.len(), 16);
    // Step 1 scores the starting weights against themselves.
    let first = &metrics[0];
    assert!(
        (first.loss - std::f64::consts::LN_2).abs() < 1e-6,
        "{}",
        first.loss
    );
    assert_eq!(metric(first, "rewards/chosen"), 0.0);
    assert_eq!(metric(first, "rewards/accuracies"), 0.0);
    // Steps 13-16 see pairs 48-63 for the first time: the preference carries over.
    let late: Vec<f64> = metrics[12..]
        .iter()
        .map(|m| metric(m, "rewards/accuracies"))
        .collect();
    let mean = late.iter().sum::<f64>() / late.len() as f64;
    assert!(mean >= 0.9, "accuracy on unseen pairs {late:?}");
    let last = &metrics[15];
    assert!(metric(last, "rewards/margins") > 0.0);
    assert!(
        last.loss < 0.5 * std::f64::consts::LN_2,
        "loss {}",
        last.loss
    );
    // The reference is still the starting weights; the policy moved.
    let checkpoint = dir.path().join("dpo/checkpoints/step-00000016");
    let record =
        corenet_train::step::reference::ReferenceRecord::read(&checkpoint).expect("record");
    assert_eq!(record.fingerprint, start);
    assert_eq!(record.from, None);
    assert_ne!(trainer.model().base_fingerprint().expect("fp"), start);
}

#[test]
fn a_stopped_and_resumed_dpo_run_equals_the_uninterrupted_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dpo_tree(dir.path());
    let sets = [
        "trainer.steps=10",
        "checkpoint.interval=5",
        "dpo.loss=hinge",
    ];
    let r = recipe(&tree, dir.path(), "whole", &sets);
    let folder = dir.path().join("base");
    let _base = base_folder(&r, &folder, 21);
    let mut whole = Trainer::new(r, options(Resume::Fresh, Some(&folder), None)).expect("trainer");
    whole.train().expect("train");

    let r = recipe(&tree, dir.path(), "split", &sets);
    let mut first =
        Trainer::new(r.clone(), options(Resume::Fresh, Some(&folder), Some(5))).expect("trainer");
    first.train().expect("first half");
    drop(first);
    // No --init-from: the reference comes back from the folder the checkpoint records.
    let mut second = Trainer::new(r, options(Resume::Auto, None, None)).expect("resume");
    second.train().expect("second half");
    let split_checkpoints = dir.path().join("split/checkpoints");
    assert_eq!(same_state::steps_on_disk(&split_checkpoints), vec![5, 10]);
    same_state::assert_same_state(
        &dir.path().join("whole/checkpoints/step-00000010"),
        &dir.path().join("split/checkpoints/step-00000010"),
    );
    let losses = |name: &str| -> Vec<(f64, f64)> {
        read_metrics(dir.path().join(name).join("metrics.jsonl"))
            .expect("metrics")
            .iter()
            .map(|m| (m.loss, metric(m, "rewards/margins")))
            .collect()
    };
    assert_eq!(losses("whole"), losses("split"));
}

#[test]
fn dpo_composes_with_lora_and_leaves_the_base_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dpo_tree(dir.path());
    let sets = [
        "trainer.steps=12",
        "checkpoint.interval=12",
        "peft.rank=4",
        "peft.alpha=8",
        "schedule.max_lr=1e-2",
    ];
    let r = recipe(&tree, dir.path(), "lora", &sets);
    let folder = dir.path().join("base");
    let (_vs, source) = base_folder(&r, &folder, 5);
    let mut trainer = Trainer::new(r, options(Resume::Fresh, Some(&folder), None)).expect("t");
    trainer.train().expect("train");
    assert_base_unchanged(trainer.model(), &source);
    let metrics = read_metrics(dir.path().join("lora/metrics.jsonl")).expect("metrics");
    let (first, last) = (&metrics[0], &metrics[11]);
    assert!((first.loss - std::f64::consts::LN_2).abs() < 1e-6);
    assert!(last.loss < first.loss, "{} -> {}", first.loss, last.loss);
    assert!(metric(last, "rewards/margins") > 0.0);
}

#[test]
fn a_foreign_reference_or_a_recipe_without_pairs_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dpo_tree(dir.path());
    let sets = ["trainer.steps=4", "checkpoint.interval=2"];
    let r = recipe(&tree, dir.path(), "run", &sets);
    let folder = dir.path().join("base");
    let _base = base_folder(&r, &folder, 8);
    let mut t = Trainer::new(r.clone(), options(Resume::Fresh, Some(&folder), Some(2))).expect("t");
    t.train().expect("train");
    drop(t);
    let other = dir.path().join("other");
    let _other = base_folder(&r, &other, 9);
    let err = error_of(Trainer::new(r, options(Resume::Auto, Some(&other), None)));
    assert!(err.contains("reference"), "{err}");

    let mut no_pairs = tree.clone();
    no_pairs["data"]["mode"] = json!("corenet");
    no_pairs["data"]["sources"][0]["template"] = json!("chat");
    let recipe_tree = {
        let mut t = no_pairs.clone();
        t["run"]["dir"] = json!(dir.path().join("bad"));
        t
    };
    let err = Recipe::from_value(recipe_tree).expect_err("dpo without pairs");
    assert!(err.to_string().contains("mode: pairs"), "{err}");
}

//! Checkpoints written by every rank of a 2-rank Gloo run (the per-rank layout) in the
//! background: exact resume on 2 ranks, a restore on 1 rank and back that reproduces every
//! tensor, a rank killed during a save, and a full disk on one rank.

mod common;
mod ranks;
mod same_state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corenet_train::checkpoint::average::average_checkpoints;
use corenet_train::checkpoint::contents::read_tensors;
use corenet_train::checkpoint::store::{CheckpointEntry, CheckpointStore};
use corenet_train::log::metrics::read_metrics;
use corenet_train::{Resume, TrainOptions, Trainer};
use ranks::*;
use serde_json::Value;

/// 8 steps, a background checkpoint every 2, all kept.
fn setup(dir: &Path, sets: &[&str]) -> Value {
    let mut all = vec![
        "data.workers=1",
        "trainer.steps=8",
        "checkpoint.interval=2",
        "checkpoint.keep_last=0",
        "checkpoint.background=true",
    ];
    all.extend_from_slice(sets);
    recipe_tree(&base(dir), &all)
}

fn in_dir(tree: &Value, dir: &Path) -> Value {
    recipe_tree(tree, &[&format!("run.dir={}", dir.display())])
}

fn checkpoint(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(format!("checkpoints/step-{step:08}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn losses(run_dir: &Path) -> Vec<(u64, f64, f64)> {
    read_metrics(run_dir.join("metrics.jsonl"))
        .expect("metrics")
        .iter()
        .map(|m| (m.step, m.loss, m.grad_norm))
        .collect()
}

#[test]
fn per_rank_background_checkpoints_resume_exactly() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    per_rank_checkpoints_resume("per_rank_background_checkpoints_resume_exactly", &[]);
}

#[test]
fn per_rank_background_checkpoints_resume_exactly_with_zero1() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    per_rank_checkpoints_resume(
        "per_rank_background_checkpoints_resume_exactly_with_zero1",
        &["trainer.sharded_optimizer=true"],
    );
}

fn per_rank_checkpoints_resume(test: &str, sets: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = setup(dir.path(), sets);
    let straight = dir.path().join("straight");
    train_2_ranks(test, dir.path(), &in_dir(&tree, &straight), no_env, 8);
    assert_eq!(
        same_state::steps_on_disk(&straight.join("checkpoints")),
        vec![2, 4, 6, 8]
    );

    // Every rank wrote its own files; one manifest lists them all.
    let at_4 = checkpoint(&straight, 4);
    let manifest = CheckpointStore::verify(&at_4).expect("verifies");
    let files: Vec<&str> = manifest.files.keys().map(String::as_str).collect();
    for part in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "optimizer-00001-of-00002.safetensors",
        "optimizer-00002-of-00002.safetensors",
        "optimizer.index.json",
        "train_state.json",
    ] {
        assert!(files.contains(&part), "{part} not in {files:?}");
    }
    assert!(!files.contains(&"model.safetensors"), "{files:?}");
    assert_eq!(manifest.metadata["layout"], "per-rank");
    let text = std::fs::read_to_string(straight.join("checkpoints.jsonl")).expect("records");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(records.len(), 4, "{text}");
    assert!(records.iter().all(|r| r["background"] == true), "{text}");

    // What reads a checkpoint's weights reads the parts: loading (generate, eval, export,
    // --init-from) and averaging.
    let (_vs, model) = corenet_model::pretrained::open(&at_4, tch::Device::Cpu).expect("open");
    let saved = read_tensors(&at_4).expect("read").model;
    let mut loaded = model.named_parameters();
    loaded.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(saved
        .iter()
        .zip(&loaded)
        .all(|((a, x), (b, y))| a == b && x.equal(y)));
    let avg = dir.path().join("avg");
    let entry = |step| CheckpointEntry {
        step,
        dir: checkpoint(&straight, step),
    };
    average_checkpoints(&[entry(4), entry(4)], &avg).expect("average");
    let mut averaged = corenet_model::load_tensors(&avg.join("model.safetensors")).expect("load");
    averaged.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(saved
        .iter()
        .zip(&averaged)
        .all(|((a, x), (b, y))| a == b && x.equal(y)));

    // Stopped at 5 (a checkpoint at 4, another at the stop) and resumed on 2 ranks: bit-exact.
    let split = dir.path().join("split");
    let split_tree = in_dir(&tree, &split);
    let stop = |_| HashMap::from([(STOP_AT_VAR, "5".to_string())]);
    train_2_ranks(test, dir.path(), &split_tree, stop, 5);
    assert_eq!(
        same_state::steps_on_disk(&split.join("checkpoints")),
        vec![2, 4, 5]
    );
    let resume = |_| HashMap::from([(RESUME_VAR, "auto".to_string())]);
    train_2_ranks(test, dir.path(), &split_tree, resume, 8);
    same_state::assert_same_state(&checkpoint(&straight, 8), &checkpoint(&split, 8));
    assert_eq!(losses(&straight), losses(&split));

    // 2 ranks -> 1 process: the restored state, saved again, is the checkpoint's bit for bit.
    let one = dir.path().join("one");
    let one_recipe = recipe(&in_dir(&tree, &one), &["data.workers=2"]);
    let options = TrainOptions {
        resume: Resume::Path(at_4.clone()),
        stop_at: Some(4),
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(one_recipe, options).expect("resume on 1 rank");
    trainer.save().expect("save on 1 rank");
    // Takes no step (stop_at is the resumed step); waits for the background save.
    trainer.train().expect("finish the save");
    let one_4 = checkpoint(&one, 4);
    assert!(
        one_4.join("model.safetensors").is_file(),
        "one process writes one file"
    );
    same_state::assert_same_state(&at_4, &one_4);

    // ... and back to 2 ranks.
    let back = dir.path().join("back");
    copy_dir(&one_4, &checkpoint(&back, 4));
    let again = |_| {
        HashMap::from([
            (RESUME_VAR, "auto".to_string()),
            (STOP_AT_VAR, "4".to_string()),
            (SAVE_NOW_VAR, "1".to_string()),
        ])
    };
    train_2_ranks(test, dir.path(), &in_dir(&tree, &back), again, 4);
    let back_4 = checkpoint(&back, 4);
    assert!(
        back_4.join("optimizer.index.json").is_file(),
        "2 ranks write their parts"
    );
    same_state::assert_same_state(&one_4, &back_4);
}

/// Kills `victim` while its part of the step-4 save is written (held back by a slow disk): the
/// other rank fails, the step-2 checkpoint stays the newest, and resuming from it reaches the
/// straight run's state bit for bit.
fn kill_during_save(test: &str, victim: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = setup(dir.path(), &[]);
    let straight = dir.path().join("straight");
    train_2_ranks(test, dir.path(), &in_dir(&tree, &straight), no_env, 8);

    let killed = dir.path().join("killed");
    let killed_tree = in_dir(&tree, &killed);
    let slow = move |rank| match rank == victim {
        true => HashMap::from([(FAULT_VAR, "slow-30000@4".to_string())]),
        false => HashMap::new(),
    };
    let mut ranks = spawn_ranks(test, dir.path(), &killed_tree, 2, slow);
    let part = killed
        .join("checkpoints/.tmp-step-00000004")
        .join(format!("optimizer-{:05}-of-00002.safetensors", victim + 1));
    let start = Instant::now();
    while !part.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no save at step 4:\n{}",
            ranks.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    ranks.children[victim].kill().expect("SIGKILL");
    let results = ranks.wait(Duration::from_secs(120));
    let survivor = 1 - victim;
    assert_ne!(
        results[survivor].code,
        Some(0),
        "rank {survivor} should fail"
    );
    assert_eq!(
        same_state::steps_on_disk(&killed.join("checkpoints")),
        vec![2]
    );

    let resume = |_| HashMap::from([(RESUME_VAR, "auto".to_string())]);
    train_2_ranks(test, dir.path(), &killed_tree, resume, 8);
    same_state::assert_same_state(&checkpoint(&straight, 8), &checkpoint(&killed, 8));
}

#[test]
fn rank_1_killed_during_a_background_save_leaves_the_previous_checkpoint() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    kill_during_save(
        "rank_1_killed_during_a_background_save_leaves_the_previous_checkpoint",
        1,
    );
}

#[test]
fn rank_0_killed_during_a_background_save_leaves_the_previous_checkpoint() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    kill_during_save(
        "rank_0_killed_during_a_background_save_leaves_the_previous_checkpoint",
        0,
    );
}

/// Rank 1's disk fills during the step-4 save: both ranks stop with an error that says so,
/// nothing of step 4 is left, and the failure is in `checkpoints.jsonl`.
#[test]
fn a_full_disk_on_one_rank_stops_every_rank() {
    let test = "a_full_disk_on_one_rank_stops_every_rank";
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("full");
    let full = |rank| match rank {
        1 => HashMap::from([(FAULT_VAR, "disk-full@4".to_string())]),
        _ => HashMap::new(),
    };
    let results = spawn_ranks(
        test,
        dir.path(),
        &in_dir(&setup(dir.path(), &[]), &run),
        2,
        full,
    )
    .wait(Duration::from_secs(120));
    for (rank, r) in results.iter().enumerate() {
        assert_eq!(r.code, Some(3), "rank {rank}:\n{}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("step 4") && r.stdout.contains("No space left on device"),
            "rank {rank}:\n{}",
            r.stdout
        );
    }
    assert!(
        results[0].stdout.contains("rank 1"),
        "{}",
        results[0].stdout
    );
    assert_eq!(same_state::steps_on_disk(&run.join("checkpoints")), vec![2]);
    let leftovers: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let text = std::fs::read_to_string(run.join("checkpoints.jsonl")).expect("records");
    let last: Value = serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    assert_eq!(last["step"], 4, "{text}");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space")),
        "{text}"
    );
    let metrics = read_metrics(run.join("metrics.jsonl")).expect("metrics");
    assert!(
        metrics.last().is_some_and(|m| m.step < 8),
        "trained on after the failure"
    );
}

//! Checkpoints written on a background thread (`checkpoint.background`) by one process: they
//! hold what a foreground save holds, the step loop does not wait for the write, SIGTERM waits
//! for the save in flight, and a disk that fills stops the run with its last good checkpoint.

mod common;
mod same_state;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use corenet_train::checkpoint::store::CheckpointStore;
use corenet_train::checkpoint::{CheckpointFault, FaultKind};
use corenet_train::log::metrics::read_metrics;
use corenet_train::recipe::overrides::Override;
use corenet_train::{Recipe, RunSummary, TrainOptions, Trainer};
use serde_json::Value;

/// The tiny setup, 8 steps with a checkpoint every 2, in `dir/name`.
fn recipe(dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    let mut tree = common::setup(dir);
    let run_dir = format!("run.dir={}", dir.join(name).display());
    let all = [
        "trainer.steps=8",
        "checkpoint.interval=2",
        "checkpoint.keep_last=0",
        run_dir.as_str(),
    ];
    for s in all.iter().chain(sets) {
        Override::parse(s)
            .expect("override")
            .apply(&mut tree)
            .expect("apply");
    }
    Recipe::from_value(tree).expect("recipe")
}

fn train(
    recipe: &Recipe,
    fault: Option<CheckpointFault>,
) -> (Trainer, corenet_train::Result<RunSummary>) {
    let options = TrainOptions {
        world_size: 1,
        inject_checkpoint_fault: fault,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(recipe.clone(), options).expect("trainer");
    let outcome = trainer.train();
    (trainer, outcome)
}

/// `checkpoints.jsonl` of a run.
fn save_lines(recipe: &Recipe) -> Vec<Value> {
    let text = std::fs::read_to_string(recipe.log_dir().join("checkpoints.jsonl")).expect("read");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// Nothing of a failed or unfinished save is left behind.
fn no_debris(recipe: &Recipe) {
    for entry in std::fs::read_dir(recipe.checkpoint_dir()).expect("list") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        assert!(!name.starts_with(".tmp-"), "left behind: {name}");
    }
}

#[test]
fn background_saves_hold_what_foreground_saves_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fore = recipe(dir.path(), "fore", &[]);
    let back = recipe(dir.path(), "back", &["checkpoint.background=true"]);
    let (_, a) = train(&fore, None);
    let (_, b) = train(&back, None);
    assert_eq!(a.expect("foreground").final_step, 8);
    assert_eq!(b.expect("background").final_step, 8);
    assert_eq!(
        same_state::steps_on_disk(&fore.checkpoint_dir()),
        vec![2, 4, 6, 8]
    );
    assert_eq!(
        same_state::steps_on_disk(&back.checkpoint_dir()),
        vec![2, 4, 6, 8]
    );
    for step in [2, 4, 6, 8] {
        let dir_of = |r: &Recipe| r.checkpoint_dir().join(format!("step-{step:08}"));
        CheckpointStore::verify(dir_of(&back)).expect("verifies");
        same_state::assert_same_state(&dir_of(&fore), &dir_of(&back));
    }
    let (ma, mb) = (
        read_metrics(fore.log_dir().join("metrics.jsonl")).expect("metrics"),
        read_metrics(back.log_dir().join("metrics.jsonl")).expect("metrics"),
    );
    let losses = |m: &[corenet_train::log::metrics::MetricsRecord]| {
        m.iter().map(|r| (r.step, r.loss)).collect::<Vec<_>>()
    };
    assert_eq!(losses(&ma), losses(&mb));
    // One line per save with its costs, marked by mode.
    for (r, background) in [(&fore, false), (&back, true)] {
        let lines = save_lines(r);
        let steps: Vec<u64> = lines
            .iter()
            .map(|l| l["step"].as_u64().expect("step"))
            .collect();
        assert_eq!(steps, vec![2, 4, 6, 8]);
        for l in &lines {
            assert_eq!(l["background"], background, "{l}");
            assert!(l["write_s"].as_f64().expect("write_s") > 0.0, "{l}");
            assert!(l["stall_s"].as_f64().expect("stall_s") >= 0.0, "{l}");
            assert!(l["bytes"].as_u64().expect("bytes") > 100_000, "{l}");
        }
    }
    no_debris(&back);
}

/// A write slowed to 1.5 s blocks the foreground step loop for all of it, the background one
/// only for the host copy; the record says so.
#[test]
fn a_slow_write_stalls_only_a_foreground_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow = Some(CheckpointFault {
        step: 2,
        kind: FaultKind::Slow(Duration::from_millis(1500)),
    });
    for (name, background) in [("fore", false), ("back", true)] {
        let set = format!("checkpoint.background={background}");
        let r = recipe(dir.path(), name, &[&set]);
        let (_, outcome) = train(&r, slow);
        assert_eq!(outcome.expect("train").final_step, 8);
        let line = &save_lines(&r)[0];
        let (stall, write) = (
            line["stall_s"].as_f64().expect("stall"),
            line["write_s"].as_f64().expect("write"),
        );
        assert!(write >= 1.5, "{name}: {line}");
        match background {
            false => assert!(stall >= 1.5, "{name}: {line}"),
            true => assert!(stall < 1.0 && stall < write, "{name}: {line}"),
        }
    }
}

/// A stop request while a save is being written: the run waits for it, writes the stop's
/// checkpoint after it, and leaves both complete.
#[test]
fn a_stop_waits_for_the_save_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = recipe(dir.path(), "run", &["checkpoint.background=true"]);
    let options = TrainOptions {
        world_size: 1,
        inject_checkpoint_fault: Some(CheckpointFault {
            step: 2,
            kind: FaultKind::Slow(Duration::from_millis(1500)),
        }),
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(r.clone(), options).expect("trainer");
    let flag = trainer.stop_flag();
    let tmp = r.checkpoint_dir().join(".tmp-step-00000002");
    let watcher = std::thread::spawn(move || {
        // Stop as soon as the step-2 save is on its way (the signal handler's doing in a run).
        while !tmp.exists() {
            std::thread::sleep(Duration::from_millis(2));
        }
        flag.store(true, Ordering::SeqCst);
    });
    let summary = trainer.train().expect("train");
    watcher.join().expect("watcher");
    assert!(summary.interrupted);
    let stopped = summary.final_step;
    assert!((2..8).contains(&stopped), "stopped at {stopped}");
    let steps = same_state::steps_on_disk(&r.checkpoint_dir());
    assert_eq!(steps.first(), Some(&2), "{steps:?}");
    assert_eq!(steps.last(), Some(&stopped), "{steps:?}");
    for step in steps {
        CheckpointStore::verify(r.checkpoint_dir().join(format!("step-{step:08}")))
            .expect("verifies");
    }
    no_debris(&r);
}

/// ENOSPC in the middle of the step-4 save: the run stops with an error naming the step and
/// the cause, `checkpoints.jsonl` records it, and the step-2 checkpoint stays the newest.
#[test]
fn a_full_disk_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = Some(CheckpointFault {
        step: 4,
        kind: FaultKind::DiskFull,
    });
    for (name, background) in [("fore", false), ("back", true)] {
        let set = format!("checkpoint.background={background}");
        let r = recipe(dir.path(), name, &[&set]);
        let (_, outcome) = train(&r, full);
        let message = outcome.expect_err("a full disk stops the run").to_string();
        assert!(
            message.contains("step 4") && message.contains("No space left on device"),
            "{name}: {message}"
        );
        assert_eq!(
            same_state::steps_on_disk(&r.checkpoint_dir()),
            vec![2],
            "{name}"
        );
        no_debris(&r);
        let lines = save_lines(&r);
        let failed = lines.last().expect("a line");
        assert_eq!(failed["step"], 4, "{name}: {failed}");
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|e| e.contains("No space")),
            "{failed}"
        );
        // Training did not write on: at most the step in flight after the failure was seen.
        let metrics = read_metrics(r.log_dir().join("metrics.jsonl")).expect("metrics");
        let last = metrics.last().map_or(0, |m| m.step);
        assert!(last <= 6, "{name}: trained on to step {last}");
    }
}

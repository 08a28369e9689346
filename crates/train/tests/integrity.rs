//! What the trainer refuses to trust or overwrite: checkpoints that fail verification (no
//! silent restart; quarantine, never deletion; keep_last counts valid ones only), a second
//! writer on one run directory, non-finite weights at `--init-from`, and the recipe hash that
//! ignores where a run lives.

mod common;
mod run_recipe;

use std::path::{Path, PathBuf};

use corenet_train::checkpoint::run_lock::LOCK_FILE;
use corenet_train::checkpoint::store::{CheckpointStore, LATEST, QUARANTINE_DIR};
use corenet_train::{Error, Recipe, Resume, TrainOptions, Trainer};
use serde_json::Value;

fn recipe(base: &Value, dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    run_recipe::in_run_dir(base, dir, name, sets)
}

fn options(resume: Resume, stop_at: Option<u64>) -> TrainOptions {
    TrainOptions {
        resume,
        stop_at,
        world_size: 1,
        ..TrainOptions::default()
    }
}

fn train(r: &Recipe, resume: Resume, stop_at: Option<u64>) -> corenet_train::RunSummary {
    let mut trainer = Trainer::new(r.clone(), options(resume, stop_at)).expect("trainer");
    trainer.train().expect("train")
}

fn step_dirs(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    names.sort();
    names
}

fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

fn model_file(r: &Recipe, step: u64) -> PathBuf {
    r.checkpoint_dir()
        .join(format!("step-{step:08}"))
        .join("model.safetensors")
}

#[test]
fn when_no_checkpoint_verifies_auto_resume_refuses_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = common::setup(tmp.path());
    let r = recipe(&base, tmp.path(), "all_bad", &[]);
    train(&r, Resume::Fresh, Some(8));
    for step in [4, 8] {
        flip_last_byte(&model_file(&r, step));
    }
    let metrics_before = std::fs::read(r.run.dir.join("metrics.jsonl")).expect("metrics");

    let err = match Trainer::new(r.clone(), options(Resume::Auto, None)) {
        Ok(_) => panic!("auto-resume must refuse when every checkpoint is corrupt"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, Error::Checkpoint { .. }), "{text}");
    for step in ["step-00000004", "step-00000008"] {
        assert!(text.contains(step), "names {step}: {text}");
    }
    assert!(text.contains("--resume none"), "{text}");
    // The evidence is where it was, and the run's metrics were not touched.
    assert_eq!(
        step_dirs(&r.checkpoint_dir()),
        ["step-00000004", "step-00000008"]
    );
    assert_eq!(
        std::fs::read(r.run.dir.join("metrics.jsonl")).expect("metrics"),
        metrics_before
    );

    // Starting over is explicit, and moves the bad ones aside instead of deleting them.
    let summary = train(&r, Resume::Fresh, Some(4));
    assert_eq!((summary.start_step, summary.final_step), (0, 4));
    let quarantine = r.checkpoint_dir().join(QUARANTINE_DIR);
    assert_eq!(step_dirs(&quarantine), ["step-00000004", "step-00000008"]);
    assert_eq!(step_dirs(&r.checkpoint_dir()), ["step-00000004"]);
    CheckpointStore::verify(r.checkpoint_dir().join("step-00000004")).expect("new one verifies");
}

#[test]
fn invalid_checkpoints_never_cost_a_valid_one_its_place_in_keep_last() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = common::setup(tmp.path());
    // Checkpoints every 2 steps, keep 2: steps 2, 4, 6, 8 are written, 6 and 8 kept.
    let sets = ["checkpoint.interval=2", "checkpoint.keep_last=2"];
    let r = recipe(&base, tmp.path(), "keep", &sets);
    train(&r, Resume::Fresh, Some(8));
    assert_eq!(
        step_dirs(&r.checkpoint_dir()),
        ["step-00000006", "step-00000008"]
    );
    // Step 8 goes bad, and a hand-made step-00000099 without a manifest appears.
    flip_last_byte(&model_file(&r, 8));
    let stray = r.checkpoint_dir().join("step-00000099");
    std::fs::create_dir(&stray).expect("mkdir");
    std::fs::write(stray.join("note.txt"), b"not a checkpoint").expect("write");

    let summary = train(&r, Resume::Auto, Some(10));
    assert_eq!(summary.start_step, 6, "resumed from the newest valid one");
    let root = r.checkpoint_dir();
    // Both invalid directories were moved aside (not deleted), and the valid ones kept are
    // the newest two valid checkpoints: the resumed-from step 6 would have been pruned had the
    // invalid ones counted.
    assert_eq!(
        step_dirs(&root.join(QUARANTINE_DIR)),
        ["step-00000008", "step-00000099"]
    );
    assert_eq!(step_dirs(&root), ["step-00000008", "step-00000010"]);
    for dir in step_dirs(&root) {
        CheckpointStore::verify(root.join(dir)).expect("kept checkpoints verify");
    }
    assert!(root
        .join(QUARANTINE_DIR)
        .join("step-00000099/note.txt")
        .is_file());
    // `latest` names the newest valid checkpoint.
    let latest = root.join(LATEST);
    assert_eq!(
        std::fs::canonicalize(&latest).expect("latest resolves"),
        std::fs::canonicalize(root.join("step-00000010")).expect("step 10")
    );
}

#[test]
fn incomplete_directories_are_not_pruned_or_counted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = common::setup(tmp.path());
    let sets = ["checkpoint.interval=2", "checkpoint.keep_last=2"];
    let r = recipe(&base, tmp.path(), "stray", &sets);
    train(&r, Resume::Fresh, Some(2));
    // A directory without a manifest, older than anything the run will save.
    let stray = r.checkpoint_dir().join("step-00000001");
    std::fs::create_dir(&stray).expect("mkdir");
    train(&r, Resume::Auto, Some(8));
    assert_eq!(
        step_dirs(&r.checkpoint_dir()),
        ["step-00000001", "step-00000006", "step-00000008"],
        "keep_last=2 valid checkpoints, the incomplete one left for a human"
    );
}

#[test]
fn a_second_trainer_on_the_same_run_directory_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = common::setup(tmp.path());
    let r = recipe(&base, tmp.path(), "shared", &[]);
    let first = Trainer::new(r.clone(), options(Resume::Auto, None)).expect("first");
    let err = match Trainer::new(r.clone(), options(Resume::Auto, None)) {
        Ok(_) => panic!("a second writer must be refused"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, Error::RunLocked { .. }), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(r.run.dir.join(LOCK_FILE).is_file());
    drop(first);
    let mut again = Trainer::new(r, options(Resume::Auto, Some(2))).expect("free after drop");
    again.train().expect("train");
}

#[test]
fn a_resume_path_that_does_not_exist_says_so_and_creates_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = common::setup(tmp.path());
    let r = recipe(&base, tmp.path(), "never", &[]);
    let missing = tmp.path().join("no-such-checkpoint");
    let err = match Trainer::new(r.clone(), options(Resume::Path(missing.clone()), None)) {
        Ok(_) => panic!("must refuse"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("does not exist") && err.contains("no-such-checkpoint"),
        "{err}"
    );
    assert!(!r.run.dir.exists(), "nothing created for a failed start");
}

#[test]
fn the_recipe_hash_ignores_where_the_run_lives_and_records_an_accepted_change() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = common::setup(tmp.path());
    let a = recipe(&base, tmp.path(), "here", &[]);
    let b = recipe(
        &base,
        tmp.path(),
        "there",
        &["logging.interval=5", "checkpoint.keep_last=1"],
    );
    assert_eq!(
        a.hash(),
        b.hash(),
        "run dir, logging and retention are not training"
    );
    let c = recipe(&base, tmp.path(), "here", &["optimizer.weight_decay=0.2"]);
    assert_ne!(a.hash(), c.hash());

    // A deliberate change on resume: the next checkpoint records the new hash.
    train(&a, Resume::Fresh, Some(4));
    train(&c, Resume::Auto, Some(8));
    let state: Value = serde_json::from_slice(
        &std::fs::read(a.checkpoint_dir().join("step-00000008/train_state.json")).expect("state"),
    )
    .expect("json");
    assert_eq!(state["recipe_hash"], c.hash());
}

#[test]
fn non_finite_weights_are_an_error_at_init_from() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = common::setup(tmp.path());
    let r = recipe(&base, tmp.path(), "src", &[]);
    train(&r, Resume::Fresh, Some(4));
    // An HF-style folder whose weights hold a NaN (no manifest to catch it).
    let folder = tmp.path().join("nan_folder");
    std::fs::create_dir(&folder).expect("mkdir");
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let model = corenet_model::OpenElm::new(&vs.root(), &r.model).expect("model");
    corenet_model::hf::export_hf(&model, &folder, None).expect("export");
    let mut tensors = corenet_model::load_tensors(&folder.join("model.safetensors")).expect("load");
    let (name, t) = &mut tensors[1];
    let name = name.clone();
    let _ = t.view(-1).get(0).fill_(f64::NAN);
    corenet_model::save_tensors(&tensors, &folder.join("model.safetensors")).expect("save");

    let fresh = recipe(&base, tmp.path(), "dst", &[]);
    let init = TrainOptions {
        init_from: Some(folder),
        ..options(Resume::Fresh, None)
    };
    let err = match Trainer::new(fresh, init) {
        Ok(_) => panic!("NaN weights must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("non-finite") && err.contains(&name), "{err}");
}

/// Weights are as readable as the JSON next to them: every file of a checkpoint has the mode a
/// plain create under this process's umask gives.
#[cfg(unix)]
#[test]
fn checkpoint_files_honour_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = common::setup(tmp.path());
    let r = recipe(&base, tmp.path(), "modes", &[]);
    train(&r, Resume::Fresh, Some(4));
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, b"x").expect("probe");
    let want = std::fs::metadata(&probe)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    let dir = r.checkpoint_dir().join("step-00000004");
    for entry in std::fs::read_dir(&dir).expect("list") {
        let entry = entry.expect("entry");
        let mode = entry.metadata().expect("stat").permissions().mode() & 0o777;
        assert_eq!(
            mode,
            want,
            "{} has mode {mode:o}, a plain file {want:o}",
            entry.file_name().to_string_lossy()
        );
    }
}

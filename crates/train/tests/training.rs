//! The trainer end to end on a tiny real setup: exact resume (clean stop, crash between
//! checkpoints, corrupted newest checkpoint), non-finite steps, logs, and recipe errors.

mod common;
mod tensorboard_reader;

use std::collections::BTreeSet;
use std::path::Path;

use corenet_train::checkpoint::{TrainState, STATE_FILE};
use corenet_train::log::metrics::read_metrics;
use corenet_train::recipe::overrides::Override;
use corenet_train::{Recipe, Resume, TrainOptions, Trainer};
use serde_json::Value;
use tensorboard_reader::read_events;

fn recipe(value: &Value, sets: &[&str]) -> Recipe {
    let mut tree = value.clone();
    for s in sets {
        Override::parse(s)
            .expect("override")
            .apply(&mut tree)
            .expect("apply");
    }
    Recipe::from_value(tree).expect("recipe")
}

/// `base` with `sets` applied and its own run directory `dir/name`.
fn in_dir(base: &Value, dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    let run_dir = format!("run.dir={}", dir.join(name).display());
    let all: Vec<&str> = std::iter::once(run_dir.as_str())
        .chain(sets.iter().copied())
        .collect();
    recipe(base, &all)
}

fn run(
    recipe: &Recipe,
    resume: Resume,
    stop_at: Option<u64>,
) -> (Trainer, corenet_train::RunSummary) {
    let options = TrainOptions {
        resume,
        stop_at,
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(recipe.clone(), options).expect("trainer");
    let summary = trainer.train().expect("train");
    (trainer, summary)
}

/// The step of the newest checkpoint of `r` that verifies.
fn newest_checkpoint_step(r: &Recipe) -> u64 {
    corenet_train::checkpoint::store::CheckpointStore::new(r.checkpoint_dir(), 0)
        .expect("store")
        .latest_valid()
        .expect("list")
        .expect("a checkpoint")
        .step
}

fn assert_same_weights(a: &Trainer, b: &Trainer) {
    for ((name, x), (_, y)) in a
        .model()
        .named_parameters()
        .iter()
        .zip(b.model().named_parameters())
    {
        assert!(
            x.equal(&y),
            "{name} differs between the straight and the resumed run"
        );
    }
}

/// Logged losses after `from` must be bit-identical (they are written with full precision).
fn assert_same_metrics_after(a: &Path, b: &Path, from: u64) {
    let ma = read_metrics(a.join("metrics.jsonl")).expect("metrics a");
    let mb = read_metrics(b.join("metrics.jsonl")).expect("metrics b");
    assert_eq!(ma.len(), mb.len(), "one line per step in both runs");
    for (x, y) in ma.iter().zip(&mb).filter(|(x, _)| x.step > from) {
        assert_eq!(x.step, y.step);
        assert_eq!(
            (x.loss, x.ce, x.z_loss, x.grad_norm, x.lr),
            (y.loss, y.ce, y.z_loss, y.grad_norm, y.lr),
            "step {}",
            x.step
        );
        assert_eq!(x.tokens_seen, y.tokens_seen);
    }
}

#[test]
fn stop_and_resume_is_bit_identical_to_a_straight_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let straight = in_dir(&base, dir.path(), "straight", &[]);
    let (a, summary) = run(&straight, Resume::Fresh, None);
    assert_eq!(summary.final_step, 12);

    let split = in_dir(&base, dir.path(), "split", &[]);
    let (_, first) = run(&split, Resume::Fresh, Some(6));
    assert_eq!(first.final_step, 6);
    let (b, second) = run(&split, Resume::Auto, None);
    assert_eq!((second.start_step, second.final_step), (6, 12));
    assert_same_weights(&a, &b);
    assert_same_metrics_after(&straight.run.dir, &split.run.dir, 6);
}

#[test]
fn crash_between_checkpoints_replays_from_the_last_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let straight = in_dir(&base, dir.path(), "straight", &[]);
    let (a, _) = run(&straight, Resume::Fresh, None);

    let crashed = in_dir(&base, dir.path(), "crashed", &[]);
    run(&crashed, Resume::Fresh, Some(6));
    // As after kill -9 at step 6: the exit checkpoint never happened, metrics ran ahead.
    std::fs::remove_dir_all(crashed.checkpoint_dir().join("step-00000006")).expect("remove");
    let (b, resumed) = run(&crashed, Resume::Auto, None);
    assert_eq!(resumed.start_step, 4);
    assert_same_weights(&a, &b);
    assert_same_metrics_after(&straight.run.dir, &crashed.run.dir, 4);
}

#[test]
fn corrupted_newest_checkpoint_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let straight = in_dir(&base, dir.path(), "straight", &[]);
    let (a, _) = run(&straight, Resume::Fresh, None);

    let r = in_dir(&base, dir.path(), "corrupt", &[]);
    run(&r, Resume::Fresh, Some(8));
    let model = r.checkpoint_dir().join("step-00000008/model.safetensors");
    let mut bytes = std::fs::read(&model).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&model, bytes).expect("corrupt");
    let (b, resumed) = run(&r, Resume::Auto, None);
    assert_eq!(
        resumed.start_step, 4,
        "step 8 is corrupt, step 4 is the newest that verifies"
    );
    assert_same_weights(&a, &b);
}

#[test]
fn non_finite_steps_are_skipped_and_counted_then_stop_the_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let r = in_dir(&base, dir.path(), "nan", &["trainer.max_bad_steps=3"]);
    let options = TrainOptions {
        inject_nan_steps: BTreeSet::from([2]),
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(r.clone(), options).expect("trainer");
    let summary = trainer.train().expect("one bad step is skipped");
    assert_eq!((summary.final_step, summary.skipped_steps), (12, 1));
    assert_eq!(trainer.state().optimizer_steps, 11);

    let r = in_dir(&base, dir.path(), "nan2", &["trainer.max_bad_steps=3"]);
    let options = TrainOptions {
        inject_nan_steps: (5..12).collect(),
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(r.clone(), options).expect("trainer");
    let err = trainer
        .train()
        .expect_err("three bad steps in a row stop the run");
    assert!(err.to_string().contains("3 consecutive"), "{err}");
    // The last good state (5 updates) was saved at step 8.
    assert_eq!(newest_checkpoint_step(&r), 8);
}

/// Lagged reads (the CUDA default) change when the host learns a step's values, not what the
/// run computes: the same weights, logged values, skip counts and checkpoints as reading every
/// step at once, with a skipped non-finite step decided on the device.
#[test]
fn lagged_reads_train_the_same_run_as_immediate_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let nan_at_3 = || TrainOptions {
        inject_nan_steps: BTreeSet::from([3]),
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut runs = Vec::new();
    for lagged in [false, true] {
        let set = format!("trainer.lagged_reads={lagged}");
        let r = in_dir(&base, dir.path(), &format!("lagged-{lagged}"), &[&set]);
        let mut trainer = Trainer::new(r.clone(), nan_at_3()).expect("trainer");
        let summary = trainer.train().expect("train");
        assert_eq!((summary.final_step, summary.skipped_steps), (12, 1));
        assert_eq!(trainer.state().optimizer_steps, 11);
        runs.push((r, trainer, summary));
    }
    let ((ra, a, sa), (rb, b, sb)) = (&runs[0], &runs[1]);
    assert_eq!(sa, sb);
    assert_same_weights(a, b);
    // Bit patterns, so the skipped step's NaN compares equal to itself.
    let logged = |r: &Recipe| -> Vec<[u64; 5]> {
        read_metrics(r.run.dir.join("metrics.jsonl"))
            .expect("metrics")
            .iter()
            .map(|m| {
                [
                    m.step,
                    m.loss.to_bits(),
                    m.ce.to_bits(),
                    m.grad_norm.to_bits(),
                    m.tokens_seen,
                ]
            })
            .collect()
    };
    let (la, lb) = (logged(ra), logged(rb));
    assert_eq!(la.len(), 12);
    assert_eq!(la, lb);
    assert!(
        f64::from_bits(lb[3][1]).is_nan(),
        "step 4 (index 3) logged its NaN loss"
    );

    // The bad-step limit still stops the run. Steps 5-7 are the three bad ones (indices 4-6);
    // step 8 is already queued when step 7 is read, so it is counted (skipped: it is bad too)
    // before the last good state (4 updates) is saved at step 8.
    let r = in_dir(
        &base,
        dir.path(),
        "lagged-limit",
        &["trainer.max_bad_steps=3", "trainer.lagged_reads=true"],
    );
    let options = TrainOptions {
        inject_nan_steps: (4..12).collect(),
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(r.clone(), options).expect("trainer");
    let err = trainer.train().expect_err("three bad steps in a row");
    assert!(err.to_string().contains("3 consecutive"), "{err}");
    assert!(err.to_string().contains("step 7"), "{err}");
    assert_eq!(trainer.state().step, 8);
    assert_eq!(trainer.state().optimizer_steps, 4);
    assert_eq!(trainer.state().skipped_steps, 4);
    assert_eq!(newest_checkpoint_step(&r), 8);
}

#[test]
fn logs_metrics_tensorboard_and_the_resolved_recipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let r = in_dir(&base, dir.path(), "logs", &[]);
    let (_, summary) = run(&r, Resume::Fresh, None);
    let metrics = read_metrics(r.run.dir.join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.len(), 12);
    assert!(metrics
        .iter()
        .all(|m| m.loss.is_finite() && m.ce > 0.0 && m.z_loss > 0.0 && m.lr > 0.0));
    assert_eq!(metrics[11].tokens_seen, 12 * 8 * 32);
    assert!(summary.last_loss < summary.first_loss, "{summary:?}");
    let tb_dir = r.run.dir.join("tb");
    // The event file (tb/by_tokens/ beside it holds the loss against tokens seen).
    let file = std::fs::read_dir(&tb_dir)
        .expect("tb dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.is_file())
        .expect("event file");
    let events = read_events(&file).expect("events parse with valid CRCs");
    let ce_steps: Vec<i64> = events
        .iter()
        .filter(|e| e.scalars.iter().any(|(tag, _)| tag == "loss/ce_loss"))
        .map(|e| e.step)
        .collect();
    assert_eq!(ce_steps, (1..=12).collect::<Vec<_>>());
    let saved = std::fs::read_to_string(r.run.dir.join("recipe.yaml")).expect("recipe.yaml");
    let reparsed = Recipe::from_value(serde_norway::from_str(&saved).expect("yaml"))
        .expect("resolved recipe reloads");
    assert_eq!(reparsed, r);
}

/// The error `Trainer::new` reports for `recipe` (it must fail).
fn startup_error(recipe: Recipe) -> String {
    let options = TrainOptions {
        world_size: 1,
        ..TrainOptions::default()
    };
    match Trainer::new(recipe, options) {
        Ok(_) => panic!("the trainer accepted a bad recipe"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn recipe_errors_name_the_key_before_any_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let mut tree = base.clone();
    Override::parse("trainer.micro_batchh=4")
        .expect("parse")
        .apply(&mut tree)
        .expect("apply");
    let err = Recipe::from_value(tree).expect_err("unknown key");
    assert!(err.to_string().contains("trainer.micro_batchh"), "{err}");

    let mut tree = base.clone();
    Override::parse("schedule.max_lr=fast")
        .expect("parse")
        .apply(&mut tree)
        .expect("apply");
    assert!(Recipe::from_value(tree)
        .expect_err("wrong type")
        .to_string()
        .contains("schedule.max_lr"));

    let bad_batch = recipe(&base, &["trainer.global_batch=10"]);
    assert!(startup_error(bad_batch).contains("trainer.global_batch"));
    let missing = recipe(&base, &["data.tokenizer=/nonexistent/tokenizer.json"]);
    assert!(startup_error(missing).contains("data.tokenizer"));
    let missing = recipe(&base, &["data.sources.1.paths=[/nonexistent/*.jsonl]"]);
    assert!(startup_error(missing).contains("data.sources.1.paths"));
    assert!(
        !dir.path().join("run").exists(),
        "nothing was written before validation failed"
    );
}

#[test]
fn preset_with_overrides_and_activation_checkpointing_train() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let mut tree = base.clone();
    tree["model"] = serde_json::json!({ "preset": "gpt-test", "vocab_size": 320, "model_dim": 64 });
    let mut r = Recipe::from_value(tree).expect("preset recipe");
    assert_eq!(
        (r.model.model_dim, r.model.head_dim, r.model.vocab_size),
        (64, 64, 320)
    );
    r.run.dir = dir.path().join("ckpt");
    r.trainer.activation_checkpointing = true;
    r.trainer.steps = 3;
    r.schedule.max_iterations = 3;
    let (_, summary) = run(&r, Resume::Fresh, None);
    assert_eq!(summary.final_step, 3);
}

#[test]
fn a_shard_removed_between_stop_and_resume_fails_unless_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    // Source `a` reads a glob of two files; the second one goes away after the stop.
    let extra = dir.path().join("a2.jsonl");
    std::fs::copy(dir.path().join("a.jsonl"), &extra).expect("copy");
    let glob = format!(
        "data.sources.0.paths=[{}]",
        dir.path().join("a*.jsonl").display()
    );
    let r = in_dir(&base, dir.path(), "changed", &[&glob]);
    run(&r, Resume::Fresh, Some(6));
    let state_file = |step: &str| r.checkpoint_dir().join(step).join(STATE_FILE);
    let saved = std::fs::read_to_string(state_file("step-00000006")).expect("state");
    assert!(
        saved.contains("a2.jsonl"),
        "the checkpoint records the files"
    );
    std::fs::remove_file(&extra).expect("remove");

    let options = |accept_data_change| TrainOptions {
        resume: Resume::Auto,
        world_size: 1,
        accept_data_change,
        ..TrainOptions::default()
    };
    let err = Trainer::new(r.clone(), options(false))
        .err()
        .expect("a resume over a removed shard is refused")
        .to_string();
    for part in ["source `a`: removed", "a2.jsonl", "--accept-data-change"] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }

    let mut trainer = Trainer::new(r.clone(), options(true)).expect("accepted change");
    let summary = trainer.train().expect("train");
    assert_eq!((summary.start_step, summary.final_step), (6, 12));
    // The new checkpoint records the new list: resuming from it needs no flag.
    let last = std::fs::read_to_string(state_file("step-00000012")).expect("state");
    assert!(last.contains("a.jsonl") && !last.contains("a2.jsonl"));
    drop(trainer);
    Trainer::new(r.clone(), options(false)).expect("unchanged since the last checkpoint");

    // A train_state.json written before file lists were recorded still loads.
    let mut old: Value = serde_json::from_str(&saved).expect("json");
    let data = old["data"].as_object_mut().expect("data state");
    assert!(data.remove("files").is_some());
    let old: TrainState = serde_json::from_value(old).expect("an old state loads");
    assert_eq!(old.data.files, None);
}

#[test]
fn every_checkpoint_carries_the_tokenizer_the_run_started_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let tokenizer = dir.path().join("tokenizer.json");
    let original = std::fs::read(&tokenizer).expect("tokenizer");
    let r = in_dir(
        &base,
        dir.path(),
        "carry",
        &["trainer.steps=4", "checkpoint.interval=2"],
    );
    let _ = run(&r, Resume::Fresh, Some(2));
    // Edited between the sessions: the checkpoints keep what the run trained with.
    std::fs::write(&tokenizer, b"{}").expect("overwrite");
    // (the broken file is put right below; only the checkpoint's copy matters here)
    let first = r.checkpoint_dir().join("step-00000002");
    assert_eq!(
        std::fs::read(first.join("tokenizer.json")).expect("carried"),
        original
    );
    let manifest =
        corenet_train::checkpoint::store::CheckpointStore::verify(&first).expect("verify");
    assert!(manifest.files.contains_key("tokenizer.json"));
    // A resume with another (valid) tokenizer is refused, naming the checkpoint's copy.
    corenet_data::train_tokenizer(
        &[dir.path().join("corpus.txt")],
        280,
        &corenet_data::DEFAULT_SPECIAL_TOKENS,
        &tokenizer,
    )
    .expect("another tokenizer");
    let options = TrainOptions {
        resume: Resume::Auto,
        world_size: 1,
        ..TrainOptions::default()
    };
    let err = Trainer::new(r.clone(), options)
        .err()
        .expect("changed tokenizer");
    let text = err.to_string();
    assert!(
        text.contains("another tokenizer") && text.contains("step-00000002/tokenizer.json"),
        "{text}"
    );
    std::fs::write(&tokenizer, &original).expect("restore");
    let _ = run(&r, Resume::Auto, None);
    let last = r.checkpoint_dir().join("step-00000004");
    assert_eq!(
        std::fs::read(last.join("tokenizer.json")).expect("carried"),
        original
    );
}

/// `trainer.document_mask` keeps attention inside each packed document: the same seed and
/// data give another first loss than attention across the row, the run trains, and the switch
/// stays out of the resolved recipe (and its hash) while off.
#[test]
fn the_document_mask_changes_attention_and_trains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let plain = in_dir(&base, dir.path(), "plain", &["trainer.steps=6"]);
    assert!(!plain.to_yaml().expect("yaml").contains("document_mask"));
    let masked = in_dir(
        &base,
        dir.path(),
        "masked",
        &["trainer.steps=6", "trainer.document_mask=true"],
    );
    let (_, a) = run(&plain, Resume::Fresh, None);
    let (_, b) = run(&masked, Resume::Fresh, None);
    let (fa, fb) = (a.first_loss.expect("loss"), b.first_loss.expect("loss"));
    assert!((fa - fb).abs() > 1e-4, "mask had no effect: {fa} vs {fb}");
    assert!(b.last_loss.expect("loss") < fb, "{b:?}");
}

/// SFT on chat data: the loss takes no gradient through a prompt position. Logits changed at
/// every prompt position (and anywhere in the padding) leave the gradient at the answers
/// bit-identical, and the gradient at the prompt positions is exactly zero.
#[test]
fn prompt_positions_carry_no_loss_and_no_gradient() {
    use corenet_train::step::loss::lm_loss;
    use tch::{Kind, Tensor};
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let chats = dir.path().join("chat.jsonl");
    let lines: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"prompt": format!("the king {i} speaks of war?"), "completion": "the queen rises by night."})
                .to_string()
        })
        .collect();
    std::fs::write(&chats, lines.join("\n")).expect("chats");
    let mut data = recipe(&base, &[]).data;
    data.sources = vec![corenet_data::SourceConfig {
        name: "chat".into(),
        paths: vec![chats.display().to_string()],
        template: Some(corenet_data::template::Template::Chat),
        ..Default::default()
    }];
    data.mode = corenet_data::Mode::Corenet;
    data.seq_len = 96;
    data.corenet.min_characters = 1;
    data.corenet.min_tokens = 2;
    data.corenet.fix_text = false;
    let mut stream = corenet_data::DataStream::open(&data, 0, 1, None).expect("stream");
    let batch = stream.next().expect("a batch").expect("batch");
    let pad = i64::from(
        corenet_data::load_tokenizer(&data.tokenizer)
            .expect("tokenizer")
            .pad_id(),
    );
    let (b, t) = (batch.micro_batch as i64, batch.seq_len as i64);
    let targets = Tensor::from_slice(&batch.targets_i64(pad)).view([b, t]);
    let ignored = targets.eq(pad); // (B, T): prompt and padding
    assert!(
        ignored.any().int64_value(&[]) == 1 && ignored.logical_not().any().int64_value(&[]) == 1
    );
    let grad_of = |logits: Tensor| {
        let leaf = logits.set_requires_grad(true);
        lm_loss(&leaf, &targets, pad, 0.0).total.backward();
        leaf.grad()
    };
    let logits = corenet_train::step::generator::seeded(3, || {
        Tensor::randn([b, t, 320], (Kind::Float, tch::Device::Cpu))
    });
    let noise = Tensor::full([b, t, 320], 5.0, (Kind::Float, tch::Device::Cpu))
        * ignored.unsqueeze(-1).to_kind(Kind::Float);
    let (g, g_changed) = (grad_of(logits.copy()), grad_of(&logits + noise));
    assert!(g.equal(&g_changed), "prompt logits changed the gradient");
    let at_prompt = (&g * ignored.unsqueeze(-1).to_kind(Kind::Float))
        .abs()
        .sum(Kind::Float);
    assert_eq!(at_prompt.double_value(&[]), 0.0);
    assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

//! Data-parallel training on Gloo over loopback: ranks are child processes of this test binary
//! (tests/ranks/mod.rs); the parent checks their exit codes, output and run directories.

mod common;
mod ranks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use corenet_train::log::metrics::read_metrics;
use corenet_train::{Recipe, Resume, TrainOptions, Trainer};
use ranks::*;
use serde_json::Value;

/// The MFU comparison times runs, so it takes the machine alone; the other tests share it.
static MACHINE: RwLock<()> = RwLock::new(());

fn machine_shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

// --- (a) 2 ranks × b == 1 process × 2 accumulation steps of b ---------------------------------

/// Two ranks with micro-batch 4 must reach the parameters of one process with global batch 8
/// in two accumulation steps of 4, *on the same rows*. The data stream shards by "scaled rank"
/// `rank × workers + worker` of `world_size × workers`, and batches go round-robin over workers,
/// so one process with 2 data workers reads, in its two micro-batches of a step, exactly what
/// ranks 0 and 1 with 1 worker each read in that step (same shard plans, same mixing seeds).
/// The gradients are then the same sums: one process accumulates 0.5·g0 + 0.5·g1 (loss scaled
/// by 1/accumulation), the ranks average g0 and g1 — equal up to f32 rounding (in fact the
/// power-of-two scaling is exact), hence the 1e-5 bound on the weights.
#[test]
fn two_ranks_match_one_process_with_accumulation() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    two_ranks_match_one_process("two_ranks_match_one_process_with_accumulation", &[]);
}

/// The same with ZeRO-1: each rank updates half of the flat parameter space and the halves
/// are all-gathered; the checkpoint's optimizer state (gathered back into the per-parameter
/// layout) matches the single process's too. The ranks read step values a step late (the CUDA
/// default), which must not change anything computed.
#[test]
fn two_sharded_ranks_match_one_process_with_accumulation() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    two_ranks_match_one_process(
        "two_sharded_ranks_match_one_process_with_accumulation",
        &[
            "trainer.sharded_optimizer=true",
            "trainer.lagged_reads=true",
        ],
    );
}

/// The same without overlapping the all-reduce with backward (one pass after it).
#[test]
fn two_ranks_without_overlap_match_one_process() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    two_ranks_match_one_process(
        "two_ranks_without_overlap_match_one_process",
        &["trainer.overlap_grad_reduce=false"],
    );
}

/// PEFT on 2 ranks with ZeRO-1: each rank builds the same seeded base and adapters, only the
/// adapters' gradients are reduced and only their optimizer state is sharded, and the result
/// equals one process with accumulation (adapters and moments within 1e-5). Dropout is off: its
/// masks are drawn per rank and per micro-batch, so they differ between the two layouts by
/// design.
/// DPO on 2 ranks (each its own reference copy, after the broadcast) equals one process
/// with the same global batch: same weights, same logged rewards.
#[test]
fn two_dpo_ranks_match_one_process() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tree = base(dir.path());
    let pairs = dir.path().join("pairs.jsonl");
    common::write_pairs(&pairs, 32);
    tree["data"]["sources"] =
        serde_json::json!([{ "name": "uf", "paths": [pairs], "template": "preference" }]);
    tree["data"]["mode"] = serde_json::json!("pairs");
    tree["data"]["seq_len"] = serde_json::json!(48);
    tree["dpo"] = serde_json::json!({ "loss": "sigmoid", "beta": 0.5 });
    let ddp_dir = dir.path().join("ddp");
    let run_dir = format!("run.dir={}", ddp_dir.display());
    let ddp = recipe_tree(&tree, &["data.workers=1", run_dir.as_str()]);
    train_2_ranks(
        "two_dpo_ranks_match_one_process",
        dir.path(),
        &ddp,
        no_env,
        6,
    );
    let single_dir = dir.path().join("single");
    assert_eq!(train_one_process(&tree, &single_dir), 6);
    let (a, b) = (newest_checkpoint(&ddp_dir), newest_checkpoint(&single_dir));
    let diff = max_abs_diff(&a, &b, Part::Model);
    assert!(diff <= 1e-5, "weights differ by {diff}");
    let margins = |run: &Path| -> Vec<f64> {
        read_metrics(run.join("metrics.jsonl"))
            .expect("metrics")
            .iter()
            .map(|m| m.extras["rewards/margins"].as_f64().expect("margin"))
            .collect()
    };
    let (m2, m1) = (margins(&ddp_dir), margins(&single_dir));
    assert_eq!(m2.len(), 6);
    for (x, y) in m2.iter().zip(&m1) {
        assert!(
            (x - y).abs() <= 1e-5 * y.abs().max(1.0),
            "margins {m2:?} vs {m1:?}"
        );
    }
}

#[test]
fn two_peft_ranks_match_one_process() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let peft = [
        "peft.method=dora",
        "peft.rank=4",
        "peft.alpha=8",
        "peft.dropout=0",
        "schedule.max_lr=1e-2",
        "trainer.sharded_optimizer=true",
    ];
    let tree = recipe_tree(&base(dir.path()), &peft);
    let ddp_dir = dir.path().join("ddp");
    let run_dir = format!("run.dir={}", ddp_dir.display());
    let ddp = recipe_tree(&tree, &["data.workers=1", run_dir.as_str()]);
    train_2_ranks(
        "two_peft_ranks_match_one_process",
        dir.path(),
        &ddp,
        no_env,
        6,
    );
    let single_dir = dir.path().join("single");
    assert_eq!(train_one_process(&tree, &single_dir), 6);

    let (a, b) = (newest_checkpoint(&ddp_dir), newest_checkpoint(&single_dir));
    let tensors = corenet_train::checkpoint::contents::read_tensors(&a).expect("read");
    assert!(!tensors.model.is_empty());
    assert!(tensors.model.iter().all(|(n, _)| n.contains("lora_")));
    let fingerprint = |dir: &Path| {
        corenet_model::AdapterRecord::read(dir)
            .expect("read")
            .expect("adapters.json")
            .base_fingerprint
    };
    assert_eq!(
        fingerprint(&a),
        fingerprint(&b),
        "the ranks' base is the one process's"
    );
    for part in [Part::Model, Part::Optimizer] {
        let diff = max_abs_diff(&a, &b, part);
        assert!(diff <= 1e-5, "adapters or their moments differ by {diff}");
    }
}

fn two_ranks_match_one_process(test: &str, sets: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = base(dir.path());
    let ddp_dir = dir.path().join("ddp");
    let run_dir = format!("run.dir={}", ddp_dir.display());
    let mut ddp_sets = vec!["data.workers=1", run_dir.as_str()];
    ddp_sets.extend_from_slice(sets);
    let ddp = recipe_tree(&base, &ddp_sets);
    train_2_ranks(test, dir.path(), &ddp, no_env, 6);

    let single_dir = dir.path().join("single");
    assert_eq!(train_one_process(&base, &single_dir), 6);

    let a = newest_checkpoint(&ddp_dir);
    let b = newest_checkpoint(&single_dir);
    assert!(a.ends_with("step-00000006") && b.ends_with("step-00000006"));
    let diff = max_abs_diff(&a, &b, Part::Model);
    eprintln!("max weight difference: {diff}");
    assert!(diff <= 1e-5, "weights differ by {diff}");
    let diff = max_abs_diff(&a, &b, Part::Optimizer);
    eprintln!("max optimizer-state difference: {diff}");
    assert!(diff <= 1e-5, "optimizer states differ by {diff}");

    // The logged loss is the mean over all 8 rows of a step in both runs.
    let ma = read_metrics(ddp_dir.join("metrics.jsonl")).expect("ddp metrics");
    let mb = read_metrics(single_dir.join("metrics.jsonl")).expect("single metrics");
    assert_eq!(ma.len(), 6, "rank 0 alone writes one line per step");
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert!(
            (x.loss - y.loss).abs() < 1e-5,
            "step {}: {} vs {}",
            x.step,
            x.loss,
            y.loss
        );
        assert_eq!(x.tokens_seen, y.tokens_seen);
    }
    // Every rank's data position is in the checkpoint; single-process ones keep the old form.
    let state = read_state(&a);
    assert_eq!(state.data_ranks.len(), 2);
    assert_eq!(
        state.data_ranks.iter().map(|s| s.rank).collect::<Vec<_>>(),
        [0, 1]
    );
    assert_eq!(state.data, state.data_ranks[0]);
    let text = std::fs::read_to_string(b.join("train_state.json")).expect("state");
    assert!(!text.contains("data_ranks"), "{text}");
}

// --- (b) a 2-rank checkpoint resumes exactly on 2 ranks -------------------------------------

#[test]
fn two_rank_checkpoint_resumes_exactly() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    two_rank_checkpoint_resumes("two_rank_checkpoint_resumes_exactly", &[]);
}

/// With ZeRO-1 and lagged reads (every checkpoint settles the step still in flight first).
#[test]
fn two_sharded_rank_checkpoint_resumes_exactly() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    two_rank_checkpoint_resumes(
        "two_sharded_rank_checkpoint_resumes_exactly",
        &[
            "trainer.sharded_optimizer=true",
            "trainer.lagged_reads=true",
        ],
    );
}

/// Stop and resume on 2 ranks is bit-exact; the same checkpoint continues on 1 rank, with its
/// data position when the data shares are kept (2 ranks × 1 worker → 1 rank × 2 workers) and
/// matching the 2-rank run within f32 tolerance, or with the data restarted when asked.
fn two_rank_checkpoint_resumes(test: &str, sets: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut base_sets = vec!["data.workers=1"];
    base_sets.extend_from_slice(sets);
    let base = recipe_tree(&base(dir.path()), &base_sets);
    let straight_dir = dir.path().join("straight");
    let straight = recipe_tree(&base, &[&format!("run.dir={}", straight_dir.display())]);
    train_2_ranks(test, dir.path(), &straight, no_env, 6);

    // Stop at step 4 (after the checkpoint at 3, so the stop writes one at 4), then resume.
    let split_dir = dir.path().join("split");
    let split = recipe_tree(&base, &[&format!("run.dir={}", split_dir.display())]);
    let stop = |_| HashMap::from([(STOP_AT_VAR, "4".to_string())]);
    train_2_ranks(test, dir.path(), &split, stop, 4);
    let at_4 = newest_checkpoint(&split_dir);
    assert!(at_4.ends_with("step-00000004"));
    let resume = |_| HashMap::from([(RESUME_VAR, "auto".to_string())]);
    train_2_ranks(test, dir.path(), &split, resume, 6);

    let straight_end = newest_checkpoint(&straight_dir);
    let split_end = newest_checkpoint(&split_dir);
    for part in [Part::Model, Part::Optimizer] {
        assert!(
            checkpoint_values(&straight_end, part) == checkpoint_values(&split_end, part),
            "the resumed 2-rank run's state differs from the straight run's"
        );
    }
    let ma = read_metrics(straight_dir.join("metrics.jsonl")).expect("metrics");
    let mb = read_metrics(split_dir.join("metrics.jsonl")).expect("metrics");
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!((x.step, x.loss, x.grad_norm), (y.step, y.loss, y.grad_norm));
    }

    // The step-4 checkpoint on 1 rank with 1 worker: 2 data shares do not fit in 1.
    let one_dir = dir.path().join("one");
    let one_tree = recipe_tree(&split, &[&format!("run.dir={}", one_dir.display())]);
    let one = Recipe::from_value(one_tree.clone()).expect("recipe");
    let from_4 = TrainOptions {
        resume: Resume::Path(at_4.clone()),
        world_size: 1,
        ..TrainOptions::default()
    };
    let err = Trainer::new(one.clone(), from_4.clone())
        .err()
        .expect("2 data shares cannot resume on 1 rank × 1 worker");
    let message = err.to_string();
    assert!(
        message.contains("written by 2 rank(s), resumed on 1")
            && message.contains("data.workers=2")
            && message.contains("restart-data"),
        "{message}"
    );
    // With 2 workers the shares carry over: 1 rank (global batch 8 = 2 accumulation steps of
    // 4) reaches the straight 2-rank run's step-6 weights.
    let one = recipe(&one_tree, &["data.workers=2"]);
    let mut trainer = Trainer::new(one.clone(), from_4.clone()).expect("continue on 1 rank");
    assert_eq!(trainer.state().step, 4);
    let summary = trainer.train().expect("continue on 1 rank");
    assert_eq!((summary.start_step, summary.final_step), (4, 6));
    let diff = max_abs_diff(&straight_end, &newest_checkpoint(&one_dir), Part::Model);
    eprintln!("2 ranks vs 2 → 1 rank: max weight difference {diff}");
    assert!(diff <= 1e-5, "weights differ by {diff}");
    let mo = read_metrics(one_dir.join("metrics.jsonl")).expect("metrics");
    for (x, y) in ma[4..].iter().zip(&mo) {
        assert_eq!(x.step, y.step);
        assert!((x.loss - y.loss).abs() < 1e-5, "step {}", x.step);
    }
    // Asked explicitly, 1 rank × 1 worker continues model and optimizer with the data stream
    // started afresh.
    let restart_dir = dir.path().join("restart");
    let restart = recipe(
        &split,
        &[
            &format!("run.dir={}", restart_dir.display()),
            "trainer.steps=8",
        ],
    );
    let mut trainer = Trainer::new(
        restart,
        TrainOptions {
            restart_data: true,
            ..from_4
        },
    )
    .expect("restart the data stream");
    let summary = trainer.train().expect("continue on 1 rank");
    assert_eq!((summary.start_step, summary.final_step), (4, 8));
    assert!(summary.last_loss.is_some_and(f64::is_finite));
}

// --- (c) a rank that dies ---------------------------------------------------------------------

/// SIGKILL one rank in the middle of training: the survivor must fail with a distributed error
/// well within its timeout, and exit (dropping its process group) rather than hang. Rank 0 also
/// hosts the rendezvous store, so losing it is a different failure for rank 1.
fn kill_one_rank(test: &str, victim: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = dir.path().join("killed");
    let tree = recipe_tree(
        &base(dir.path()),
        &[
            "data.workers=1",
            "trainer.steps=100000",
            "checkpoint.interval=0",
            &format!("run.dir={}", run_dir.display()),
        ],
    );
    let timeout = 10u64;
    let mut ranks = spawn_ranks(test, dir.path(), &tree, 2, |_| {
        HashMap::from([(TIMEOUT_VAR, timeout.to_string())])
    });
    // Wait until training is under way (rank 0 has logged two steps).
    let start = Instant::now();
    loop {
        let steps = read_metrics(run_dir.join("metrics.jsonl")).map_or(0, |m| m.len());
        if steps >= 2 {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let logs = ranks.logs();
            for child in &mut ranks.children {
                let _ = child.kill();
            }
            panic!("training did not start:\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ranks.children[victim].kill().expect("kill a rank");
    let killed_at = Instant::now();
    let results = ranks.wait(Duration::from_secs(timeout + 30));
    let elapsed = killed_at.elapsed();
    let survivor = 1 - victim;
    let r = &results[survivor];
    assert_eq!(
        r.code,
        Some(3),
        "rank {survivor} must fail:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout
            .contains(&format!("DDP_ERR rank {survivor}: distributed")),
        "rank {survivor} names the failed collective:\n{}",
        r.stdout
    );
    assert!(
        elapsed < Duration::from_secs(timeout + 20),
        "took {elapsed:?}"
    );
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("DDP_ERR"))
        .unwrap_or_default();
    eprintln!("rank {victim} killed; after {elapsed:?}: {line}");
}

#[test]
fn killed_rank_makes_the_other_fail_not_hang() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    kill_one_rank("killed_rank_makes_the_other_fail_not_hang", 1);
}

#[test]
fn killed_rank_0_makes_the_other_fail_not_hang() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    kill_one_rank("killed_rank_0_makes_the_other_fail_not_hang", 0);
}

// --- (d) mismatched recipes ---------------------------------------------------------------------

#[test]
fn mismatched_recipes_fail_on_every_rank_naming_both_hashes() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = recipe_tree(
        &base(dir.path()),
        &[
            "data.workers=1",
            &format!("run.dir={}", dir.path().join("mismatch").display()),
        ],
    );
    let extra = "optimizer.weight_decay=0.2";
    let results = spawn_ranks(
        "mismatched_recipes_fail_on_every_rank_naming_both_hashes",
        dir.path(),
        &tree,
        2,
        |rank| {
            if rank == 1 {
                HashMap::from([(EXTRA_VAR, extra.to_string())])
            } else {
                HashMap::new()
            }
        },
    )
    .wait(Duration::from_secs(90));
    let ours = Recipe::from_value(tree.clone()).expect("recipe").hash();
    let theirs = recipe(&tree, &[extra]).hash();
    assert_ne!(ours, theirs);
    for (rank, r) in results.iter().enumerate() {
        assert_eq!(r.code, Some(3), "rank {rank}:\n{}\n{}", r.stdout, r.stderr);
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains("DDP_ERR"))
            .unwrap_or_default();
        assert!(
            line.contains("recipe mismatch") && line.contains(&ours) && line.contains(&theirs),
            "rank {rank}: {line}"
        );
        eprintln!("{line}");
    }
    assert!(
        !dir.path()
            .join("mismatch/checkpoints")
            .join("step-00000001")
            .exists(),
        "nothing trained"
    );
}

// --- (e) MFU is per device -----------------------------------------------------------------

/// Two ranks doing one rank's per-device work (micro-batch 4 each, global batch 8 against 4)
/// report the per-device MFU, not the world's: the logged MFU is computed from the per-device
/// token rate (`tokens_per_s / world_size`), and it lands near the single rank's. Before the
/// fix a data-parallel run divided the whole job's tokens by one device's peak, which doubles
/// MFU on 2 ranks.
#[test]
fn two_ranks_report_the_per_device_mfu_of_one_rank() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = MACHINE.write().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let peak = 1e12;
    let base = recipe_tree(
        &common::setup(dir.path()),
        &[
            "trainer.steps=12",
            "checkpoint.interval=0",
            "data.workers=1",
            "trainer.micro_batch=4",
            "logging.device_peak_flops=1e12",
        ],
    );
    let single_dir = dir.path().join("single");
    let single = recipe(
        &base,
        &[
            "trainer.global_batch=4",
            &format!("run.dir={}", single_dir.display()),
        ],
    );
    let flops_per_token = single
        .model
        .training_flops_per_token(single.data.seq_len)
        .expect("flops");
    let mut trainer = Trainer::new(single, TrainOptions::default()).expect("single trainer");
    trainer.train().expect("train");
    drop(trainer);
    let ddp_dir = dir.path().join("ddp");
    let ddp = recipe_tree(
        &base,
        &[
            "trainer.global_batch=8",
            &format!("run.dir={}", ddp_dir.display()),
        ],
    );
    train_2_ranks(
        "two_ranks_report_the_per_device_mfu_of_one_rank",
        dir.path(),
        &ddp,
        no_env,
        12,
    );

    // (median MFU, median per-device token rate) of a run's metrics.
    let medians = |path: PathBuf, world: f64| -> (f64, f64) {
        let lines = read_metrics(path).expect("metrics");
        let mut mfus = Vec::new();
        let mut rates = Vec::new();
        for line in lines.iter().filter(|l| l.tokens_per_s > 0.0) {
            assert_eq!(line.extras["world_size"], world as u64);
            let per_device = line.extras["tokens_per_s_per_device"]
                .as_f64()
                .expect("per-device rate");
            assert!((per_device - line.tokens_per_s / world).abs() <= 1e-9 * per_device);
            let mfu = line.mfu.expect("a peak was given");
            let want = flops_per_token * per_device / peak;
            assert!(
                (mfu - want).abs() <= 1e-12 * want,
                "step {}: {mfu} vs {want}",
                line.step
            );
            mfus.push(mfu);
            rates.push(per_device);
        }
        assert!(mfus.len() >= 8, "{} lines with a rate", mfus.len());
        mfus.sort_by(f64::total_cmp);
        rates.sort_by(f64::total_cmp);
        (mfus[mfus.len() / 2], rates[rates.len() / 2])
    };
    let (one, rate_one) = medians(single_dir.join("metrics.jsonl"), 1.0);
    let (two, rate_two) = medians(ddp_dir.join("metrics.jsonl"), 2.0);
    eprintln!(
        "median MFU: 1 rank {one:.3e}, 2 ranks {two:.3e} (ratio {:.2}; per-device rates {rate_one:.0} and {rate_two:.0} tokens/s)",
        two / one
    );
    // The two runs' MFUs differ only as fast as one device works in each: the ratio of the
    // per-device rates, not twice it.
    assert!(((two / one) - (rate_two / rate_one)).abs() <= 1e-9);
    // On a shared 2-core machine two ranks are somewhat slower per device than one (Gloo, two
    // processes on two cores); a sanity bound, not a speed target.
    assert!(
        (0.25..1.6).contains(&(two / one)),
        "2-rank MFU {two} against 1-rank {one}"
    );
}

/// A shard removed between stop and resume stops a 2-rank run on both ranks with rank 0's
/// message (rank 0 compares the files and shares the verdict) before any step, instead of one
/// rank training on while the other waits.
#[test]
fn a_removed_shard_stops_every_rank_alike_on_resume() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    let test = "a_removed_shard_stops_every_rank_alike_on_resume";
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = dir.path().join("a2.jsonl");
    let tree = {
        let base = base(dir.path());
        std::fs::copy(dir.path().join("a.jsonl"), &extra).expect("copy");
        let glob = format!(
            "data.sources.0.paths=[{}]",
            dir.path().join("a*.jsonl").display()
        );
        recipe_tree(&base, &[&glob])
    };
    let stop = |_: usize| HashMap::from([(STOP_AT_VAR, "3".to_string())]);
    train_2_ranks(test, dir.path(), &tree, stop, 3);
    std::fs::remove_file(&extra).expect("remove");

    let auto = |_: usize| HashMap::from([(RESUME_VAR, "auto".to_string())]);
    let results = spawn_ranks(test, dir.path(), &tree, 2, auto).wait(Duration::from_secs(240));
    let messages: Vec<String> = results
        .iter()
        .enumerate()
        .map(|(rank, r)| {
            assert_eq!(r.code, Some(3), "rank {rank}: {}\n{}", r.stdout, r.stderr);
            let marker = format!("DDP_ERR rank {rank}:");
            let message = r
                .stdout
                .split_once(&marker)
                .and_then(|(_, rest)| rest.lines().next())
                .unwrap_or_else(|| panic!("rank {rank} reports the error: {}", r.stdout));
            assert!(
                message.contains("a2.jsonl") && message.contains("removed"),
                "{message}"
            );
            message.to_string()
        })
        .collect();
    // Rank 1 relays rank 0's verdict ("… rank 0 failed: <the same message>").
    assert!(
        messages[1].contains("rank 0 failed") && messages[1].ends_with(&messages[0]),
        "{messages:?}"
    );
    let steps: Vec<u64> = read_metrics(dir.path().join("run/metrics.jsonl"))
        .expect("metrics")
        .iter()
        .map(|m| m.step)
        .collect();
    assert_eq!(steps, [1, 2, 3], "no step was taken on the changed data");
}

// --- (f) validation splits across ranks and gives the single process's numbers ------------------

/// Two ranks score alternate batches of the validation windows and reduce one slot per window,
/// so on the same weights they log bit for bit what one process logs. The LR is far below f32
/// resolution (the weights stay at their shared initialisation) so that only the validation
/// arithmetic is compared, not the tiny differences of a 2-rank gradient average.
#[test]
fn validation_is_identical_on_one_and_two_ranks() {
    if std::env::var(ROLE_VAR).is_ok() {
        return child();
    }
    let _machine = machine_shared();
    let test = "validation_is_identical_on_one_and_two_ranks";
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tree = recipe_tree(
        &base(dir.path()),
        &[
            "data.sources.1.hold_back=0.25",
            "schedule.name=constant",
            "schedule.max_lr=1e-30",
            "schedule.warmup_iterations=0",
            "schedule.warmup_init_lr=0",
        ],
    );
    // 2 sets x 7 windows in batches of 2: 8 batches, alternating over the ranks.
    tree["eval"] = serde_json::json!({
        "interval": 3, "sequences": 7, "batch_size": 2,
        "sources": [{ "name": "extra", "paths": [dir.path().join("a.jsonl")] }]
    });
    // The held-out source must not be a training file: train on the gzip source only.
    let tree = recipe_tree(
        &tree,
        &[&format!(
            "data.sources=[{{name: b, paths: [{}], hold_back: 0.25}}]",
            dir.path().join("b.jsonl.gz").display()
        )],
    );
    let ddp_dir = dir.path().join("ddp");
    let ddp = recipe_tree(
        &tree,
        &["data.workers=1", &format!("run.dir={}", ddp_dir.display())],
    );
    train_2_ranks(test, dir.path(), &ddp, no_env, 6);

    let single_dir = dir.path().join("single");
    train_one_process(&tree, &single_dir);

    let lines = |dir: &Path| -> Vec<Value> {
        std::fs::read_to_string(dir.join("validation.jsonl"))
            .expect("validation.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    };
    let (a, b) = (lines(&ddp_dir), lines(&single_dir));
    assert_eq!(a.len(), 2, "steps 3 and 6: {a:?}");
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["sources"], y["sources"], "step {}", x["step"]);
        assert_eq!(x["val_loss"], y["val_loss"], "step {}", x["step"]);
    }
    let names: Vec<&String> = a[0]["sources"]
        .as_object()
        .expect("sources")
        .keys()
        .collect();
    assert_eq!(names, ["b", "extra"]);
}

//! Training on several ranks from a test: multi-rank tests re-run their own test binary as
//! child processes (one per rank, `CORENET_DDP_CHILD` set, `--exact NAME` selecting the test)
//! with torchrun-style environment variables; each child reads the recipe the parent wrote and
//! trains. The parent checks exit codes, output and the run directories, and kills children
//! that outlive a deadline, so a hang fails the test instead of stalling it. Used by ddp.rs
//! and checkpoint_ranks.rs; each uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corenet_train::checkpoint::contents::TrainState;
use corenet_train::checkpoint::{CheckpointFault, FaultKind};
use corenet_train::dist::DistEnv;
use corenet_train::recipe::overrides::Override;
use corenet_train::{Recipe, Resume, TrainOptions, Trainer};
use serde_json::Value;

use crate::common;

pub const ROLE_VAR: &str = "CORENET_DDP_CHILD";
/// The recipe tree (JSON) the child trains.
pub const RECIPE_VAR: &str = "CORENET_DDP_RECIPE";
/// `fresh` (default) or `auto`.
pub const RESUME_VAR: &str = "CORENET_DDP_RESUME";
pub const STOP_AT_VAR: &str = "CORENET_DDP_STOP_AT";
/// One more `--set` override for this child only.
pub const EXTRA_VAR: &str = "CORENET_DDP_EXTRA";
pub const TIMEOUT_VAR: &str = "CORENET_DDP_TIMEOUT_S";

/// The MFU comparison times runs, so it takes the machine alone; the other tests share it.
/// `disk-full@STEP` or `slow-MS@STEP`: a fault in this child's write of one checkpoint.
pub const FAULT_VAR: &str = "CORENET_DDP_FAULT";
/// Set: the child checkpoints right after start-up (a resumed state, written again).
pub const SAVE_NOW_VAR: &str = "CORENET_DDP_SAVE_NOW";

pub fn recipe_tree(value: &Value, sets: &[&str]) -> Value {
    let mut tree = value.clone();
    for s in sets {
        Override::parse(s)
            .expect("override")
            .apply(&mut tree)
            .expect("apply");
    }
    tree
}

pub fn recipe(value: &Value, sets: &[&str]) -> Recipe {
    Recipe::from_value(recipe_tree(value, sets)).expect("recipe")
}

// --- the child: one rank -----------------------------------------------------------------------

pub fn child() {
    let env = DistEnv::from_env().expect("launcher env").expect("set");
    let text = std::fs::read_to_string(std::env::var(RECIPE_VAR).expect("recipe var"))
        .expect("read recipe");
    let mut tree: Value = serde_json::from_str(&text).expect("recipe json");
    if let Ok(extra) = std::env::var(EXTRA_VAR) {
        tree = recipe_tree(&tree, &[&extra]);
    }
    let recipe = Recipe::from_value(tree).expect("recipe");
    let resume = match std::env::var(RESUME_VAR).as_deref() {
        Ok("auto") => Resume::Auto,
        _ => Resume::Fresh,
    };
    let stop_at = std::env::var(STOP_AT_VAR)
        .ok()
        .map(|s| s.parse().expect("stop at"));
    let timeout = std::env::var(TIMEOUT_VAR)
        .ok()
        .map_or(20, |s| s.parse().expect("timeout"));
    let inject_checkpoint_fault = std::env::var(FAULT_VAR).ok().map(|f| parse_fault(&f));
    let options = TrainOptions {
        resume,
        stop_at,
        inject_checkpoint_fault,
        rank: env.rank,
        world_size: env.world_size,
        dist: Some(env.clone()),
        dist_timeout: Some(Duration::from_secs(timeout)),
        ..TrainOptions::default()
    };
    let outcome = Trainer::new(recipe, options).and_then(|mut trainer| {
        if std::env::var(SAVE_NOW_VAR).is_ok() {
            trainer.save()?;
        }
        trainer.train()
    });
    match outcome {
        Ok(summary) => println!("DDP_OK rank {} step {}", env.rank, summary.final_step),
        Err(err) => {
            println!("DDP_ERR rank {}: {err}", env.rank);
            // The trainer (and its process group) has been dropped normally by now.
            std::process::exit(3);
        }
    }
}

/// `disk-full@4` or `slow-1500@4` (milliseconds).
fn parse_fault(text: &str) -> CheckpointFault {
    let (kind, step) = text.split_once('@').expect("KIND@STEP");
    let kind = match kind.strip_prefix("slow-") {
        Some(ms) => FaultKind::Slow(Duration::from_millis(ms.parse().expect("milliseconds"))),
        None => {
            assert_eq!(kind, "disk-full", "fault kind");
            FaultKind::DiskFull
        }
    };
    CheckpointFault {
        step: step.parse().expect("step"),
        kind,
    }
}

// --- the parent: spawning and watching ranks ------------------------------------------------

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

pub struct Ranks {
    pub children: Vec<Child>,
    pub logs: PathBuf,
}

pub struct RankResult {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Starts `world` ranks of test `test`, training the recipe tree `tree`; `env(rank)` adds
/// variables for one rank.
pub fn spawn_ranks(
    test: &str,
    dir: &Path,
    tree: &Value,
    world: usize,
    env: impl Fn(usize) -> HashMap<&'static str, String>,
) -> Ranks {
    let exe = std::env::current_exe().expect("current exe");
    let port = free_port();
    let logs = tempfile::Builder::new()
        .prefix("logs")
        .tempdir_in(dir)
        .expect("log dir")
        .keep();
    let recipe_path = logs.join("recipe.json");
    std::fs::write(&recipe_path, serde_json::to_string(tree).expect("json")).expect("write");
    let children = (0..world)
        .map(|rank| {
            let out = std::fs::File::create(logs.join(format!("{rank}.out"))).expect("out");
            let err = std::fs::File::create(logs.join(format!("{rank}.err"))).expect("err");
            let mut cmd = Command::new(&exe);
            cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env(ROLE_VAR, "rank")
                .env(RECIPE_VAR, &recipe_path)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err);
            for (k, v) in env(rank) {
                cmd.env(k, v);
            }
            cmd.spawn().expect("spawn a rank")
        })
        .collect();
    Ranks { children, logs }
}

impl Ranks {
    pub fn logs(&self) -> String {
        (0..self.children.len())
            .map(|r| {
                let read = |ext: &str| {
                    std::fs::read_to_string(self.logs.join(format!("{r}.{ext}")))
                        .unwrap_or_default()
                };
                format!(
                    "--- rank {r} stdout:\n{}\n--- rank {r} stderr:\n{}",
                    read("out"),
                    read("err")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits for every rank; kills all and panics (a hang) after `deadline`.
    pub fn wait(mut self, deadline: Duration) -> Vec<RankResult> {
        let start = Instant::now();
        let world = self.children.len();
        let mut codes: Vec<Option<Option<i32>>> = vec![None; world];
        while codes.iter().any(Option::is_none) {
            for (rank, child) in self.children.iter_mut().enumerate() {
                if codes[rank].is_none() {
                    codes[rank] = child.try_wait().expect("try_wait").map(|s| s.code());
                }
            }
            if start.elapsed() > deadline {
                for child in &mut self.children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!(
                    "ranks still running after {deadline:?} (a hang):\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        codes
            .into_iter()
            .enumerate()
            .map(|(rank, code)| RankResult {
                code: code.flatten(),
                stdout: std::fs::read_to_string(self.logs.join(format!("{rank}.out")))
                    .unwrap_or_default(),
                stderr: std::fs::read_to_string(self.logs.join(format!("{rank}.err")))
                    .unwrap_or_default(),
            })
            .collect()
    }
}

pub fn assert_ok(results: &[RankResult], step: u64) {
    for (rank, r) in results.iter().enumerate() {
        assert!(
            r.code == Some(0)
                && r.stdout
                    .contains(&format!("DDP_OK rank {rank} step {step}")),
            "rank {rank} failed ({:?}):\n--- stdout:\n{}\n--- stderr:\n{}",
            r.code,
            r.stdout,
            r.stderr
        );
    }
}

/// Runs 2 ranks to completion and checks they both ended at `step`.
pub fn train_2_ranks(
    test: &str,
    dir: &Path,
    tree: &Value,
    env: impl Fn(usize) -> HashMap<&'static str, String>,
    step: u64,
) {
    let results = spawn_ranks(test, dir, tree, 2, env).wait(Duration::from_secs(240));
    assert_ok(&results, step);
}

pub fn no_env(_: usize) -> HashMap<&'static str, String> {
    HashMap::new()
}

pub fn newest_checkpoint(run_dir: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .expect("checkpoints")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .collect();
    dirs.sort();
    dirs.pop().expect("a checkpoint")
}

/// The model's or the optimizer's tensors of a checkpoint (either layout), as f32 values.
pub fn checkpoint_values(dir: &Path, part: Part) -> Vec<(String, Vec<f32>)> {
    let tensors = corenet_train::checkpoint::contents::read_tensors(dir).expect("read checkpoint");
    let list = match part {
        Part::Model => tensors.model,
        Part::Optimizer => tensors.optimizer,
    };
    list.into_iter()
        .map(|(name, t)| {
            assert_eq!(t.kind(), tch::Kind::Float, "{name}");
            let values = Vec::<f32>::try_from(t.reshape([-1])).expect("f32 values");
            (name, values)
        })
        .collect()
}

#[derive(Clone, Copy)]
pub enum Part {
    Model,
    Optimizer,
}

pub fn max_abs_diff(a: &Path, b: &Path, part: Part) -> f32 {
    let (ta, tb) = (checkpoint_values(a, part), checkpoint_values(b, part));
    assert_eq!(ta.len(), tb.len(), "same tensors");
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(va.len(), vb.len(), "{na}");
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

pub fn read_state(checkpoint: &Path) -> TrainState {
    serde_json::from_slice(&std::fs::read(checkpoint.join("train_state.json")).expect("state"))
        .expect("state json")
}

/// The tiny setup with a 2-rank-friendly layout: global batch 8 = 2 ranks × micro 4.
pub fn base(dir: &Path) -> Value {
    recipe_tree(
        &common::setup(dir),
        &[
            "trainer.steps=6",
            "checkpoint.interval=3",
            // ~10 KiB buckets: the tiny model's gradients span several.
            "trainer.bucket_mb=0.01",
        ],
    )
}

/// Trains `tree` as one process with 2 data workers (what 2 ranks of 1 worker each read) in
/// `run_dir`; returns the final step.
pub fn train_one_process(tree: &Value, run_dir: &Path) -> u64 {
    let single = recipe(
        tree,
        &["data.workers=2", &format!("run.dir={}", run_dir.display())],
    );
    let options = TrainOptions {
        world_size: 1,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(single, options).expect("single-process trainer");
    trainer.train().expect("train").final_step
}

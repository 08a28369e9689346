//! `corenet launch --nproc 2 -- train …` end to end on the tiny recipe: two data-parallel ranks
//! train and checkpoint every rank's data position; SIGTERM to the launcher makes the ranks agree
//! on a step, checkpoint and stop; a failing rank makes the launcher fail.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corenet_e2e::{build_sample_data, corenet_bin, metrics, reference_tool, workspace_root};

/// The tiny recipe shrunk to seconds per run, as 2 ranks × micro-batch 4 = global batch 8.
const SMALL: [&str; 12] = [
    "schedule.warmup_iterations=2",
    "model.vocab_size=512",
    "model.num_transformer_layers=2",
    "model.model_dim=64",
    "model.head_dim=16",
    "data.seq_len=64",
    "data.workers=1",
    "trainer.micro_batch=4",
    "trainer.threads=1",
    "trainer.device=cpu",
    "logging.interval=1",
    "logging.progress=false",
];

fn launch(dir: &Path, run_dir: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(corenet_bin());
    cmd.current_dir(dir)
        .args(["launch", "--nproc", "2", "--", "train"])
        .arg(workspace_root().join("recipes/tiny.yaml"))
        .args(["--dist-timeout", "30"]);
    for s in SMALL
        .iter()
        .copied()
        .chain([format!("run.dir={run_dir}").as_str()])
        .chain(extra.iter().copied())
    {
        cmd.args(["--set", s]);
    }
    cmd
}

#[test]
fn launch_two_ranks_trains_stops_on_sigterm_and_fails_with_a_rank() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);

    // Two ranks to the end.
    let out = launch(
        dir.path(),
        "runs/ddp",
        &["trainer.steps=6", "checkpoint.interval=3"],
    )
    .output()
    .expect("run corenet launch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "launch failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("[rank 0] steps 0..6"), "{stdout}");
    assert!(
        !stdout.contains("[rank 1] steps"),
        "only rank 0 reports: {stdout}"
    );
    let m = metrics(&dir.path().join("runs/ddp/metrics.jsonl"));
    assert_eq!(m.len(), 6, "rank 0 alone writes one line per step");
    assert!(m.iter().all(|x| x["world_size"] == 2), "{m:?}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("runs/ddp/checkpoints/step-00000006/train_state.json"),
        )
        .expect("train_state.json"),
    )
    .expect("json");
    assert_eq!(state["data_ranks"].as_array().map(Vec::len), Some(2));

    // SIGTERM to the launcher: one SIGTERM per rank, they agree on a step and checkpoint it.
    let mut child = launch(
        dir.path(),
        "runs/term",
        &["trainer.steps=100000", "checkpoint.interval=0"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn");
    let start = Instant::now();
    while metrics(&dir.path().join("runs/term/metrics.jsonl")).len() < 3 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("launch exited early with {status}");
        }
        assert!(start.elapsed() < Duration::from_secs(300), "never trained");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Preempted, not finished and not failed: 128 + SIGTERM, as `corenet train` reports it.
    assert_eq!(out.status.code(), Some(143), "{stdout}");
    assert!(stdout.contains("interrupted, checkpoint saved"), "{stdout}");
    let last = metrics(&dir.path().join("runs/term/metrics.jsonl"))
        .last()
        .and_then(|m| m["step"].as_u64())
        .expect("a step");
    assert!(dir
        .path()
        .join(format!(
            "runs/term/checkpoints/step-{last:08}/manifest.json"
        ))
        .is_file());

    // A rank that fails (here both: 6 is not divisible by 4 × 2) fails the launcher.
    let out = launch(dir.path(), "runs/bad", &["trainer.global_batch=6"])
        .output()
        .expect("run corenet launch");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("of 2 failed"), "{stderr}");
    assert!(stderr.contains("trainer.global_batch"), "{stderr}");
}

/// PyTorch's own launcher: `torchrun --nproc-per-node 2 --no-python corenet train …` (from the
/// reference environment). torchrun hosts the rendezvous store itself and tells the ranks so
/// (TORCHELASTIC_USE_AGENT_STORE); the ranks train with the sharded optimizer and rank 0 writes
/// a checkpoint holding both ranks' data positions.
#[test]
fn torchrun_no_python_trains_two_sharded_ranks() {
    let Some(torchrun) = reference_tool("torchrun") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    build_sample_data(dir.path(), 500);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut cmd = Command::new(&torchrun);
    cmd.current_dir(dir.path())
        .args(["--nproc-per-node", "2", "--master-port", &port.to_string()])
        .arg("--no-python")
        .arg(corenet_bin())
        .arg("train")
        .arg(workspace_root().join("recipes/tiny.yaml"))
        .args(["--dist-timeout", "30"]);
    let sets = SMALL.iter().copied().chain([
        "run.dir=runs/torchrun",
        "trainer.steps=4",
        "checkpoint.interval=2",
        "trainer.sharded_optimizer=true",
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run torchrun");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "torchrun failed:\n{stdout}\n{stderr}");
    // Rank 0 uses torchrun's store instead of failing to bind a second one and saying so.
    assert!(!stderr.contains("failed to bind"), "{stderr}");
    let m = metrics(&dir.path().join("runs/torchrun/metrics.jsonl"));
    assert_eq!(m.len(), 4, "{m:?}");
    assert!(m.iter().all(|x| x["world_size"] == 2), "{m:?}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("runs/torchrun/checkpoints/step-00000004/train_state.json"),
        )
        .expect("train_state.json"),
    )
    .expect("json");
    assert_eq!(state["data_ranks"].as_array().map(Vec::len), Some(2));
}

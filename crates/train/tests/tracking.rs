//! A training run tracked by a real MLflow server (the reference venv's `mlflow`) that is
//! killed a few steps in and started again while the run goes on: training never waits or
//! fails, and every step's metrics, the validations, the recipe's params and the final
//! checkpoint's tag arrive, each point once. Skips without the reference venv (a failure with
//! CORENET_REQUIRE_REFERENCE set).

mod common;
mod mlflow_server;
mod run_recipe;

use std::path::Path;
use std::time::Duration;

use corenet_train::log::metrics::read_metrics;
use corenet_train::{Resume, TrainOptions, Trainer};
use mlflow_server::{reference_mlflow, MlflowServer};
use serde_json::{json, Value};

const STEPS: u64 = 60;

/// The newest step in `metrics.jsonl` (0 before the first line).
fn logged_step(run_dir: &Path) -> u64 {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

fn wait_for_step(run_dir: &Path, step: u64) {
    for _ in 0..6000 {
        if logged_step(run_dir) >= step {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("training never reached step {step}");
}

#[test]
fn a_training_run_reaches_mlflow_through_a_server_outage() {
    let Some(mlflow) = reference_mlflow() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let mut server = MlflowServer::start(&mlflow, &dir.path().join("mlflow"));
    let mut tree = base.clone();
    tree["logging"]["mlflow"] = json!({
        "uri": server.uri(), "experiment": "tracking-e2e", "run_name": "tiny", "finish_timeout_s": 300
    });
    tree["eval"] = json!({ "interval": 20, "sequences": 4, "batch_size": 4 });
    let recipe = run_recipe::in_run_dir(
        &tree,
        dir.path(),
        "run",
        &[
            &format!("trainer.steps={STEPS}"),
            "checkpoint.interval=20",
            "logging.tensorboard=false",
            "data.sources.1.hold_back=0.2",
        ],
    );
    let run_dir = recipe.run.dir.clone();
    // The outage: killed at step 10 (metrics of steps 1..10 may or may not have arrived), up
    // again only after training went on without it.
    let watcher = {
        let run_dir = run_dir.clone();
        std::thread::spawn(move || {
            wait_for_step(&run_dir, 10);
            server.kill();
            wait_for_step(&run_dir, 30);
            server.restart();
            server
        })
    };
    let mut trainer = Trainer::new(
        recipe.clone(),
        TrainOptions {
            resume: Resume::Fresh,
            world_size: 1,
            ..TrainOptions::default()
        },
    )
    .expect("trainer");
    let summary = trainer
        .train()
        .expect("training goes on without its tracking server");
    assert_eq!(summary.final_step, STEPS);
    let server = watcher.join().expect("watcher");

    let run_file: Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("mlflow_run.json")).expect("run file"),
    )
    .expect("run file JSON");
    let run_id = run_file["run_id"].as_str().expect("run id");
    let run = server.run(run_id);
    assert_eq!(run["info"]["status"], "FINISHED", "{run}");
    let data = &run["data"];
    let param = |key: &str| {
        data["params"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["key"] == key))
            .map(|p| p["value"].clone())
    };
    assert_eq!(param("model.model_dim"), Some(json!("32")), "{data}");
    assert_eq!(param("trainer.steps"), Some(json!(STEPS.to_string())));
    let tag = data["tags"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["key"] == "corenet.final_checkpoint"))
        .and_then(|t| t["value"].as_str())
        .expect("final checkpoint tag");
    assert!(tag.ends_with("step-00000060"), "{tag}");

    // Every step's loss, once each, equal to metrics.jsonl's.
    let logged = read_metrics(run_dir.join("metrics.jsonl")).expect("metrics");
    let history = server.history(run_id, "loss");
    let steps: Vec<u64> = history.iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "each step once");
    for (line, point) in logged.iter().zip(&history) {
        assert!(
            (line.loss - point.1).abs() <= 1e-12 * line.loss.abs(),
            "step {}: {} vs {}",
            line.step,
            line.loss,
            point.1
        );
    }
    let val: Vec<u64> = server
        .history(run_id, "val_loss")
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(val, [20, 40, 60]);
    // The outage shows in the metrics lines: failed requests counted, metrics pending.
    let failed = logged
        .iter()
        .filter_map(|l| {
            l.extras
                .get("tracking_failed_requests")
                .and_then(Value::as_u64)
        })
        .max();
    assert!(failed.is_some_and(|n| n > 0), "{failed:?}");
}

//! The MLflow sink against a real MLflow tracking server (the reference venv's `mlflow`,
//! pinned by scripts/lib.sh), read back through MLflow's REST API: params and every metric
//! arrive; a server killed mid-run and restarted loses and duplicates nothing; a resume
//! continues the same run; an unreachable server never blocks the trainer. The server checks
//! skip without the reference venv (a failure with CORENET_REQUIRE_REFERENCE set); the
//! unreachable-server check needs no server and always runs.
//!
//! The scenarios share one server and run in order in one test: each server start takes
//! seconds, and the outage scenario kills and restarts it.

mod mlflow_server;

use std::path::Path;
use std::time::{Duration, Instant};

use corenet_train::log::mlflow::{
    recipe_params, MlflowConfig, MlflowSink, RunStatus, MAX_PARAM_VALUE_CHARS, RUN_FILE,
};
use mlflow_server::{free_port, reference_mlflow, MlflowServer};
use serde_json::Value;

/// What one `log_metrics` call may take: it only queues.
const QUEUE_CALL_LIMIT: Duration = Duration::from_millis(50);

fn config(uri: &str, experiment: &str) -> MlflowConfig {
    MlflowConfig {
        uri: uri.to_owned(),
        experiment: experiment.to_owned(),
        run_name: None,
        finish_timeout_s: 60,
    }
}

/// The value of metric `key` at `step` (exactly representable, so exact after JSON).
fn value(key: &str, step: u64) -> f64 {
    match key {
        "loss" => 10.0 - step as f64 / 64.0,
        "lr" => step as f64 * 1e-4,
        _ => step as f64,
    }
}

/// The timestamp logged with `step`.
fn timestamp(step: u64) -> i64 {
    1_700_000_000_000 + step as i64 * 1000
}

/// Logs `loss` and `lr` for `steps`; returns the slowest call.
fn log_steps(sink: &MlflowSink, steps: impl IntoIterator<Item = u64>) -> Duration {
    let mut slowest = Duration::ZERO;
    for step in steps {
        let metrics = [
            ("loss".to_owned(), value("loss", step)),
            ("lr".to_owned(), value("lr", step)),
        ];
        let started = Instant::now();
        sink.log_metrics(step, timestamp(step), &metrics);
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// Asserts that `key` holds exactly one point per step of `steps`, with the logged values and
/// timestamps.
fn assert_history(
    server: &MlflowServer,
    run_id: &str,
    key: &str,
    steps: std::ops::RangeInclusive<u64>,
) {
    let history = server.history(run_id, key);
    let expect: Vec<(u64, f64, i64)> = steps.map(|s| (s, value(key, s), timestamp(s))).collect();
    let wrong: Vec<_> = history
        .iter()
        .zip(&expect)
        .filter(|(got, want)| got != want)
        .take(5)
        .collect();
    assert!(
        history.len() == expect.len() && wrong.is_empty(),
        "{key}: {} points, expected {}; first differences (got, expected): {wrong:?}",
        history.len(),
        expect.len()
    );
}

/// Polls `check` until it holds or `limit` passes.
fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_id_of(sink: &MlflowSink) -> String {
    let mut id = None;
    wait_for(Duration::from_secs(30), "the MLflow run", || {
        id = sink.run_id();
        id.is_some()
    });
    id.expect("run id")
}

fn params_of(run: &Value) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = run["data"]["params"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["key"].as_str().expect("key").to_owned(),
                p["value"].as_str().expect("value").to_owned(),
            )
        })
        .collect();
    params.sort();
    params
}

fn tag<'a>(run: &'a Value, key: &str) -> Option<&'a str> {
    run["data"]["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)?["value"]
        .as_str()
}

const RECIPE: &str = "\
run: { name: mlflow-test, dir: /tmp/run }
model:
  model_dim: 192
  num_transformer_layers: 3
  qkv_multipliers: [0.5, 1.0]
data:
  sources:
    - { name: a, paths: [a.jsonl], weight: 1.0 }
    - { name: b, paths: [b.jsonl.gz], weight: 2.0 }
  seq_len: 32
schedule: { name: cosine, max_lr: 3.0e-3, warmup_iterations: 3 }
trainer: { global_batch: 8, steps: 1200 }
";

#[test]
fn mlflow_sink_against_a_real_server() {
    let Some(mlflow) = reference_mlflow() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = MlflowServer::start(&mlflow, &dir.path().join("server"));

    let t = Instant::now();
    params_and_every_metric_arrive(&server, &dir.path().join("run1"));
    eprintln!("params and metrics: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    resume_continues_the_same_run(&server, &dir.path().join("run3"));
    eprintln!("resume: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    a_server_outage_loses_and_duplicates_nothing(&mut server, &dir.path().join("run2"));
    eprintln!("outage: {:.1} s", t.elapsed().as_secs_f64());
}

fn params_and_every_metric_arrive(server: &MlflowServer, log_dir: &Path) {
    let mut params = recipe_params(RECIPE);
    assert!(params.contains(&("model.model_dim".to_owned(), "192".to_owned())));
    // Enough params for two batches, and one value over MLflow's length limit.
    params.extend((0..150).map(|i| (format!("extra.p{i:03}"), i.to_string())));
    params.push((
        "extra.long".to_owned(),
        "x".repeat(MAX_PARAM_VALUE_CHARS + 500),
    ));
    let started = Instant::now();
    let sink = MlflowSink::start(
        &config(&server.uri(), "corenet-test"),
        log_dir,
        params.clone(),
        false,
    );
    assert!(started.elapsed() < QUEUE_CALL_LIMIT, "start blocked");
    // 1200 steps × 2 metrics: three log-batch requests at MLflow's 1000 points each.
    let slowest = log_steps(&sink, 1..=1200);
    assert!(
        slowest < QUEUE_CALL_LIMIT,
        "log_metrics blocked for {slowest:?}"
    );
    sink.log_metrics(1201, timestamp(1201), &[("odd".to_owned(), f64::NAN)]);
    sink.set_tag("corenet.recipe_hash", "abc123");
    let run_id = run_id_of(&sink);
    let stats = sink.finish(RunStatus::Finished, Duration::from_secs(60));
    assert_eq!(stats.dropped_metrics, 0, "{stats:?}");
    assert_eq!(stats.pending_metrics, 0, "{stats:?}");
    // At least 3 batches of metrics, 2 of params and 1 of tags.
    assert!(stats.sent_batches >= 6, "{stats:?}");

    let run = server.run(&run_id);
    assert_eq!(run["info"]["status"], "FINISHED");
    assert!(run["info"]["end_time"].as_i64().is_some(), "{run}");
    let mut expect: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.clone(), v.chars().take(MAX_PARAM_VALUE_CHARS).collect()))
        .collect();
    expect.sort();
    assert_eq!(params_of(&run), expect);
    assert_eq!(tag(&run, "corenet.recipe_hash"), Some("abc123"));
    assert_eq!(tag(&run, "mlflow.runName"), Some("run1"));
    let log_dir_tag = log_dir.display().to_string();
    assert_eq!(tag(&run, "corenet.log_dir"), Some(log_dir_tag.as_str()));
    assert_history(server, &run_id, "loss", 1..=1200);
    assert_history(server, &run_id, "lr", 1..=1200);
    // MLflow keeps NaN.
    let odd = server.history(&run_id, "odd");
    assert!(
        odd.len() == 1 && odd[0].0 == 1201 && odd[0].1.is_nan(),
        "{odd:?}"
    );

    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(log_dir.join(RUN_FILE)).expect("run file"))
            .expect("run file JSON");
    assert_eq!(recorded["run_id"], run_id.as_str());
    assert_eq!(recorded["uri"], server.uri().as_str());
}

fn a_server_outage_loses_and_duplicates_nothing(server: &mut MlflowServer, log_dir: &Path) {
    let sink = MlflowSink::start(
        &config(&server.uri(), "corenet-outage"),
        log_dir,
        Vec::new(),
        false,
    );
    log_steps(&sink, 1..=20);
    let run_id = run_id_of(&sink);
    wait_for(Duration::from_secs(30), "the first 20 steps", || {
        server.history(&run_id, "loss").len() == 20
    });

    server.kill();
    let slowest = log_steps(&sink, 21..=60);
    assert!(
        slowest < QUEUE_CALL_LIMIT,
        "log_metrics blocked for {slowest:?} while the server is down"
    );
    wait_for(Duration::from_secs(10), "a failed request", || {
        sink.stats().failed_requests > 0
    });
    assert!(sink.stats().pending_metrics > 0, "{:?}", sink.stats());
    std::thread::sleep(Duration::from_secs(1));
    let slowest = log_steps(&sink, 61..=80);
    assert!(
        slowest < QUEUE_CALL_LIMIT,
        "log_metrics blocked for {slowest:?} while the server is down"
    );

    server.restart();
    let stats = sink.finish(RunStatus::Finished, Duration::from_secs(60));
    assert!(stats.failed_requests > 0, "{stats:?}");
    assert_eq!(stats.dropped_metrics, 0, "{stats:?}");
    assert_eq!(stats.pending_metrics, 0, "{stats:?}");
    let run = server.run(&run_id);
    assert_eq!(run["info"]["status"], "FINISHED");
    assert_history(server, &run_id, "loss", 1..=80);
    assert_history(server, &run_id, "lr", 1..=80);
}

fn resume_continues_the_same_run(server: &MlflowServer, log_dir: &Path) {
    let params = vec![
        ("a".to_owned(), "1".to_owned()),
        ("b".to_owned(), "2".to_owned()),
    ];
    let cfg = config(&server.uri(), "corenet-resume");
    let first = MlflowSink::start(&cfg, log_dir, params, false);
    log_steps(&first, 1..=5);
    let run_id = run_id_of(&first);
    let stats = first.finish(RunStatus::Killed, Duration::from_secs(30));
    assert_eq!(
        (stats.dropped_metrics, stats.pending_metrics),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(server.run(&run_id)["info"]["status"], "KILLED");

    // The resumed process changed one param and added one: the new one is logged, the changed
    // one keeps its first value (MLflow refuses changes), and nothing else is lost.
    let params = vec![
        ("a".to_owned(), "1".to_owned()),
        ("b".to_owned(), "changed".to_owned()),
        ("c".to_owned(), "3".to_owned()),
    ];
    let second = MlflowSink::start(&cfg, log_dir, params, true);
    assert_eq!(
        run_id_of(&second),
        run_id,
        "a resume continues the recorded run"
    );
    log_steps(&second, 6..=10);
    let stats = second.finish(RunStatus::Finished, Duration::from_secs(30));
    assert_eq!(
        (stats.dropped_metrics, stats.pending_metrics),
        (0, 0),
        "{stats:?}"
    );
    let run = server.run(&run_id);
    assert_eq!(run["info"]["status"], "FINISHED");
    assert_eq!(
        params_of(&run),
        [("a", "1"), ("b", "2"), ("c", "3")].map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_history(server, &run_id, "loss", 1..=10);

    // Not resuming: a new run, recorded in place of the old one.
    let third = MlflowSink::start(&cfg, log_dir, Vec::new(), false);
    let new_id = run_id_of(&third);
    assert_ne!(new_id, run_id);
    third.finish(RunStatus::Finished, Duration::from_secs(30));
    let recorded = std::fs::read_to_string(log_dir.join(RUN_FILE)).expect("run file");
    assert!(recorded.contains(&new_id), "{recorded}");
}

#[test]
fn an_unreachable_server_never_blocks_and_counts_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let sink = MlflowSink::start(
        &config(&uri, "nowhere"),
        dir.path(),
        vec![("p".into(), "1".into())],
        true,
    );
    assert!(started.elapsed() < QUEUE_CALL_LIMIT, "start blocked");
    let slowest = log_steps(&sink, 1..=10);
    assert!(
        slowest < QUEUE_CALL_LIMIT,
        "log_metrics blocked for {slowest:?}"
    );
    wait_for(Duration::from_secs(10), "a failed request", || {
        sink.stats().failed_requests > 0
    });
    assert_eq!(sink.run_id(), None);
    let started = Instant::now();
    let stats = sink.finish(RunStatus::Finished, Duration::from_secs(1));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "finish took {took:?}");
    assert_eq!(stats.dropped_metrics, 20, "{stats:?}");
    assert_eq!(stats.pending_metrics, 0, "{stats:?}");
    assert_eq!(stats.sent_batches, 0, "{stats:?}");
    assert!(!dir.path().join(RUN_FILE).exists());
}

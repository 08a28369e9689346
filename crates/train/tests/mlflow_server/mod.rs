//! A real MLflow tracking server for tests, from the reference venv (`.venv-ref/bin/mlflow`,
//! pinned by scripts/lib.sh `ensure_tracking_clients`), on a free loopback port with a SQLite
//! store in a temporary directory. Dropping the guard kills the server's whole process group,
//! so no server outlives a failed test.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a server may take to answer `/health` (the first start migrates the database).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The reference venv's `mlflow` command when the venv imports mlflow; None (the caller skips)
/// otherwise, unless CORENET_REQUIRE_REFERENCE makes the absence a failure.
pub fn reference_mlflow() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-ref/bin");
    let ok = Command::new(venv.join("python"))
        .args(["-c", "import mlflow"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mlflow = venv.join("mlflow");
    if ok && mlflow.exists() {
        return Some(mlflow);
    }
    assert!(
        std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
        "no .venv-ref with mlflow, and CORENET_REQUIRE_REFERENCE is set (scripts/setup.sh --reference)"
    );
    eprintln!("skipped: no .venv-ref with mlflow (scripts/setup.sh --reference)");
    None
}

/// A loopback port nothing listens on (just now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running `mlflow server`; killed (process group and all) when dropped.
pub struct MlflowServer {
    mlflow: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl MlflowServer {
    /// Starts a server with its store under `dir` and waits until it answers.
    pub fn start(mlflow: &Path, dir: &Path) -> MlflowServer {
        std::fs::create_dir_all(dir).expect("server directory");
        let mut server = MlflowServer {
            mlflow: mlflow.to_path_buf(),
            dir: dir.to_path_buf(),
            port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        let err = log.try_clone().expect("server log");
        let started = Instant::now();
        let child = Command::new(&self.mlflow)
            .arg("server")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!(
                "sqlite:///{}",
                self.dir.join("mlflow.db").display()
            ))
            .arg("--default-artifact-root")
            .arg(self.dir.join("artifacts"))
            .env("MLFLOW_DISABLE_TELEMETRY", "true")
            // No background job runner (a second process to start; the tests need none).
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .env("DO_NOT_TRACK", "true")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: the CLI starts a uvicorn child, and killing the group
            // takes both.
            .process_group(0)
            .spawn()
            .expect("spawn mlflow server");
        self.child = Some(child);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let health = format!("{}/health", self.uri());
        loop {
            if agent
                .get(&health)
                .call()
                .is_ok_and(|r| r.status().is_success())
            {
                eprintln!(
                    "mlflow server on port {} up in {:.1} s",
                    self.port,
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!("mlflow server exited ({status}):\n{}", self.log_tail());
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill();
                panic!(
                    "mlflow server did not answer /health within {START_TIMEOUT:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Kills the server abruptly (SIGKILL to its process group), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// `GET /api/2.0/mlflow/{endpoint}` with `query`; the JSON answer, or the failure.
    pub fn get(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let text = self.get_text(endpoint, query)?;
        serde_json::from_str(&text).map_err(|e| format!("{endpoint}: {e}: {text}"))
    }

    /// The answer's text, for reading numbers exactly.
    fn get_text(&self, endpoint: &str, query: &[(&str, &str)]) -> Result<String, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut request = agent.get(format!("{}/api/2.0/mlflow/{endpoint}", self.uri()));
        for (k, v) in query {
            request = request.query(*k, *v);
        }
        let mut response = request.call().map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{endpoint}: HTTP {status}: {text}"));
        }
        Ok(text)
    }

    /// `runs/get`'s `run`.
    pub fn run(&self, run_id: &str) -> Value {
        self.get("runs/get", &[("run_id", run_id)])
            .expect("runs/get")
            .get("run")
            .cloned()
            .expect("run in runs/get")
    }

    /// `(step, value, timestamp)` of every logged point of `key`, sorted by step.
    pub fn history(&self, run_id: &str, key: &str) -> Vec<(u64, f64, i64)> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let mut query = vec![
                ("run_id", run_id),
                ("metric_key", key),
                ("max_results", "25000"),
            ];
            if !token.is_empty() {
                query.push(("page_token", token.as_str()));
            }
            let text = self
                .get_text("metrics/get-history", &query)
                .expect("history");
            let answer: Value = serde_json::from_str(&text).expect("history JSON");
            let metrics = answer["metrics"].as_array().cloned().unwrap_or_default();
            let values = exact_values(&text);
            assert_eq!(values.len(), metrics.len(), "values in {text}");
            for (m, value) in metrics.iter().zip(values) {
                out.push((
                    m["step"].as_u64().expect("step"),
                    value,
                    m["timestamp"].as_i64().expect("timestamp"),
                ));
            }
            match answer["next_page_token"].as_str() {
                Some(t) if !t.is_empty() => token = t.to_owned(),
                _ => break,
            }
        }
        out.sort_by_key(|&(step, _, ts)| (step, ts));
        out
    }
}

/// Every `"value": <number>` of a JSON text, in order, parsed with std's correctly rounded
/// parser: serde_json's default float parser may be one ULP off, and "exact" means exact
/// (`"NaN"` reads as NaN). Metric answers hold no other `"value"` keys.
fn exact_values(text: &str) -> Vec<f64> {
    text.split("\"value\":")
        .skip(1)
        .map(|rest| {
            let token = rest
                .trim_start()
                .split([',', '}', '\n'])
                .next()
                .unwrap_or_default()
                .trim();
            match token {
                "\"NaN\"" => f64::NAN,
                "\"Infinity\"" => f64::INFINITY,
                "\"-Infinity\"" => f64::NEG_INFINITY,
                number => number.parse().expect("metric value"),
            }
        })
        .collect()
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.kill();
    }
}

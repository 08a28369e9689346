//! A real S3-compatible server for the object-store tests: moto's, from the reference venv
//! (`scripts/setup.sh --reference`), on a free port of 127.0.0.1, filled with boto3.
//! Shared by path with the end-to-end tests in the root `tests/`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials moto accepts; exported to every client the tests start.
pub const ACCESS_KEY: &str = "corenet-test-key";
pub const SECRET_KEY: &str = "corenet-test-secret-DO-NOT-LOG";

/// The reference venv's python when it has moto's server and boto3; None (the caller skips)
/// without it, unless CORENET_REQUIRE_REFERENCE makes that a failure.
pub fn moto_python() -> Option<PathBuf> {
    let python = workspace_root().join(".venv-ref/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import moto.server, boto3"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
        "no .venv-ref with moto[server], and CORENET_REQUIRE_REFERENCE is set (scripts/setup.sh --reference)"
    );
    eprintln!("skipped: no .venv-ref with moto[server] (scripts/setup.sh --reference)");
    None
}

/// The workspace root, from the crate this file is compiled into (crates/data or tests).
fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.ancestors()
        .find(|d| d.join("scripts/s3_fill.py").is_file())
        .unwrap_or(dir)
        .to_path_buf()
}

fn scripts() -> PathBuf {
    workspace_root().join("scripts")
}

/// A running server; stopped when dropped.
pub struct S3Server {
    python: PathBuf,
    child: Option<Child>,
    pub port: u16,
}

impl S3Server {
    pub fn start(python: &Path) -> S3Server {
        let port = free_port();
        let mut server = S3Server {
            python: python.to_path_buf(),
            child: None,
            port,
        };
        server.spawn();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto's server");
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto's server did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (its buckets go with it: moto keeps them in memory).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Uploads every file under `folder` to `bucket` as `prefix/relative/path`, with boto3.
    pub fn fill(&self, bucket: &str, folder: &Path, prefix: &str) {
        let out = Command::new(&self.python)
            .arg(scripts().join("s3_fill.py"))
            .args([&self.endpoint(), bucket])
            .arg(folder)
            .arg(prefix)
            .envs(credentials())
            .output()
            .expect("run s3_fill.py");
        assert!(
            out.status.success(),
            "s3_fill.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl S3Server {
    /// Runs `code` with `s3`, a boto3 client of this server, in scope; returns its stdout.
    pub fn boto3(&self, code: &str) -> String {
        let program = format!(
            "import boto3, hashlib, sys\ns3 = boto3.client('s3', endpoint_url={:?}, region_name='us-east-1')\n{code}",
            self.endpoint()
        );
        let out = Command::new(&self.python)
            .args(["-c", &program])
            .envs(credentials())
            .output()
            .expect("run boto3");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The environment a client of the test server needs.
pub fn credentials() -> [(&'static str, &'static str); 3] {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ]
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

//! Sources on a real S3-compatible server (moto's, on 127.0.0.1): the stream from the bucket
//! equals the stream from the same shards on disk, survives the server going down mid-shard,
//! and names the URL in every error.

#[allow(dead_code)]
#[path = "api/common.rs"]
mod common;
#[allow(dead_code)]
mod s3_server;

use std::path::Path;
use std::sync::{Mutex, Once};
use std::time::Duration;

use corenet_data::{
    remote_totals, Batch, DataConfig, DataStream, Error, RemoteFailure, ShardList, SourceConfig,
    StorageConfig, StreamState,
};

use common::{config, tokenizer, write_source, Kind};
use s3_server::{moto_python, S3Server, SECRET_KEY};

/// The server's credentials, in this process's environment as a user's would be. Set once,
/// before any test of this binary reads the environment.
fn export_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (k, v) in s3_server::credentials() {
            std::env::set_var(k, v);
        }
    });
}

/// The tests run one at a time, so that each reads the process-wide request counters alone.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn server() -> Option<S3Server> {
    let python = moto_python()?;
    export_credentials();
    Some(S3Server::start(&python))
}

/// `local`'s sources moved to `s3://bucket/NAME/*`, small blocks so every shard spans many
/// ranged requests.
fn in_bucket(local: &DataConfig, bucket: &str, server: &S3Server) -> DataConfig {
    let sources = local
        .sources
        .iter()
        .map(|s| SourceConfig {
            paths: vec![format!("s3://{bucket}/{}/*", s.name)],
            ..s.clone()
        })
        .collect();
    DataConfig {
        sources,
        storage: StorageConfig {
            endpoint: Some(server.endpoint()),
            block_bytes: 4096,
            read_ahead: 1,
            retry_seconds: 60.0,
            ..Default::default()
        },
        ..local.clone()
    }
}

fn batches(cfg: &DataConfig, rank: usize, resume: Option<StreamState>, n: usize) -> Vec<Batch> {
    let stream = DataStream::with_tokenizer(cfg, tokenizer(), rank, 2, resume).expect("stream");
    stream.take(n).map(|b| b.expect("batch")).collect()
}

fn same(a: &[Batch], b: &[Batch], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.tokens, y.tokens, "{what}: batch {i}");
        assert_eq!(x.row_sources, y.row_sources, "{what}: batch {i}");
        assert_eq!(x.state, y.state, "{what}: batch {i}");
    }
}

#[test]
fn a_bucket_streams_what_the_disk_streams_and_resumes_exactly() {
    let _serial = serial();
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = vec![
        write_source(dir.path(), "rw", Kind::Parquet, 2, 40, 40).0,
        write_source(dir.path(), "rp", Kind::Jsonl, 3, 12, 40).0,
        write_source(dir.path(), "pile", Kind::Zst, 1, 30, 40).0,
        write_source(dir.path(), "dolma", Kind::Gz, 2, 10, 40).0,
    ];
    let local = config(sources, 24, 3, 2);
    server.fill("corpus", dir.path(), "");
    let remote = in_bucket(&local, "corpus", &server);
    for rank in 0..2 {
        let disk = batches(&local, rank, None, 30);
        let bucket = batches(&remote, rank, None, 30);
        same(&disk, &bucket, &format!("rank {rank}"));
        let state =
            StreamState::from_json(&bucket[11].state.to_json().expect("json")).expect("state");
        let resumed = batches(&remote, rank, Some(state), 18);
        same(&disk[12..], &resumed, &format!("rank {rank} resumed at 12"));
    }
}

#[test]
fn the_server_going_down_mid_shard_loses_and_repeats_nothing() {
    let _serial = serial();
    let Some(mut server) = server() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // One shard of ~100 blocks, read by one worker that prefetches one batch.
    let source = write_source(dir.path(), "rp", Kind::Jsonl, 1, 600, 60).0;
    let mut local = config(vec![source], 32, 2, 1);
    local.prefetch = 1;
    server.fill("flaky", dir.path(), "");
    let remote = in_bucket(&local, "flaky", &server);
    let disk = batches(&local, 0, None, 120);

    let before = remote_totals().retries;
    let mut stream = DataStream::with_tokenizer(&remote, tokenizer(), 0, 2, None).expect("stream");
    let mut got: Vec<Batch> = (&mut stream).take(20).map(|b| b.expect("batch")).collect();
    // Down in the middle of the shard; back (empty, as moto restarts) and refilled 2 s later.
    server.stop();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        server.restart();
        server.fill("flaky", dir.path(), "");
        (server, dir)
    });
    got.extend(
        (&mut stream)
            .take(100)
            .map(|b| b.expect("batch after the outage")),
    );
    let (_server, _dir) = back.join().expect("restart thread");
    same(&disk, &got, "through the outage");
    assert!(
        remote_totals().retries > before,
        "the outage was not seen: no request was retried"
    );
    let stats = stream.stats();
    assert_eq!((stats[0].bad_files, stats[0].bad_records), (0, 0));
}

#[test]
fn a_changed_object_is_reported_on_resume() {
    let _serial = serial();
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let source = write_source(dir.path(), "rp", Kind::Jsonl, 2, 8, 20).0;
    server.fill("versions", dir.path(), "");
    let remote = in_bucket(&config(vec![source], 16, 2, 1), "versions", &server);
    let saved = ShardList::of_config(&remote).expect("stamp");
    assert!(saved.sources[0]
        .files
        .iter()
        .all(|f| f.fingerprint.starts_with("etag:")));

    // Re-exported: same name, other bytes.
    let shard = dir.path().join("rp/rp-00001.jsonl");
    let mut text = std::fs::read_to_string(&shard).expect("read");
    text.push_str("{\"text\": \"one more document\"}\n");
    std::fs::write(&shard, text).expect("write");
    server.fill("versions", dir.path(), "");
    let now = ShardList::of_config(&remote).expect("stamp");
    let refused = now.check_resume(Some(&saved), false).err();
    assert!(
        matches!(refused, Some(Error::DataChanged { .. })),
        "{refused:?}"
    );
    let change = now.changes_since(&saved).expect("a change");
    let changed: Vec<String> = change.sources[0]
        .changed
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(changed, ["s3://versions/rp/rp-00001.jsonl"]);
}

/// The error of opening a stream on `cfg`, as text; also checks that no secret is in it.
fn open_error(cfg: &DataConfig) -> (Error, String) {
    let e = DataStream::with_tokenizer(cfg, tokenizer(), 0, 1, None)
        .err()
        .expect("the stream should not open");
    let msg = e.to_string();
    assert!(!msg.contains(SECRET_KEY), "a secret in: {msg}");
    (e, msg)
}

fn one_source(paths: &str, storage: StorageConfig) -> DataConfig {
    let source = SourceConfig {
        name: "web".into(),
        paths: vec![paths.into()],
        ..Default::default()
    };
    DataConfig {
        storage,
        ..config(vec![source], 16, 2, 1)
    }
}

#[test]
fn a_missing_bucket_or_object_is_a_clear_error_before_any_batch() {
    let _serial = serial();
    let Some(server) = server() else { return };
    let storage = StorageConfig {
        endpoint: Some(server.endpoint()),
        retry_seconds: 5.0,
        ..Default::default()
    };
    let (e, msg) = open_error(&one_source(
        "s3://no-such-bucket/web/*.jsonl",
        storage.clone(),
    ));
    assert!(
        msg.contains("s3://no-such-bucket/web/*.jsonl") && msg.contains("cannot list"),
        "{msg}"
    );
    assert!(matches!(e, Error::Remote { .. }), "{e:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    write_source(dir.path(), "web", Kind::Jsonl, 1, 4, 10);
    server.fill("present", dir.path(), "");
    let (e, msg) = open_error(&one_source(
        "s3://present/web/missing.jsonl",
        storage.clone(),
    ));
    assert!(msg.starts_with("s3://present/web/missing.jsonl: "), "{msg}");
    assert!(
        matches!(
            e,
            Error::Remote {
                failure: RemoteFailure::NotFound,
                ..
            }
        ),
        "{e:?}"
    );

    let (_, msg) = open_error(&one_source("s3://present/nothing-here/*.jsonl", storage));
    assert!(msg.contains("no file matches"), "{msg}");
}

#[test]
fn an_unreachable_endpoint_gives_up_with_the_url() {
    let _serial = serial();
    export_credentials();
    let port = s3_server::free_port();
    let storage = StorageConfig {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        retry_seconds: 1.0,
        ..Default::default()
    };
    let (e, msg) = open_error(&one_source("s3://corpus/web/*.jsonl", storage));
    assert!(
        msg.contains("s3://corpus/web/*.jsonl") && msg.contains("gave up after"),
        "{msg}"
    );
    assert!(
        matches!(
            e,
            Error::Remote {
                failure: RemoteFailure::Unreachable,
                ..
            }
        ),
        "{e:?}"
    );
}

/// A plain HTTP server on 127.0.0.1 that answers `*404*` paths with 404 and every other path
/// with an HTML page, as a misconfigured or login-walled host does.
struct HtmlServer {
    child: std::process::Child,
    port: u16,
}

impl HtmlServer {
    fn start(python: &Path) -> HtmlServer {
        let port = s3_server::free_port();
        let code = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        if "404" in self.path:
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        page = b"<html><body>Please sign in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body: self.wfile.write(page)
    def do_HEAD(self): self.answer(False)
    def do_GET(self): self.answer(True)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
        let child = std::process::Command::new(python)
            .args(["-c", code, &port.to_string()])
            .spawn()
            .expect("start the HTTP server");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the HTTP server did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        HtmlServer { child, port }
    }
}

impl Drop for HtmlServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_https_source_that_is_missing_or_html_names_the_url() {
    let _serial = serial();
    let Some(python) = moto_python() else { return };
    let server = HtmlServer::start(&python);
    let base = format!("http://127.0.0.1:{}", server.port);
    let storage = StorageConfig {
        retry_seconds: 2.0,
        ..Default::default()
    };
    let missing = format!("{base}/data/shard-404.jsonl");
    let (e, msg) = open_error(&one_source(&missing, storage.clone()));
    assert!(msg.starts_with(&format!("{missing}: ")), "{msg}");
    assert!(
        matches!(
            e,
            Error::Remote {
                failure: RemoteFailure::NotFound,
                ..
            }
        ),
        "{e:?}"
    );

    let page = format!("{base}/data/shard-00000.parquet");
    let (_, msg) = open_error(&one_source(&page, storage));
    assert!(
        msg.starts_with(&format!("{page}: ")) && msg.contains("HTML page"),
        "{msg}"
    );
}

#[test]
fn a_rank_fetches_the_footer_and_its_own_row_groups_only() {
    let _serial = serial();
    let Some(server) = server() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    // Hex of a multiplicative hash: text that compresses little, so row groups are large.
    let texts: Vec<String> = (0..400u64)
        .map(|i| {
            (0..200u64)
                .map(|j| {
                    format!(
                        "{:016x}",
                        (i * 1000 + j).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let path = dir.path().join("web/part-00000.parquet");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    corenet_data::sample::write_parquet(&path, &[("text", texts.clone())], 50).expect("parquet");
    server.fill("groups", dir.path(), "");
    let size = std::fs::metadata(&path).expect("size").len();
    let storage = StorageConfig {
        endpoint: Some(server.endpoint()),
        block_bytes: 16 * 1024,
        read_ahead: 0,
        ..Default::default()
    };
    let url = std::path::PathBuf::from("s3://groups/web/part-00000.parquet");
    // Reader 0 of 4 owns row groups 0 and 4 of the 8.
    let spec = corenet_data::read::OpenSpec {
        path: &url,
        format: corenet_data::Format::Parquet,
        text_key: "text",
        template: None,
        stride: corenet_data::read::Stride { index: 0, count: 4 },
        max_record_bytes: 1 << 20,
        storage: &storage,
    };
    let before = remote_totals().bytes;
    let mut reader =
        corenet_data::read::open(&spec, corenet_data::read::Position::start(spec.format))
            .expect("open");
    let mut got = Vec::new();
    while let Some(item) = reader.next_item().expect("read") {
        match item {
            corenet_data::read::ReadItem::Doc(r) => got.push(r.text),
            corenet_data::read::ReadItem::Bad(e) => panic!("bad record: {e}"),
        }
    }
    let fetched = remote_totals().bytes - before;
    let owned: Vec<String> = texts[0..50]
        .iter()
        .chain(&texts[200..250])
        .cloned()
        .collect();
    assert_eq!(got, owned);
    assert!(
        fetched * 2 < size,
        "fetched {fetched} of {size} bytes for 2 of 8 row groups"
    );
}

#[test]
fn a_shard_that_stays_unreachable_is_skipped_and_counted() {
    let _serial = serial();
    let Some(mut server) = server() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote_dir = dir.path().join("bucket");
    write_source(&remote_dir, "web", Kind::Jsonl, 1, 200, 40);
    server.fill("gone", &remote_dir, "");
    let local = write_source(dir.path(), "disk", Kind::Jsonl, 1, 12, 40).0;
    let source = SourceConfig {
        name: "web".into(),
        paths: vec!["s3://gone/web/*".into(), local.paths[0].clone()],
        ..Default::default()
    };
    let mut cfg = config(vec![source], 32, 2, 1);
    cfg.prefetch = 1;
    cfg.storage = StorageConfig {
        endpoint: Some(server.endpoint()),
        block_bytes: 4096,
        read_ahead: 1,
        retry_seconds: 1.0,
        ..Default::default()
    };
    let mut stream = DataStream::with_tokenizer(&cfg, tokenizer(), 0, 1, None).expect("stream");
    let first: Vec<Batch> = (&mut stream).take(3).map(|b| b.expect("batch")).collect();
    assert_eq!(first.len(), 3);
    server.stop(); // for good
    let later: Vec<Batch> = (&mut stream)
        .take(40)
        .map(|b| b.expect("the stream goes on over the disk shard"))
        .collect();
    assert_eq!(later.len(), 40);
    let stats = stream.stats();
    assert!(stats[0].bad_files >= 1, "{:?}", stats[0]);
}

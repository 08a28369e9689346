//! c10d process groups over Gloo on loopback. Multi-rank tests re-run this test binary as child
//! processes (`CORENET_DIST_CHILD` selects the child's role, `--exact NAME` its test), one per
//! rank, with torchrun-style environment variables; the parent checks their exit codes and
//! output, and kills them if they outlive a deadline, so a hang fails the test instead of
//! stalling it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corenet_ffi::Error as FfiError;
use corenet_train::dist::{self, Backend, DistEnv, ReduceOp};
use corenet_train::Error;
use tch::{Device, Kind, Tensor};

const ROLE_VAR: &str = "CORENET_DIST_CHILD";

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

struct ChildResult {
    rank: usize,
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `world` copies of the test `test` with role `role`, as ranks 0..world, and waits for
/// them (killing any still alive after `deadline`).
fn run_ranks(test: &str, role: &str, world: usize, deadline: Duration) -> Vec<ChildResult> {
    let exe = std::env::current_exe().expect("current exe");
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut children = Vec::new();
    for rank in 0..world {
        let out = std::fs::File::create(dir.path().join(format!("{rank}.out"))).expect("out");
        let err = std::fs::File::create(dir.path().join(format!("{rank}.err"))).expect("err");
        let child = Command::new(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, role)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", world.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn a rank");
        children.push(child);
    }
    let start = Instant::now();
    let mut statuses = vec![None; world];
    while statuses.iter().any(Option::is_none) {
        for (rank, child) in children.iter_mut().enumerate() {
            if statuses[rank].is_none() {
                statuses[rank] = child.try_wait().expect("try_wait");
            }
        }
        if start.elapsed() > deadline {
            for (rank, child) in children.iter_mut().enumerate() {
                if statuses[rank].is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            let logs: Vec<String> = (0..world).map(|r| read_logs(dir.path(), r)).collect();
            panic!(
                "ranks still running after {deadline:?} (a hang):\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    statuses
        .into_iter()
        .enumerate()
        .map(|(rank, status)| ChildResult {
            rank,
            success: status.is_some_and(|s| s.success()),
            stdout: std::fs::read_to_string(dir.path().join(format!("{rank}.out")))
                .unwrap_or_default(),
            stderr: std::fs::read_to_string(dir.path().join(format!("{rank}.err")))
                .unwrap_or_default(),
        })
        .collect()
}

fn read_logs(dir: &Path, rank: usize) -> String {
    let out = std::fs::read_to_string(dir.join(format!("{rank}.out"))).unwrap_or_default();
    let err = std::fs::read_to_string(dir.join(format!("{rank}.err"))).unwrap_or_default();
    format!("--- rank {rank} stdout:\n{out}\n--- rank {rank} stderr:\n{err}")
}

fn assert_all_ok(results: &[ChildResult], marker: &str) {
    for r in results {
        assert!(
            r.success && r.stdout.contains(&format!("{marker} rank {}", r.rank)),
            "rank {} failed:\n--- stdout:\n{}\n--- stderr:\n{}",
            r.rank,
            r.stdout,
            r.stderr
        );
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).expect("f32 values")
}

fn cpu(values: &[f32]) -> Tensor {
    Tensor::from_slice(values)
}

// ---------------------------------------------------------------------------------------------

fn collectives_child() {
    let pg = dist::join_from_env(Backend::Gloo, Duration::from_secs(30)).expect("init");
    let r = pg.rank() as f32;
    let world = pg.world_size();
    assert_eq!(world, 2);

    // all_reduce: (r+1) * [1, 2, 3, 4] summed over r = 0, 1.
    let t = cpu(&[1.0, 2.0, 3.0, 4.0]) * f64::from(r + 1.0);
    pg.all_reduce_sum(&t).expect("all_reduce_sum");
    assert_eq!(f32s(&t), [3.0, 6.0, 9.0, 12.0]);
    let t = cpu(&[1.0, 2.0, 3.0, 4.0]) * f64::from(r + 1.0);
    pg.all_reduce_avg(&t).expect("all_reduce_avg");
    assert_eq!(f32s(&t), [1.5, 3.0, 4.5, 6.0]);
    // A shallow clone (as `p.grad()` returns) is reduced in place too.
    let t = cpu(&[r; 3]);
    pg.all_reduce_sum(&t.shallow_clone())
        .expect("all_reduce shallow");
    assert_eq!(f32s(&t), [1.0; 3]);
    // bf16.
    let t = Tensor::full([3], f64::from(r + 1.0), (Kind::BFloat16, Device::Cpu));
    pg.all_reduce_sum(&t).expect("bf16 all_reduce");
    assert_eq!(t.kind(), Kind::BFloat16);
    assert_eq!(f32s(&t), [3.0; 3]);

    // Coalesced bucket: different shapes, one collective.
    let a = cpu(&[r + 1.0; 3]);
    let b = Tensor::full([2, 2], f64::from(r), (Kind::Float, Device::Cpu));
    let c = cpu(&[10.0 * r]);
    pg.all_reduce_coalesced(
        &[a.shallow_clone(), b.shallow_clone(), c.shallow_clone()],
        ReduceOp::Sum,
    )
    .expect("coalesced");
    assert_eq!(f32s(&a), [3.0; 3]);
    assert_eq!(b.size(), [2, 2]);
    assert_eq!(f32s(&b), [1.0; 4]);
    assert_eq!(f32s(&c), [10.0]);
    pg.all_reduce_coalesced(&[a.shallow_clone(), b.shallow_clone()], ReduceOp::Avg)
        .expect("coalesced avg");
    assert_eq!(f32s(&a), [3.0; 3]);
    assert_eq!(f32s(&b), [1.0; 4]);
    pg.all_reduce_coalesced(&[], ReduceOp::Sum)
        .expect("empty bucket");
    let mixed = pg.all_reduce_coalesced(&[cpu(&[1.0]), Tensor::from_slice(&[1i64])], ReduceOp::Sum);
    assert!(matches!(mixed, Err(FfiError::Dist { .. })), "{mixed:?}");

    // reduce_scatter: (r+1) * [0..8) summed = 3 * [0..8); rank r gets elements [4r, 4r+4).
    let input = Tensor::arange(8, (Kind::Float, Device::Cpu)) * f64::from(r + 1.0);
    let shard = Tensor::zeros([4], (Kind::Float, Device::Cpu));
    pg.reduce_scatter(&input, &shard, ReduceOp::Sum)
        .expect("reduce_scatter");
    let base = 4.0 * r;
    let want: Vec<f32> = (0..4).map(|i| 3.0 * (base + i as f32)).collect();
    assert_eq!(f32s(&shard), want);
    pg.reduce_scatter(&input, &shard, ReduceOp::Avg)
        .expect("reduce_scatter avg");
    let want: Vec<f32> = (0..4).map(|i| 1.5 * (base + i as f32)).collect();
    assert_eq!(f32s(&shard), want);
    let bad = pg.reduce_scatter(
        &input,
        &Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        ReduceOp::Sum,
    );
    assert!(matches!(bad, Err(FfiError::Dist { .. })), "{bad:?}");

    // all_gather: shard [10r, 10r+1, 10r+2] -> [0, 1, 2, 10, 11, 12].
    let shard = cpu(&[10.0 * r, 10.0 * r + 1.0, 10.0 * r + 2.0]);
    let flat = Tensor::zeros([6], (Kind::Float, Device::Cpu));
    pg.all_gather(&shard, &flat).expect("all_gather");
    assert_eq!(f32s(&flat), [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);
    // Into a 2-D output (world x shard).
    let grid = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
    pg.all_gather(&shard, &grid).expect("all_gather 2-D");
    assert_eq!(f32s(&grid), [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]);

    // broadcast from rank 1, then an int64 tensor from rank 0.
    let t = cpu(&[r, r + 0.5]);
    pg.broadcast(&t, 1).expect("broadcast");
    assert_eq!(f32s(&t), [1.0, 1.5]);
    let ints = Tensor::from_slice(&[42i64 + pg.rank() as i64, 7]);
    pg.broadcast(&ints, 0).expect("broadcast i64");
    assert_eq!(Vec::<i64>::try_from(&ints).expect("i64"), [42, 7]);
    assert!(pg.broadcast(&t, 2).is_err(), "root outside the world");

    pg.barrier().expect("barrier");

    // Store: every rank publishes a recipe hash and reads the other's.
    let mine = format!("sha256:recipe-of-rank-{}", pg.rank());
    pg.store_set(&format!("recipe_hash/{}", pg.rank()), mine.as_bytes())
        .expect("store_set");
    for other in 0..world {
        let got = pg
            .store_get(&format!("recipe_hash/{other}"))
            .expect("store_get");
        assert_eq!(got, format!("sha256:recipe-of-rank-{other}").as_bytes());
    }
    pg.store_set("empty", b"").expect("store_set empty");
    assert_eq!(pg.store_get("empty").expect("store_get empty"), b"");

    pg.barrier().expect("final barrier");
    println!("COLLECTIVES_OK rank {}", pg.rank());
}

#[test]
fn collectives() {
    if std::env::var(ROLE_VAR).is_ok() {
        return collectives_child();
    }
    let results = run_ranks("collectives", "collectives", 2, Duration::from_secs(90));
    assert_all_ok(&results, "COLLECTIVES_OK");
}

// ---------------------------------------------------------------------------------------------

const SHORT_TIMEOUT: Duration = Duration::from_secs(3);

/// Rank 1 leaves (killed, or stuck without participating) after a barrier; rank 0's next collective
/// must fail within the timeout, not hang.
fn lost_rank_child(role: &str) {
    let pg = dist::join_from_env(Backend::Gloo, SHORT_TIMEOUT).expect("init");
    pg.barrier().expect("first barrier");
    if pg.rank() == 1 {
        if role == "kill" {
            // Dies with SIGKILL, as a crashed or OOM-killed rank would: no destructors run.
            let _ = Command::new("kill")
                .args(["-9", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(60));
        }
        // Stuck: alive, connected, but never joins the next collective.
        std::thread::sleep(SHORT_TIMEOUT * 3);
        std::process::exit(0);
    }
    let start = Instant::now();
    let t = cpu(&[1.0; 4]);
    let result = pg.all_reduce_sum(&t);
    let elapsed = start.elapsed();
    match result {
        Err(FfiError::Dist { op, message }) => {
            println!("LOST_RANK_ERR op={op} after {elapsed:?}: {message}");
            assert!(
                elapsed < SHORT_TIMEOUT + Duration::from_secs(5),
                "the error took {elapsed:?}"
            );
        }
        other => panic!("expected a Dist error, got {other:?}"),
    }
    // Later collectives fail too rather than hang.
    let again = pg.barrier();
    assert!(again.is_err(), "barrier after a lost rank: {again:?}");
    println!("LOST_RANK_OK rank 0");
    // Skip the group's destructor: a real trainer would exit here with the error.
    std::process::exit(0);
}

fn lost_rank(role: &str, test: &str) {
    let results = run_ranks(test, role, 2, Duration::from_secs(60));
    let r0 = &results[0];
    assert!(
        r0.success && r0.stdout.contains("LOST_RANK_OK rank 0"),
        "rank 0:\n{}\n{}\nrank 1:\n{}\n{}",
        r0.stdout,
        r0.stderr,
        results[1].stdout,
        results[1].stderr
    );
    let line = r0
        .stdout
        .lines()
        .find(|l| l.contains("LOST_RANK_ERR"))
        .unwrap_or_default();
    eprintln!("{role}: {line}");
}

#[test]
fn killed_rank_gives_error_not_hang() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        return lost_rank_child(&role);
    }
    lost_rank("kill", "killed_rank_gives_error_not_hang");
}

#[test]
fn stuck_rank_times_out() {
    if let Ok(role) = std::env::var(ROLE_VAR) {
        return lost_rank_child(&role);
    }
    lost_rank("stuck", "stuck_rank_times_out");
}

// ---------------------------------------------------------------------------------------------

fn local_env(rank: usize, world_size: usize, port: u16) -> DistEnv {
    DistEnv {
        rank,
        world_size,
        local_rank: rank,
        local_world_size: world_size,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    }
}

#[test]
fn single_rank_group_works_in_process() {
    if std::env::var(ROLE_VAR).is_ok() {
        return;
    }
    let pg = dist::join(
        &local_env(0, 1, free_port()),
        Backend::Gloo,
        Duration::from_secs(10),
    )
    .expect("world of one");
    let t = cpu(&[1.0, 2.0]);
    pg.all_reduce_avg(&t).expect("all_reduce");
    assert_eq!(f32s(&t), [1.0, 2.0]);
    pg.store_set("k", b"v").expect("set");
    assert_eq!(pg.store_get("k").expect("get"), b"v");
    pg.barrier().expect("barrier");
}

#[test]
fn port_in_use_is_an_error() {
    if std::env::var(ROLE_VAR).is_ok() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let start = Instant::now();
    let err = dist::join(&local_env(0, 1, port), Backend::Gloo, SHORT_TIMEOUT)
        .expect_err("the port is taken");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    match &err {
        Error::Dist { op, message } => {
            assert_eq!(op, "init");
            assert!(message.contains(&port.to_string()), "{message}");
        }
        other => panic!("expected a Dist error, got {other:?}"),
    }
    eprintln!("port in use: {err}");
}

#[test]
fn unreachable_master_is_an_error() {
    if std::env::var(ROLE_VAR).is_ok() {
        return;
    }
    // Rank 1 of 2 connecting to a port nobody listens on.
    let start = Instant::now();
    let err = dist::join(&local_env(1, 2, free_port()), Backend::Gloo, SHORT_TIMEOUT)
        .expect_err("nobody listens");
    let elapsed = start.elapsed();
    assert!(
        elapsed < SHORT_TIMEOUT + Duration::from_secs(20),
        "took {elapsed:?}"
    );
    assert!(matches!(err, Error::Dist { .. }), "{err:?}");
    eprintln!("unreachable master after {elapsed:?}: {err}");
}

#[test]
fn invalid_env_is_an_error_naming_the_variable() {
    if std::env::var(ROLE_VAR).is_ok() {
        return;
    }
    let err = dist::join(&local_env(2, 2, 29500), Backend::Gloo, SHORT_TIMEOUT)
        .expect_err("rank >= world size");
    match &err {
        Error::Env { var, message } => {
            assert_eq!(var, "RANK");
            assert!(message.contains("world size 2"), "{message}");
        }
        other => panic!("expected an Env error, got {other:?}"),
    }

    let vars = [
        ("RANK", "1"),
        ("WORLD_SIZE", "two"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];
    let err = DistEnv::from_lookup(|k| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    })
    .expect_err("garbled WORLD_SIZE");
    assert!(
        matches!(&err, Error::Env { var, .. } if var == "WORLD_SIZE"),
        "{err:?}"
    );
    assert!(err.to_string().contains("`two`"), "{err}");
}

#[cfg(not(feature = "nccl"))]
#[test]
fn nccl_without_the_feature_is_an_error() {
    if std::env::var(ROLE_VAR).is_ok() {
        return;
    }
    let err = dist::join(&local_env(0, 1, free_port()), Backend::Nccl, SHORT_TIMEOUT)
        .expect_err("not compiled in");
    assert!(err.to_string().contains("nccl"), "{err}");
}

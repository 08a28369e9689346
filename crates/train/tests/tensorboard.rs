//! The TensorBoard event writer: file naming, round trips through the test reader, CRC
//! corruption detected, and TensorBoard's own `EventFileLoader` reading our file (the live
//! check needs the reference venv; `CORENET_REQUIRE_REFERENCE` makes its absence a failure).

mod common;
mod run_recipe;
mod tensorboard_reader;

use std::path::{Path, PathBuf};

use corenet_train::log::tensorboard::{Event as EventProto, EventWriter, FILE_VERSION, HEADER_LEN};
use prost::Message;
use tensorboard_reader::{read_events, read_records};

fn event_file(dir: &Path) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.remove(0)
}

fn write_sample(dir: &Path) -> PathBuf {
    let mut w = EventWriter::create(dir).expect("create writer");
    for step in 0..5i64 {
        w.add_scalar("loss/total_loss", 10.0 - step as f32 * 0.5, step)
            .expect("write");
        w.add_scalars(
            step,
            &[
                ("LR/Group-0", 1e-6 * (step + 1) as f32),
                ("tokens_per_s", 1234.5),
            ],
        )
        .expect("write");
    }
    w.add_scalar("neg_step", -1.0, -7).expect("write");
    w.flush().expect("flush");
    w.path().to_path_buf()
}

#[test]
fn file_name_and_first_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_sample(dir.path());
    assert_eq!(event_file(dir.path()), path);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name");
    let rest = name.strip_prefix("events.out.tfevents.").expect("prefix");
    let (secs, host) = rest.split_once('.').expect("secs.host");
    assert!(secs.len() >= 10 && secs.parse::<u64>().is_ok(), "{secs}");
    assert!(!host.is_empty());

    let events = read_events(&path).expect("read back");
    assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
    assert!(events[0].scalars.is_empty());
    assert!(events[0].wall_time > 1.6e9);
}

#[test]
fn write_then_read_back_scalars() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_sample(dir.path());
    let events = read_events(&path).expect("read back");
    assert_eq!(events.len(), 1 + 5 * 2 + 1);
    let mut wall = 0.0;
    for (i, step) in (0..5i64).enumerate() {
        let a = &events[1 + 2 * i];
        let b = &events[2 + 2 * i];
        assert_eq!(a.step, step);
        assert_eq!(
            a.scalars,
            vec![("loss/total_loss".to_string(), 10.0 - step as f32 * 0.5)]
        );
        assert_eq!(b.step, step);
        assert_eq!(
            b.scalars,
            vec![
                ("LR/Group-0".to_string(), 1e-6 * (step + 1) as f32),
                ("tokens_per_s".to_string(), 1234.5)
            ]
        );
        assert!(a.wall_time >= wall && b.wall_time >= a.wall_time);
        wall = b.wall_time;
    }
    let last = events.last().expect("last");
    assert_eq!((last.step, last.scalars[0].1), (-7, -1.0));
}

#[test]
fn corrupt_byte_is_a_crc_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_sample(dir.path());
    let clean = std::fs::read(&path).expect("read");
    let n_records = read_records(&path).expect("clean file reads").len();
    assert_eq!(n_records, 12);

    // A byte inside a record's data (second record, after its 12-byte header).
    let first_len = u64::from_le_bytes(clean[..8].try_into().expect("8 bytes")) as usize;
    let second = HEADER_LEN + first_len + 4;
    for (at, what) in [
        (second + HEADER_LEN + 3, "data CRC"),
        (second + 1, "length CRC"),
        (2, "length CRC"),
    ] {
        let mut bytes = clean.clone();
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).expect("write corrupted");
        let err = read_records(&path)
            .expect_err("corruption must be detected")
            .to_string();
        assert!(err.contains(what), "flip at {at}: {err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    // A flipped stored CRC, and a truncated tail.
    let mut bytes = clean.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).expect("write");
    assert!(read_records(&path).is_err_and(|e| e.to_string().contains("data CRC")));
    std::fs::write(&path, &clean[..clean.len() - 2]).expect("write");
    assert!(read_records(&path).is_err_and(|e| e.to_string().contains("past the end")));
    std::fs::write(&path, &clean[..clean.len() - 5]).expect("write");
    assert!(read_records(&path).is_err());
}

#[test]
fn two_writers_in_one_directory_get_distinct_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = EventWriter::create(dir.path()).expect("a");
    let b = EventWriter::create(dir.path()).expect("b");
    assert_ne!(a.path(), b.path());
    drop((a, b));
    assert_eq!(std::fs::read_dir(dir.path()).expect("read dir").count(), 2);
}

#[test]
fn negative_and_large_steps_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let steps = [0i64, 1, 127, 128, 300, 350_000, i64::MAX, -1, i64::MIN];
    let mut w = EventWriter::create(dir.path()).expect("create");
    for step in steps {
        w.add_scalar("x", 2.0, step).expect("write");
    }
    w.flush().expect("flush");
    let events = read_events(w.path()).expect("read back");
    let got: Vec<(i64, usize)> = events[1..]
        .iter()
        .map(|e| (e.step, e.scalars.len()))
        .collect();
    assert_eq!(got, steps.iter().map(|&s| (s, 1)).collect::<Vec<_>>());
    assert!(
        EventProto::decode(&[0x0a, 0x05, 0x01][..]).is_err(),
        "a truncated field with the wrong wire type"
    );
}

/// Finds a Python that can `import tensorboard`: $CORENET_PYTHON, the repo's reference venv,
/// then python3.
fn python_with_tensorboard() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-ref/bin/python");
    let candidates = std::env::var_os("CORENET_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([venv, PathBuf::from("python3")]);
    for python in candidates {
        let ok = std::process::Command::new(&python)
            .args(["-c", "import tensorboard"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(python);
        }
    }
    None
}

/// The python for a live check, or `None` after saying the check is skipped (a failure when
/// CORENET_REQUIRE_REFERENCE is set).
fn reference_python(check: &str) -> Option<PathBuf> {
    let python = python_with_tensorboard();
    if python.is_none() {
        assert!(
            std::env::var_os("CORENET_REQUIRE_REFERENCE").is_none(),
            "no python with the tensorboard package, and CORENET_REQUIRE_REFERENCE is set"
        );
        eprintln!("SKIP: no python with the tensorboard package; {check} check not run");
        tracing::warn!(
            check,
            "no python with the tensorboard package; check skipped"
        );
    }
    python
}

/// What `script` prints when run with `arg`; a python failure fails the test with its stderr.
fn python_stdout(python: &Path, script: &str, arg: &Path) -> Vec<u8> {
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(arg)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn tensorboards_own_reader_accepts_our_file() {
    let Some(python) = reference_python("TensorBoard-reader") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_sample(dir.path());
    // EventFileLoader is what TensorBoard's backend uses; it checks both CRCs of each record.
    let script = r#"
import sys, json
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util import tensor_util
out = []
for ev in EventFileLoader(sys.argv[1]).Load():
    kind = ev.WhichOneof("what")
    if kind == "file_version":
        out.append({"file_version": ev.file_version, "step": ev.step})
    elif kind == "summary":
        for v in ev.summary.value:
            # EventFileLoader migrates simple_value into a scalar tensor tagged for the
            # "scalars" plugin, which is exactly how TensorBoard will display it.
            if v.WhichOneof("value") == "simple_value":
                value, plugin = v.simple_value, "scalars"
            else:
                value, plugin = tensor_util.make_ndarray(v.tensor).item(), v.metadata.plugin_data.plugin_name
            out.append({"step": ev.step, "tag": v.tag, "value": value, "plugin": plugin})
print(json.dumps(out))
"#;
    let got: Vec<serde_json::Value> =
        serde_json::from_slice(&python_stdout(&python, script, &path)).expect("json from python");
    assert_eq!(got[0]["file_version"], FILE_VERSION);

    let ours = read_events(&path).expect("read back");
    let ours: Vec<(i64, String, f32)> = ours
        .iter()
        .flat_map(|e| e.scalars.iter().map(move |(t, v)| (e.step, t.clone(), *v)))
        .collect();
    let theirs: Vec<(i64, String, f32)> = got[1..]
        .iter()
        .map(|v| {
            (
                v["step"].as_i64().expect("step"),
                v["tag"].as_str().expect("tag").to_string(),
                v["value"].as_f64().expect("value") as f32,
            )
        })
        .collect();
    assert_eq!(theirs.len(), 5 * 3 + 1);
    assert!(got[1..].iter().all(|v| v["plugin"] == "scalars"), "{got:?}");
    assert_eq!(ours, theirs);
    eprintln!(
        "tensorboard's EventFileLoader ({}) read {} scalars",
        python.display(),
        theirs.len()
    );
}

fn train_in(
    base: &serde_json::Value,
    dir: &Path,
    name: &str,
    resume: corenet_train::Resume,
    stop_at: Option<u64>,
) {
    let recipe = run_recipe::in_run_dir(base, dir, name, &[]);
    let options = corenet_train::TrainOptions {
        resume,
        stop_at,
        world_size: 1,
        ..Default::default()
    };
    let mut trainer = corenet_train::Trainer::new(recipe, options).expect("trainer");
    trainer.train().expect("train");
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// As after kill -9 between checkpoints: the run logged steps 1..=8, its checkpoint at 8 is
/// gone, and it resumes from 4. TensorBoard's own accumulator must then show each step once,
/// with the resumed session's values (those of `metrics.jsonl`); resuming the finished run
/// again adds no event file.
#[test]
fn after_a_crash_and_resume_tensorboard_sees_each_step_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let run = dir.path().join("crashed");
    train_in(
        &base,
        dir.path(),
        "crashed",
        corenet_train::Resume::Fresh,
        Some(8),
    );
    std::fs::remove_dir_all(run.join("checkpoints/step-00000008")).expect("remove");
    train_in(
        &base,
        dir.path(),
        "crashed",
        corenet_train::Resume::Auto,
        None,
    );
    let tb = run.join("tb");
    let files = event_files(&tb);
    assert_eq!(files.len(), 2, "{files:?}");
    // The resumed session's file starts with a SessionLog START at its first step.
    let records = read_records(&files[1]).expect("records");
    let start = EventProto::decode(records[1].as_slice()).expect("decode");
    assert_eq!(
        (start.step, start.session_log.map(|s| s.status)),
        (5, Some(corenet_train::log::tensorboard::SESSION_START))
    );
    train_in(
        &base,
        dir.path(),
        "crashed",
        corenet_train::Resume::Auto,
        None,
    );
    assert_eq!(
        event_files(&tb).len(),
        2,
        "a finished run's resume logs nothing"
    );

    let metrics =
        corenet_train::log::metrics::read_metrics(run.join("metrics.jsonl")).expect("metrics");
    let want: Vec<(u64, f32)> = metrics.iter().map(|m| (m.step, m.loss as f32)).collect();
    assert_eq!(want.len(), 12);

    let Some(python) = reference_python("EventAccumulator") else {
        return;
    };
    // EventAccumulator is what TensorBoard's scalar dashboard reads through; it purges the
    // orphaned values when it meets the START marker.
    let script = r#"
import sys, json
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps([[e.step, e.value] for e in acc.Scalars("loss/total_loss")]))
"#;
    let got: Vec<(u64, f32)> =
        serde_json::from_slice(&python_stdout(&python, script, &tb)).expect("json");
    assert_eq!(
        got, want,
        "TensorBoard's view equals metrics.jsonl, each step once"
    );
    // The second x-axis, tokens seen, survives the resume the same way (its own directory,
    // whose session markers count tokens).
    let script = script.replace("loss/total_loss", "by_tokens/loss");
    let got: Vec<(u64, f32)> =
        serde_json::from_slice(&python_stdout(&python, &script, &tb.join("by_tokens")))
            .expect("json");
    let want: Vec<(u64, f32)> = metrics
        .iter()
        .map(|m| (m.tokens_seen, m.loss as f32))
        .collect();
    assert_eq!(got, want, "loss by tokens seen, each step once");
}

//! Training from a bucket: the tiny recipe with its sample shards on a real S3-compatible
//! server (moto's, on 127.0.0.1) trains to the same losses and bit-identical weights as from
//! local disk; a run killed with SIGKILL resumes from the bucket bit-exactly; checkpoints
//! mirrored to the bucket (keep-K applied there) resume a run on a machine without its run
//! directory; a machine without credentials is stopped before the first step with the URL
//! named.

#[allow(dead_code)]
#[path = "../crates/data/tests/s3_server.rs"]
mod s3_server;

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use corenet_e2e::{
    build_sample_data, corenet_bin, kill_after_step, metrics, resumed_from, workspace_root,
};
use s3_server::{moto_python, S3Server, ACCESS_KEY, SECRET_KEY};
use serde_json::Value;

const STEPS: u64 = 24;

/// recipes/tiny.yaml with nothing held back (held-back documents are chosen by path, and the
/// paths differ), its sources at `root` instead of `data/sample/`.
fn recipe(dir: &Path, name: &str, root: &str, storage: &str) -> Result<()> {
    let tiny = std::fs::read_to_string(workspace_root().join("recipes/tiny.yaml"))?;
    ensure!(
        tiny.contains("paths: [data/sample/"),
        "recipes/tiny.yaml changed shape"
    );
    let text = tiny
        .replace("paths: [data/sample/", &format!("paths: [{root}"))
        .replace("hold_back: 0.02", "hold_back: 0")
        .replace("data:\n", &format!("data:\n{storage}"));
    std::fs::write(dir.join(name), text)?;
    Ok(())
}

fn train(dir: &Path, recipe: &str, run: &str) -> Command {
    let mut cmd = Command::new(corenet_bin());
    cmd.current_dir(dir)
        .args(["train", recipe])
        .args(["--set", &format!("run.dir=runs/{run}")])
        .args(["--set", &format!("trainer.steps={STEPS}")])
        .args(["--set", "checkpoint.interval=8"])
        .args(["--set", "eval.interval=0"])
        .args(["--set", "logging.interval=1"])
        .args(["--set", "logging.progress=false"])
        .args(["--set", "logging.tensorboard=false"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("HOME", dir);
    cmd
}

/// The credentials as a user's `~/.aws/credentials` profile holds them (no AWS_* key in the
/// environment).
fn with_profile(mut cmd: Command, dir: &Path) -> Result<Command> {
    let file = dir.join("aws-credentials");
    std::fs::write(
        &file,
        format!("[corenet-test]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )?;
    cmd.env("AWS_SHARED_CREDENTIALS_FILE", &file)
        .env("AWS_PROFILE", "corenet-test");
    Ok(cmd)
}

fn run_ok(mut cmd: Command) -> Result<String> {
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_recipe_on_a_bucket_trains_and_resumes_as_on_disk() -> Result<()> {
    let Some(python) = moto_python() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    build_sample_data(dir, 2000);
    let server = S3Server::start(&python);
    server.fill("corpus", &dir.join("data/sample"), "sample");
    recipe(dir, "local.yaml", "data/sample/", "")?;
    let storage = format!(
        "  storage: {{ endpoint: \"{}\", block_bytes: 65536 }}\n",
        server.endpoint()
    );
    recipe(dir, "bucket.yaml", "s3://corpus/sample/", &storage)?;

    run_ok(train(dir, "local.yaml", "local"))?;
    let mirrored = |run: &str| -> Result<Command> {
        let mut cmd = with_profile(train(dir, "bucket.yaml", run), dir)?;
        cmd.args(["--set", "checkpoint.mirror=s3://ckpt/bucket/"])
            .args(["--set", "checkpoint.keep_last=2"]);
        Ok(cmd)
    };
    server.boto3("s3.create_bucket(Bucket='ckpt')");
    run_ok(mirrored("bucket")?)?;
    let model = |run: &str| {
        std::fs::read(dir.join(format!(
            "runs/{run}/checkpoints/step-{STEPS:08}/model.safetensors"
        )))
    };
    let losses = |run: &str| -> Vec<Value> {
        metrics(&dir.join(format!("runs/{run}/metrics.jsonl")))
            .into_iter()
            .map(|m| m["loss"].clone())
            .collect()
    };
    ensure!(
        losses("local").len() == STEPS as usize,
        "{:?}",
        losses("local")
    );
    ensure!(
        losses("local") == losses("bucket"),
        "the bucket run's losses differ"
    );
    ensure!(
        model("local")? == model("bucket")?,
        "the bucket run's weights differ"
    );
    let last = metrics(&dir.join("runs/bucket/metrics.jsonl"));
    let requests = last.last().and_then(|m| m["data_remote_requests"].as_u64());
    ensure!(
        requests.is_some_and(|n| n > 0),
        "no object-store requests logged: {:?}",
        last.last()
    );

    let mut child = with_profile(train(dir, "bucket.yaml", "killed"), dir)?
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    kill_after_step(&mut child, &dir.join("runs/killed/metrics.jsonl"), 10)?; // after the checkpoint at 8
    let stdout = run_ok(with_profile(train(dir, "bucket.yaml", "killed"), dir)?)?;
    let from = resumed_from(&stdout).context("a `steps N..M` line")?;
    ensure!(from % 8 == 0 && (8..STEPS).contains(&from), "{stdout}");
    ensure!(
        model("killed")? == model("local")?,
        "the resumed run's weights differ"
    );
    ensure!(
        losses("killed") == losses("local"),
        "the resumed run's losses differ"
    );

    // The mirror, as boto3 sees it: the newest two checkpoints (8 pruned), each complete, the
    // copies byte for byte the local files.
    let listing = server.boto3(
        "for o in s3.list_objects_v2(Bucket='ckpt', Prefix='bucket/')['Contents']: print(o['Key'])",
    );
    let steps: std::collections::BTreeSet<&str> = listing
        .lines()
        .filter_map(|k| k.split('/').nth(1))
        .collect();
    ensure!(
        steps.into_iter().collect::<Vec<_>>() == ["step-00000016", "step-00000024"],
        "{listing}"
    );
    for step in ["step-00000016", "step-00000024"] {
        ensure!(
            listing.contains(&format!("bucket/{step}/manifest.json")),
            "{listing}"
        );
    }
    let remote_sha = server.boto3(
        "b = s3.get_object(Bucket='ckpt', Key='bucket/step-00000024/model.safetensors')['Body'].read()\nprint(hashlib.sha256(b).hexdigest())",
    );
    let local_sha = corenet_model::manifest::file_digest(&dir.join(format!(
        "runs/bucket/checkpoints/step-{STEPS:08}/model.safetensors"
    )))?
    .sha256;
    ensure!(
        remote_sha.trim() == local_sha,
        "the mirrored weights differ"
    );

    // A new machine: no local run directory, and the newest remote checkpoint gone too, so
    // `--resume auto` fetches step 16 and trains on to the same weights.
    server.boto3(
        "for o in s3.list_objects_v2(Bucket='ckpt', Prefix='bucket/step-00000024/')['Contents']: s3.delete_object(Bucket='ckpt', Key=o['Key'])",
    );
    std::fs::remove_dir_all(dir.join("runs/bucket"))?;
    let stdout = run_ok(mirrored("bucket")?)?;
    ensure!(stdout.contains("steps 16.."), "{stdout}");
    ensure!(
        model("bucket")? == model("local")?,
        "the run resumed from the mirror differs"
    );

    // No credentials anywhere: refused before the first step, naming the bucket.
    let out = train(dir, "bucket.yaml", "nocreds").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "trained without credentials");
    ensure!(
        stderr.contains("s3://corpus/") && stderr.contains("no S3 credentials"),
        "{stderr}"
    );
    ensure!(
        metrics(&dir.join("runs/nocreds/metrics.jsonl")).is_empty(),
        "a step ran without credentials"
    );
    ensure!(!stderr.contains(SECRET_KEY), "a secret in: {stderr}");
    Ok(())
}

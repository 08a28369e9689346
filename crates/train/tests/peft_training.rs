//! PEFT runs on the trainer: only the adapters change (every base tensor bit-identical after the
//! run), the checkpoint holds the adapters and their moments only plus the base's fingerprint,
//! a stopped and resumed run equals the uninterrupted one bit for bit (dropout on, activation
//! checkpointing on), CommonSense-style records train through the `alpaca` template, and bad
//! settings or a foreign base are refused before any step.

mod common;
mod fine_tune;
mod run_recipe;

use std::io::Write;
use std::path::Path;

use corenet_model::{AdapterRecord, ADAPTERS_FILE};
use corenet_train::{Recipe, Resume, Trainer};
use fine_tune::{assert_base_unchanged, base_folder, error_of, options};
use serde_json::{json, Value};
use tch::Device;

const PEFT: [&str; 4] = [
    "peft.rank=4",
    "peft.alpha=8",
    "peft.dropout=0.1",
    "schedule.max_lr=1e-2",
];

fn recipe(base: &Value, dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    let all: Vec<&str> = PEFT.iter().chain(sets).copied().collect();
    run_recipe::in_run_dir(base, dir, name, &all)
}

#[test]
fn only_the_adapters_change_and_the_checkpoint_holds_only_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let r = recipe(&base, dir.path(), "lora", &[]);
    let folder = dir.path().join("base");
    let (_vs, source) = base_folder(&r, &folder, 11);

    let mut trainer =
        Trainer::new(r.clone(), options(Resume::Fresh, Some(&folder), None)).expect("trainer");
    let fresh: Vec<(String, tch::Tensor)> = trainer
        .model()
        .adapter_parameters()
        .iter()
        .map(|(n, t)| (n.clone(), t.copy()))
        .collect();
    let summary = trainer.train().expect("train");
    assert!(
        summary.last_loss < summary.first_loss,
        "loss {:?} -> {:?}",
        summary.first_loss,
        summary.last_loss
    );
    assert_base_unchanged(trainer.model(), &source);
    // 3 layers x 4 linears + the embedding, each A and B.
    assert_eq!(fresh.len(), 26);
    for ((name, now), (_, before)) in trainer.model().adapter_parameters().iter().zip(&fresh) {
        assert!(!now.equal(before), "adapter {name} did not train");
    }

    let checkpoint = dir.path().join("lora/checkpoints/step-00000012");
    let tensors = corenet_train::checkpoint::contents::read_tensors(&checkpoint).expect("read");
    assert_eq!(tensors.model.len(), 26);
    assert!(tensors.model.iter().all(|(n, _)| n.contains("lora_")));
    assert!(tensors.optimizer.iter().all(|(n, _)| n.contains("lora_")));
    let record = AdapterRecord::read(&checkpoint)
        .expect("read")
        .expect(ADAPTERS_FILE);
    assert_eq!(record.base.as_deref(), Some(folder.as_path()));
    assert_eq!(record.peft.rank, 4);
    assert_eq!(
        record.base_fingerprint,
        source.base_fingerprint().expect("fp")
    );

    // The checkpoint opens (for eval, generate, export) as base + adapters, unmerged, with
    // the trainer's forward.
    let (_vs, opened) =
        corenet_model::pretrained::open(&checkpoint, Device::Cpu).expect("open the checkpoint");
    let ids = tch::Tensor::from_slice(&[1i64, 5, 9, 40, 2, 7]).view([1, 6]);
    let a = tch::no_grad(|| trainer.model().forward(&ids).expect("forward"));
    let b = tch::no_grad(|| opened.forward(&ids).expect("forward"));
    assert!(a.equal(&b), "the opened checkpoint computes other logits");

    // Merging folds the adapters in: the plain model's forward equals the adapted one.
    let (_vs, mut merged) =
        corenet_model::pretrained::open(&checkpoint, Device::Cpu).expect("open");
    merged.merge_adapters().expect("merge");
    assert!(!merged.has_adapters());
    let c = tch::no_grad(|| merged.forward(&ids).expect("forward"));
    let diff = (&a - &c).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "merged forward differs by {diff}");
}

#[test]
fn a_stopped_and_resumed_peft_run_equals_the_uninterrupted_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let sets = ["peft.method=dora", "trainer.activation_checkpointing=true"];
    let folder = dir.path().join("base");
    base_folder(&recipe(&base, dir.path(), "x", &sets), &folder, 12);

    let r = recipe(&base, dir.path(), "whole", &sets);
    let mut whole = Trainer::new(r, options(Resume::Fresh, Some(&folder), None)).expect("trainer");
    whole.train().expect("train");

    let r = recipe(&base, dir.path(), "parts", &sets);
    let mut first =
        Trainer::new(r.clone(), options(Resume::Fresh, Some(&folder), Some(6))).expect("trainer");
    first.train().expect("first part");
    drop(first);
    // The base comes back from the folder the checkpoint records (no --init-from here).
    let mut second = Trainer::new(r, options(Resume::Auto, None, None)).expect("resume");
    assert_eq!(second.state().step, 6);
    second.train().expect("second part");

    for ((name, a), (_, b)) in whole
        .model()
        .adapter_parameters()
        .iter()
        .zip(second.model().adapter_parameters())
    {
        assert!(a.equal(&b), "{name} differs after resume");
    }
}

#[test]
fn a_checkpoint_resumed_on_another_base_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let r = recipe(&base, dir.path(), "run", &[]);
    let folder = dir.path().join("base");
    base_folder(&r, &folder, 13);
    let mut t = Trainer::new(r.clone(), options(Resume::Fresh, Some(&folder), Some(4))).expect("t");
    t.train().expect("train");
    drop(t);
    let other = dir.path().join("other");
    base_folder(&r, &other, 14);
    let err = error_of(Trainer::new(r, options(Resume::Auto, Some(&other), None)));
    assert!(err.contains("another base model"), "{err}");
    assert!(err.contains(ADAPTERS_FILE), "{err}");
}

#[test]
fn bad_adapter_settings_are_refused_before_any_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let mut tree = base.clone();
    tree["run"]["dir"] = json!(dir.path().join("bad"));
    for (sets, expected) in [
        (vec!["peft.rank=0"], "peft.rank"),
        (
            vec!["peft.targets=[nothing_like_this]"],
            "matches no module",
        ),
        (vec!["peft.targets=[\"qkv_proj(\"]"], "peft.targets[0]"),
        (vec!["peft.rank=64"], "larger than"),
        (vec!["peft.dropout=1.0"], "peft.dropout"),
    ] {
        let all: Vec<&str> = PEFT.iter().copied().chain(sets.iter().copied()).collect();
        let mut t = tree.clone();
        let mut err = None;
        for s in &all {
            corenet_train::recipe::overrides::Override::parse(s)
                .expect("override")
                .apply(&mut t)
                .expect("apply");
        }
        match Recipe::from_value(t) {
            Err(e) => err = Some(e.to_string()),
            Ok(r) => {
                if let Err(e) = Trainer::new(r, options(Resume::Fresh, None, None)) {
                    err = Some(e.to_string());
                }
            }
        }
        let err = err.unwrap_or_else(|| panic!("{sets:?} was accepted"));
        assert!(err.contains(expected), "{sets:?}: {err}");
    }
    assert!(
        !dir.path()
            .join("bad/checkpoints")
            .join("step-00000001")
            .exists(),
        "a step ran"
    );
}

/// CommonSense-170k-style records (instruction, input, output, answer) through the `alpaca`
/// template; a malformed record is skipped, counted and named by file and line.
#[test]
fn commonsense_records_train_through_the_alpaca_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let path = dir.path().join("commonsense.jsonl");
    let mut f = std::fs::File::create(&path).expect("create");
    for i in 0..40 {
        let answer = if i % 2 == 0 { "true" } else { "false" };
        let record = json!({
            "instruction": format!("Is the king {i} in the castle? Answer true or false."),
            "input": "",
            "output": format!("the correct answer is {answer}"),
            "answer": answer,
        });
        writeln!(f, "{record}").expect("write");
        if i == 1 {
            writeln!(f, "{{\"instruction\": \"no output\"}}").expect("write");
        }
    }
    drop(f);
    let source = format!(
        "data.sources=[{{name: commonsense, paths: [{}], template: alpaca}}]",
        path.display()
    );
    // One example per sequence, as CoreNet's commonsense_170k: 4 steps of 8 read 32 of the 41.
    let sets = [
        source.as_str(),
        "trainer.steps=4",
        "data.mode=corenet",
        "data.corenet.min_tokens=2",
        "data.corenet.min_characters=1",
        "data.corenet.fix_text=false",
    ];
    let r = recipe(&base, dir.path(), "cs", &sets);
    let mut t = Trainer::new(r, options(Resume::Fresh, None, None)).expect("trainer");
    let summary = t.train().expect("train");
    assert!(summary.last_loss.is_some_and(f64::is_finite));
    let stats = t.state().data.stats();
    let bad: u64 = stats.iter().map(|s| s.bad_records).sum();
    assert_eq!(bad, 1, "{stats:?}");
}

/// `corenet plan` counts the adapters a run attaches, exactly, and gives them alone gradients,
/// masters and moments.
#[test]
fn the_plan_counts_the_adapters_the_run_attaches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    for method in ["lora", "dora"] {
        let set = format!("peft.method={method}");
        let r = recipe(
            &base,
            dir.path(),
            method,
            &[&set, "peft.targets=[qkv_proj, proj_2, token_embeddings]"],
        );
        let trainer = Trainer::new(r.clone(), options(Resume::Fresh, None, None)).expect("t");
        let attached: i64 = trainer
            .model()
            .adapter_parameters()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let plan = corenet_train::recipe::plan::memory_plan(&r, 1, 80 << 30).expect("plan");
        assert_eq!(plan.trainable_params as i64, attached, "{method}");
        assert_eq!(plan.gradients, 4 * plan.trainable_params);
        assert_eq!(plan.optimizer_moments, 8 * plan.trainable_params);
        let full = corenet_train::recipe::plan::memory_plan(
            &{
                let mut r = r.clone();
                r.peft = None;
                r
            },
            1,
            80 << 30,
        )
        .expect("plan");
        assert!(plan.total < full.total);
    }
}

/// `loss_on: response`: the first step's loss is the cross-entropy of the model it starts from
/// over the response tokens alone (BOS and the prompt are inputs, never targets), and differs
/// from the loss over every token.
#[test]
fn a_response_only_step_takes_the_loss_on_the_response_tokens_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let path = dir.path().join("cs.jsonl");
    let mut f = std::fs::File::create(&path).expect("create");
    for i in 0..8 {
        let answer = ["true", "false"][i % 2];
        let record = json!({
            "instruction": format!("Is the king {i} in the castle?"),
            "output": format!("the correct answer is {answer}"),
        });
        writeln!(f, "{record}").expect("write");
    }
    drop(f);
    let first_loss = |loss_on: &str| {
        let source = format!(
            "data.sources=[{{name: cs, paths: [{}], template: alpaca, loss_on: {loss_on}}}]",
            path.display()
        );
        let sets = [
            source.as_str(),
            "data.mode=corenet",
            "data.seq_len=256",
            "data.workers=1",
            "data.corenet.min_tokens=2",
            "data.corenet.min_characters=1",
            "data.corenet.fix_text=false",
            "model.max_context_length=256",
            "trainer.steps=1",
            "schedule.warmup_iterations=0",
            "trainer.global_batch=4",
            "trainer.z_loss=0",
        ];
        let r = run_recipe::in_run_dir(&base, dir.path(), loss_on, &sets);
        let mut t = Trainer::new(r.clone(), options(Resume::Fresh, None, None)).expect("trainer");
        let mut stream =
            corenet_data::DataStream::open(&r.data, 0, 1, None).expect("the trainer's stream");
        let batch = stream.next().expect("a batch").expect("batch");
        let shape = [batch.micro_batch as i64, batch.seq_len as i64];
        let inputs = tch::Tensor::from_slice(&batch.inputs_i64()).view(shape);
        let tokenizer = corenet_data::load_tokenizer(&r.data.tokenizer).expect("tokenizer");
        let pad = i64::from(tokenizer.pad_id());
        let targets = batch.targets_i64(pad);
        let logits = tch::no_grad(|| t.model().forward(&inputs).expect("forward")); // (B, T, V)
        let v = logits.size()[2];
        let logp = logits.view([-1, v]).log_softmax(-1, tch::Kind::Float);
        let (mut sum, mut n) = (0.0, 0usize);
        for (i, &target) in targets.iter().enumerate() {
            if target != pad {
                sum -= logp.double_value(&[i as i64, target]);
                n += 1;
            }
        }
        // The rows are the first four records: their responses and EOS.
        let responses: usize = (0..4)
            .map(|i| {
                let output = format!("the correct answer is {}", ["true", "false"][i % 2]);
                tokenizer.encode(&output).expect("encode").len() + 1
            })
            .sum();
        let summary = t.train().expect("train");
        (
            summary.first_loss.expect("a loss"),
            sum / n as f64,
            n,
            responses,
        )
    };
    let (response, expected, n, responses) = first_loss("response");
    assert!(
        (response - expected).abs() < 1e-4,
        "{response} vs {expected}"
    );
    assert_eq!(n, responses, "the targets are the responses and EOS");
    let (all, expected_all, n_all, _) = first_loss("all");
    assert!((all - expected_all).abs() < 1e-4, "{all} vs {expected_all}");
    assert!(
        n_all > 4 * n,
        "{n_all} targets over whole records, {n} over responses"
    );
    assert!((all - response).abs() > 1e-3);
}

/// `checkpoint average` of PEFT checkpoints: the adapter tensors are the means of the inputs',
/// the average keeps `adapters.json` and opens as base + averaged adapters; a full checkpoint
/// is not averaged with a PEFT one.
#[test]
fn peft_checkpoints_average_their_adapters_and_keep_the_record() {
    use corenet_train::checkpoint::average::average_checkpoints;
    use corenet_train::checkpoint::store::CheckpointEntry;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let r = recipe(&base, dir.path(), "lora", &["trainer.steps=8"]);
    let folder = dir.path().join("base");
    base_folder(&r, &folder, 15);
    let mut t = Trainer::new(r, options(Resume::Fresh, Some(&folder), None)).expect("trainer");
    t.train().expect("train");
    let entry = |run: &str, step: u64| CheckpointEntry {
        step,
        dir: dir.path().join(format!("{run}/checkpoints/step-{step:08}")),
    };
    let avg = dir.path().join("avg");
    average_checkpoints(&[entry("lora", 8), entry("lora", 4)], &avg).expect("average");
    assert_eq!(
        AdapterRecord::read(&avg).expect("read"),
        AdapterRecord::read(&entry("lora", 8).dir).expect("read")
    );
    let open = |dir: &Path| corenet_model::pretrained::open(dir, Device::Cpu).expect("open");
    let ((_a, averaged), (_b, late), (_c, early)) = (
        open(&avg),
        open(&entry("lora", 8).dir),
        open(&entry("lora", 4).dir),
    );
    assert!(averaged.has_adapters());
    let pairs = late.adapter_parameters();
    for ((name, got), ((_, x), (_, y))) in averaged
        .adapter_parameters()
        .iter()
        .zip(pairs.iter().zip(early.adapter_parameters()))
    {
        let want = (x + y) / 2.0;
        let diff = (got - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{name} is not the mean ({diff})");
    }

    let full = run_recipe::in_run_dir(&base, dir.path(), "full", &["trainer.steps=4"]);
    Trainer::new(full, options(Resume::Fresh, None, None))
        .expect("trainer")
        .train()
        .expect("train");
    let err = average_checkpoints(&[entry("lora", 4), entry("full", 4)], &dir.path().join("x"))
        .expect_err("mixed")
        .to_string();
    assert!(err.contains(ADAPTERS_FILE) && err.contains("full"), "{err}");
}

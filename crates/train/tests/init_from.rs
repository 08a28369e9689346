//! `TrainOptions::init_from`: a fresh run starts from an HF folder's weights (its step-0
//! weights are the file's, the vocabulary resized to the recipe's), the optimizer's masters are
//! those weights (one step moves them only slightly), a mismatching folder is refused naming the
//! field, and resuming the run's own checkpoint wins over --init-from.

mod common;
mod run_recipe;

use std::path::Path;

use corenet_model::hf::export_hf;
use corenet_model::OpenElm;
use corenet_train::{Recipe, Resume, TrainOptions, Trainer};
use serde_json::Value;
use tch::{nn, Device};

fn recipe(base: &Value, dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    run_recipe::in_run_dir(base, dir, name, sets)
}

fn options(resume: Resume, init_from: &Path, stop_at: Option<u64>) -> TrainOptions {
    TrainOptions {
        resume,
        stop_at,
        world_size: 1,
        init_from: Some(init_from.to_path_buf()),
        ..TrainOptions::default()
    }
}

/// An HF folder with 300 embedding rows (the tokenizer's) of a model shaped like the recipe's.
fn hf_folder(recipe: &Recipe, dir: &Path) -> (nn::VarStore, OpenElm) {
    // Under the trainer's generator lock: a trainer in another test thread draws its seeded
    // weights and adapters without these draws in between.
    let (vs, model) = corenet_train::step::generator::seeded(99, || {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = OpenElm::new(&vs.root(), &recipe.model).expect("model");
        (vs, model)
    });
    export_hf(&model, dir, Some(300)).expect("export");
    (vs, model)
}

#[test]
fn a_fresh_run_starts_from_the_folder_s_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let r = recipe(&base, dir.path(), "init", &[]);
    let folder = dir.path().join("hf");
    let (_vs, source) = hf_folder(&r, &folder);

    let trainer = Trainer::new(r.clone(), options(Resume::Fresh, &folder, None)).expect("trainer");
    for ((name, ours), (_, file)) in trainer
        .model()
        .named_parameters()
        .iter()
        .zip(source.named_parameters())
    {
        if name == "transformer.token_embeddings.weight" {
            assert_eq!(ours.size(), [320, 32]);
            assert!(ours.narrow(0, 0, 300).equal(&file.narrow(0, 0, 300)));
            assert!(!ours.narrow(0, 300, 20).equal(&file.narrow(0, 300, 20)));
        } else {
            assert!(ours.equal(&file), "{name} is not the file's at step 0");
        }
    }
    drop(trainer);

    // One update (warmup lr 1e-5) moves the loaded weights by about the lr, not back to the
    // recipe's random init: the optimizer's f32 masters were copied after loading.
    let r = recipe(&base, dir.path(), "one_step", &[]);
    let mut trainer = Trainer::new(r, options(Resume::Fresh, &folder, Some(1))).expect("trainer");
    trainer.train().expect("train");
    let (ours, file) = (
        trainer.model().named_parameters(),
        source.named_parameters(),
    );
    let moved = (&ours[1].1 - &file[1].1).abs().max().double_value(&[]);
    assert!(moved > 0.0 && moved < 1e-3, "moved by {moved}");
}

#[test]
fn a_mismatching_folder_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let wide = recipe(
        &base,
        dir.path(),
        "wide",
        &["model.model_dim=48", "model.head_dim=8"],
    );
    let folder = dir.path().join("hf");
    hf_folder(&wide, &folder);
    let r = recipe(&base, dir.path(), "run", &[]);
    let err = match Trainer::new(r, options(Resume::Fresh, &folder, None)) {
        Ok(_) => panic!("a 48-wide folder loaded into a 32-wide model"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("model_dim"), "{err}");
}

#[test]
fn resuming_the_run_s_checkpoint_ignores_init_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = common::setup(dir.path());
    let r = recipe(&base, dir.path(), "run", &[]);
    let folder = dir.path().join("hf");
    let (_vs, source) = hf_folder(&r, &folder);
    let mut first =
        Trainer::new(r.clone(), options(Resume::Fresh, &folder, Some(4))).expect("trainer");
    first.train().expect("train");
    let trained: Vec<_> = first.model().named_parameters();
    // The run directory has one writer at a time: the first trainer lets go of it.
    drop(first);

    let resumed = Trainer::new(r, options(Resume::Auto, &folder, None)).expect("resume");
    assert_eq!(resumed.state().step, 4);
    for ((name, ours), (_, saved)) in resumed.model().named_parameters().iter().zip(&trained) {
        assert!(ours.equal(saved), "{name}: not the checkpoint's");
    }
    let file = source.named_parameters();
    assert!(!resumed.model().named_parameters()[1].1.equal(&file[1].1));
}

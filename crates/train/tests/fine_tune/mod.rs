//! Test support for the fine-tuning runs (PEFT, DPO): trainer options, an HF base folder shaped
//! like a recipe's model, that its base stayed as it was, and the error of a trainer that must
//! not be built.

use std::path::Path;

use corenet_model::hf::export_hf;
use corenet_model::OpenElm;
use corenet_train::{Recipe, Resume, TrainOptions, Trainer};
use tch::{nn, Device};

pub fn options(resume: Resume, init_from: Option<&Path>, stop_at: Option<u64>) -> TrainOptions {
    TrainOptions {
        resume,
        stop_at,
        world_size: 1,
        init_from: init_from.map(Path::to_path_buf),
        ..TrainOptions::default()
    }
}

/// An HF folder of a model shaped like the recipe's, drawn from `seed`.
pub fn base_folder(recipe: &Recipe, dir: &Path, seed: i64) -> (nn::VarStore, OpenElm) {
    // Under the trainer's generator lock: a trainer in another test thread draws its seeded
    // weights and adapters without these draws in between.
    let (vs, model) = corenet_train::step::generator::seeded(seed, || {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = OpenElm::new(&vs.root(), &recipe.model).expect("model");
        (vs, model)
    });
    export_hf(&model, dir, None).expect("export");
    (vs, model)
}

/// Every base tensor of `trained` is bit-identical to `source`'s.
pub fn assert_base_unchanged(trained: &OpenElm, source: &OpenElm) {
    for ((name, ours), (_, file)) in trained
        .named_parameters()
        .iter()
        .zip(source.named_parameters())
    {
        assert!(ours.equal(&file), "base tensor {name} changed");
    }
}

pub fn error_of(result: corenet_train::Result<Trainer>) -> String {
    match result {
        Ok(_) => panic!("the trainer was built"),
        Err(e) => e.to_string(),
    }
}

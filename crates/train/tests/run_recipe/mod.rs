//! Test support for the trainer's tests (not shared with corenet-eval, which `common` is): the
//! synthetic setup's recipe tree with its own run directory and `--set` overrides applied.

use std::path::Path;

use corenet_train::recipe::overrides::Override;
use corenet_train::Recipe;
use serde_json::Value;

/// `base` with `run.dir = dir/name` and then `sets` applied, resolved.
pub fn in_run_dir(base: &Value, dir: &Path, name: &str, sets: &[&str]) -> Recipe {
    let mut tree = base.clone();
    let run_dir = format!("run.dir={}", dir.join(name).display());
    for s in std::iter::once(run_dir.as_str()).chain(sets.iter().copied()) {
        Override::parse(s)
            .expect("override")
            .apply(&mut tree)
            .expect("apply");
    }
    Recipe::from_value(tree).expect("recipe")
}

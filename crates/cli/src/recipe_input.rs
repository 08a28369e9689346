//! Where `corenet train` and `corenet plan` get their recipe: a recipe YAML, or CoreNet's own
//! YAML through `--corenet-config`, then `--set` overrides on recipe keys.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use corenet_train::recipe::corenet_yaml::load_corenet_config;
use corenet_train::recipe::overrides::Override;
use corenet_train::Recipe;

#[derive(Args)]
pub struct RecipeInput {
    /// The recipe (YAML).
    #[arg(
        required_unless_present = "corenet_config",
        conflicts_with = "corenet_config"
    )]
    pub recipe: Option<PathBuf>,
    /// Read CoreNet's own YAML instead of a recipe (keys mapped as docs/corenet-compat.md says;
    /// ignored keys are listed in a warning).
    #[arg(long, value_name = "FILE")]
    pub corenet_config: Option<PathBuf>,
    /// Override a recipe key, e.g. `--set trainer.steps=100` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

impl RecipeInput {
    /// Loads and resolves the recipe. `world_size` sizes the global batch of a CoreNet config
    /// that has no `ddp.world_size`.
    pub fn load(&self, world_size: Option<usize>) -> anyhow::Result<Recipe> {
        let overrides = self
            .sets
            .iter()
            .map(|s| Override::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        match (&self.recipe, &self.corenet_config) {
            (_, Some(path)) => Ok(load_corenet_config(path, world_size, &overrides)
                .with_context(|| format!("CoreNet config {}", path.display()))?
                .recipe),
            (Some(path), None) => {
                Recipe::load(path, &overrides).with_context(|| format!("recipe {}", path.display()))
            }
            (None, None) => anyhow::bail!("give a recipe or --corenet-config FILE"),
        }
    }

    /// The file the recipe came from, for messages.
    pub fn path(&self) -> &Path {
        self.corenet_config
            .as_deref()
            .or(self.recipe.as_deref())
            .unwrap_or(Path::new("-"))
    }
}

//! Everything between a YAML file and a run that can start: the [`Recipe`] and its sections,
//! `--set` overrides on the value tree ([`overrides`]), CoreNet's own YAML mapped onto a recipe
//! ([`corenet_yaml`]), the planner behind `corenet plan` ([`plan`]) and `corenet train
//! --dry-run` ([`dry_run`]).

pub mod corenet_yaml;
pub mod dry_run;
pub mod overrides;
pub mod plan;
pub mod run_recipe;
pub mod sections;

pub use overrides::Override;
pub use run_recipe::Recipe;
pub use sections::{
    CheckpointConfig, DeviceChoice, LoggingConfig, Precision, RunConfig, TrainerConfig,
};

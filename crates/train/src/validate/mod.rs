//! Validation during training: the recipe's `eval:` section ([`config`]), the held-out token
//! streams built once at start ([`validation_set`]), and their scoring without gradients,
//! split across ranks and reduced so every world size gets the same number ([`validator`]).

pub mod config;
pub mod validation_set;
pub mod validator;

pub use config::{EvalConfig, EvalSourceConfig, EvalTaskConfig};
pub use validation_set::{build_sets, ValidationSet};
pub use validator::{SetResult, ValidationReport, Validator};

//! What turns gradients into new weights: the [`Optimizer`] the trainer holds (AdamW replicated
//! on every rank, or ZeRO-1 partitioned across them), the AdamW arithmetic itself ([`adamw`]),
//! the partitioned variant ([`zero1`]) and CoreNet's learning-rate schedules ([`lr_schedule`]).

pub mod adamw;
pub mod lr_schedule;
pub mod optimizer;
pub mod zero1;

pub use adamw::{found_inf, AdamW, OptimizerConfig};
pub use lr_schedule::{Schedule, ScheduleConfig, ScheduleKind};
pub use optimizer::Optimizer;
pub use zero1::ShardedAdamW;

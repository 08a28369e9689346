//! What a run reports: one JSON line of metrics per log step ([`metrics`]), throughput and MFU
//! ([`throughput`]), TensorBoard scalars ([`tensorboard`]), and [`RunLog`], the one component
//! of the trainer that owns every sink (JSONL, TensorBoard, progress bar, tracing) and the
//! counters behind them; log lines and the bar share stderr through [`progress`].

pub mod metrics;
pub mod progress;
pub mod run_log;
pub mod tensorboard;
pub mod throughput;

pub use metrics::{read_metrics, MetricsRecord, MetricsSink};
pub use run_log::RunLog;
pub use throughput::{mfu, peak_bf16_flops, Throughput};

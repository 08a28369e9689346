//! What a run reports: one JSON line of metrics per log step ([`metrics`]), throughput and MFU
//! ([`throughput`]), TensorBoard scalars ([`tensorboard`]), and [`RunLog`], the one component
//! of the trainer that owns every sink (JSONL, TensorBoard, progress bar, tracing) and the
//! counters behind them; log lines and the bar share stderr through [`progress`]. [`curves`]
//! draws the logged metrics as loss-curve pictures. [`mlflow`] sends params and metrics to an
//! MLflow tracking server from a background thread.

pub mod curves;
pub mod metrics;
pub mod mlflow;
pub mod progress;
pub mod run_log;
pub mod tensorboard;
pub mod throughput;

pub use curves::{plot, RunCurves, XAxis};
pub use metrics::{read_metrics, MetricsRecord, MetricsSink};
pub use run_log::RunLog;
pub use throughput::{mfu, peak_bf16_flops, Throughput};

//! corenet-train: recipes, AdamW, LR schedules, mixed precision, checkpoints and logs.

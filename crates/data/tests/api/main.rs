//! Public-API tests of corenet-data: real shards in every format, written to temp dirs and
//! read back through the whole stream.

mod bad_input;
mod common;
mod corenet_mode;
mod coverage;
mod data_files;
mod formats;
mod mixing;
mod pairs;
mod prompt_mask;
mod resume;
mod tools;

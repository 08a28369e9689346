//! corenet-data: streams raw text shards (parquet, jsonl, jsonl.zst, json.gz), tokenizes them on
//! the fly in worker threads, mixes sources, packs or pads sequences, shards by rank and worker
//! and resumes exactly. It never links libtorch.

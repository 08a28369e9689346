//! Builds small demo shards in every supported layout from a directory of plain `.txt` files
//! (the demo uses the public-domain Shakespeare/Milton texts): RefinedWeb-style parquet,
//! RedPajama-style jsonl and jsonl.zst, PILE-style jsonl.zst and parquet, Dolma-style json.gz.
//! The shard writers are public so tests can build fixtures the same way.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::SourceConfig;
use crate::error::{Error, Result};

/// How much to build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleOptions {
    /// Shard files per layout.
    pub files_per_source: usize,
    /// Paragraphs are merged into documents of at least this many characters.
    pub doc_chars: usize,
    /// Parquet row-group size in rows (small, so row-group sharding is exercised).
    pub row_group_rows: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            files_per_source: 2,
            doc_chars: 2000,
            row_group_rows: 64,
        }
    }
}

impl SampleOptions {
    pub fn validate(&self) -> Result<()> {
        if self.files_per_source == 0 || self.row_group_rows == 0 {
            return Err(Error::Config(
                "files_per_source and row_group_rows must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSummary {
    pub files: Vec<PathBuf>,
    pub documents: usize,
    /// Source configs that read the written shards, one per layout.
    pub sources: Vec<SourceConfig>,
}

fn write_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Compression of a JSON-lines shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineCompression {
    None,
    Zstd,
    Gzip,
}

/// Writes one JSON object per line.
pub fn write_jsonl(path: &Path, records: &[Value], compression: LineCompression) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out: Box<dyn Write> = match compression {
        LineCompression::None => Box::new(BufWriter::new(file)),
        LineCompression::Zstd => Box::new(
            zstd::stream::write::Encoder::new(file, 3)
                .map_err(|e| Error::io(path, e))?
                .auto_finish(),
        ),
        LineCompression::Gzip => Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::default(),
        )),
    };
    for r in records {
        serde_json::to_writer(&mut out, r).map_err(|e| write_err(path, e))?;
        out.write_all(b"\n").map_err(|e| Error::io(path, e))?;
    }
    out.flush().map_err(|e| Error::io(path, e))
}

/// Writes string columns (name, values) to a zstd-compressed parquet file.
pub fn write_parquet(
    path: &Path,
    columns: &[(&str, Vec<String>)],
    row_group_rows: usize,
) -> Result<()> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, _)| Field::new(*n, DataType::Utf8, false))
        .collect();
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as ArrayRef)
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch =
        RecordBatch::try_new(Arc::clone(&schema), arrays).map_err(|e| write_err(path, e))?;
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut writer =
        ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| write_err(path, e))?;
    writer.write(&batch).map_err(|e| write_err(path, e))?;
    writer.close().map_err(|e| write_err(path, e))?;
    Ok(())
}

/// Splits a text into documents: blank-line paragraphs merged up to `doc_chars`.
pub fn split_documents(text: &str, doc_chars: usize) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        if !cur.is_empty() {
            cur.push_str("\n\n");
        }
        cur.push_str(para);
        if cur.len() >= doc_chars {
            docs.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        docs.push(cur);
    }
    docs
}

/// Every `.txt` file under `dir`, sorted.
fn text_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let pattern = dir.join("**").join("*.txt");
    let pattern = pattern.to_string_lossy();
    let mut files: Vec<PathBuf> = glob::glob(&pattern)
        .map_err(|e| Error::Config(format!("bad corpus dir {}: {e}", dir.display())))?
        .filter_map(std::result::Result::ok)
        .collect();
    files.sort();
    Ok(files)
}

/// Reads the corpus and writes all layouts under `out_dir`.
pub fn write_samples(corpus: &Path, out_dir: &Path, opts: &SampleOptions) -> Result<SampleSummary> {
    opts.validate()?;
    let mut docs: Vec<(String, String)> = Vec::new();
    for f in text_files(corpus)? {
        let bytes = std::fs::read(&f).map_err(|e| Error::io(&f, e))?;
        let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        docs.extend(
            split_documents(&text, opts.doc_chars)
                .into_iter()
                .map(|d| (name.clone(), d)),
        );
    }
    if docs.is_empty() {
        return Err(Error::Config(format!(
            "no .txt text under {}",
            corpus.display()
        )));
    }
    let layouts = Layout::ALL;
    let n_shards = layouts.len() * opts.files_per_source;
    let mut summary = SampleSummary {
        files: Vec::new(),
        documents: docs.len(),
        sources: Vec::new(),
    };
    for (li, layout) in layouts.iter().enumerate() {
        let dir = out_dir.join(layout.dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for fi in 0..opts.files_per_source {
            let shard = li * opts.files_per_source + fi;
            let part: Vec<&(String, String)> = docs.iter().skip(shard).step_by(n_shards).collect();
            let path = dir.join(layout.file_name(fi, opts.files_per_source));
            layout.write(&path, &part, opts.row_group_rows)?;
            summary.files.push(path);
        }
        summary.sources.push(SourceConfig {
            name: layout.name.into(),
            paths: vec![dir.join(layout.glob).to_string_lossy().into_owned()],
            format: None,
            text_key: layout.text_key.into(),
            template: None,
            loss_on: None,
            weight: 1.0,
            hold_back: 0.0,
        });
    }
    tracing::info!(
        documents = docs.len(),
        files = summary.files.len(),
        "sample shards written"
    );
    Ok(summary)
}

/// One dataset layout to imitate.
struct Layout {
    name: &'static str,
    dir: &'static str,
    glob: &'static str,
    text_key: &'static str,
}

impl Layout {
    const ALL: [Layout; 6] = [
        Layout {
            name: "refinedweb",
            dir: "refinedweb",
            glob: "*.parquet",
            text_key: "content",
        },
        Layout {
            name: "redpajama_arxiv",
            dir: "redpajama/arxiv",
            glob: "*.jsonl",
            text_key: "text",
        },
        Layout {
            name: "redpajama_c4",
            dir: "redpajama/c4",
            glob: "*.jsonl.zst",
            text_key: "text",
        },
        Layout {
            name: "pile",
            dir: "pile/jsonl",
            glob: "*.jsonl.zst",
            text_key: "text",
        },
        Layout {
            name: "pile_dedup",
            dir: "pile/dedup",
            glob: "*.parquet",
            text_key: "text",
        },
        Layout {
            name: "dolma_books",
            dir: "dolma/books",
            glob: "*.json.gz",
            text_key: "text",
        },
    ];

    fn file_name(&self, i: usize, n: usize) -> String {
        match self.name {
            "refinedweb" => format!("refinedweb-{i:05}-of-{n:05}.parquet"),
            "redpajama_arxiv" => format!("arxiv-{i:05}-{n:05}.jsonl"),
            "redpajama_c4" => format!("c4-{i:05}-{n:05}.jsonl.zst"),
            "pile" => format!("pile-{i:05}.jsonl.zst"),
            "pile_dedup" => format!("pile-{i:05}-of-{n:05}.parquet"),
            _ => format!("books-{i:04}.json.gz"),
        }
    }

    fn write(&self, path: &Path, docs: &[&(String, String)], row_group_rows: usize) -> Result<()> {
        let texts = || docs.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>();
        let record = |i: usize, (name, text): &(String, String)| -> Value {
            match self.name {
                "redpajama_arxiv" | "redpajama_c4" => {
                    json!({"text": text, "meta": {"source": name, "index": i}})
                }
                "pile" => {
                    json!({"text": text, "meta": {"pile_set_name": "Gutenberg (PG-19)", "title": name}})
                }
                _ => json!({"text": text, "id": format!("{name}-{i}"), "source": "gutenberg"}),
            }
        };
        let records = || {
            docs.iter()
                .enumerate()
                .map(|(i, d)| record(i, d))
                .collect::<Vec<_>>()
        };
        match self.name {
            "refinedweb" => {
                let urls = docs
                    .iter()
                    .enumerate()
                    .map(|(i, (n, _))| format!("https://example.invalid/{n}/{i}"))
                    .collect();
                write_parquet(path, &[("content", texts()), ("url", urls)], row_group_rows)
            }
            "pile_dedup" => write_parquet(path, &[("text", texts())], row_group_rows),
            "redpajama_arxiv" => write_jsonl(path, &records(), LineCompression::None),
            "redpajama_c4" | "pile" => write_jsonl(path, &records(), LineCompression::Zstd),
            _ => write_jsonl(path, &records(), LineCompression::Gzip),
        }
    }
}

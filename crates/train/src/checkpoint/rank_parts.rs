//! The per-rank layout of a data-parallel checkpoint: every rank writes its own part into the
//! same directory, so no rank gathers the whole state.
//!
//! ```text
//! model-00001-of-00002.safetensors      whole model tensors, a contiguous run of about 1/N of
//! model-00002-of-00002.safetensors      the bytes each (HF's sharded layout, with its index)
//! model.safetensors.index.json          tensor name -> file, as transformers reads it
//! optimizer-00001-of-00002.safetensors  rank r's range [r·L, r·L + len) of the flat optimizer
//! optimizer-00002-of-00002.safetensors  space: one f32 tensor per moment (exp_avg, exp_avg_sq,
//!                                       master where kept)
//! optimizer.index.json                  the flat space (parameter order, shapes, offsets) and
//!                                       which file holds which range
//! ```
//!
//! The flat space is ZeRO-1's ([`FlatLayout`]): parameters end to end in model order, each rank
//! owning `ceil(total / N)` elements. A replicated optimizer writes the same ranges, so the
//! layout does not depend on ZeRO. Loading on M ranks reads only the ranges a rank needs
//! ([`FlatSource`]) out of memory-mapped files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use corenet_ffi::MappedFile;

use crate::error::{Error, Result};
use crate::optim::zero1::FlatLayout;

/// The index of a per-rank checkpoint's optimizer parts (its presence marks the layout).
pub const OPTIMIZER_INDEX_FILE: &str = "optimizer.index.json";
/// HF's index of a sharded model, which the per-rank layout writes.
pub use corenet_model::pretrained::INDEX_FILE as MODEL_INDEX_FILE;
const INDEX_FORMAT_VERSION: u32 = 1;

/// `model-00001-of-00002.safetensors` (HF numbers shards from 1).
pub fn model_part_file(rank: usize, world: usize) -> String {
    format!("model-{:05}-of-{world:05}.safetensors", rank + 1)
}

/// `optimizer-00001-of-00002.safetensors`.
pub fn optimizer_part_file(rank: usize, world: usize) -> String {
    format!("optimizer-{:05}-of-{world:05}.safetensors", rank + 1)
}

/// The rank that writes each model tensor (given their sizes in bytes, in model order):
/// contiguous runs, cut where the running total crosses a multiple of 1/`world` of the bytes.
pub fn model_owners(bytes: &[usize], world: usize) -> Vec<usize> {
    let world = world.max(1);
    let total: usize = bytes.iter().sum::<usize>().max(1);
    let mut before = 0usize;
    bytes
        .iter()
        .map(|&b| {
            // The tensor goes where its middle byte falls.
            let middle = before + b / 2;
            before += b;
            (middle * world / total).min(world - 1)
        })
        .collect()
}

/// HF's `model.safetensors.index.json` for tensors `names` (with their byte sizes) written by
/// `owners` ([`model_owners`]).
pub fn model_index_json(
    names: &[String],
    bytes: &[usize],
    owners: &[usize],
    world: usize,
) -> Vec<u8> {
    let weight_map: BTreeMap<&str, String> = names
        .iter()
        .zip(owners)
        .map(|(name, &rank)| (name.as_str(), model_part_file(rank, world)))
        .collect();
    let index = serde_json::json!({
        "metadata": { "total_size": bytes.iter().sum::<usize>() },
        "weight_map": weight_map,
    });
    serde_json::to_vec_pretty(&index).unwrap_or_default()
}

/// One parameter of the flat optimizer space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatParam {
    pub name: String,
    pub shape: Vec<i64>,
    /// First element in the flat space.
    pub offset: usize,
}

/// One rank's optimizer file and the flat range it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlatPart {
    pub file: String,
    pub rank: usize,
    pub start: usize,
    pub len: usize,
}

/// Contents of `optimizer.index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerIndex {
    pub format_version: u32,
    pub world_size: usize,
    /// Elements of all parameters.
    pub total: usize,
    /// The tensors of every part file, each covering the part's range.
    pub moments: Vec<String>,
    pub params: Vec<FlatParam>,
    pub parts: Vec<FlatPart>,
}

impl OptimizerIndex {
    /// The index of a checkpoint written over `layout` (its world size) with `moments`.
    pub fn new(layout: &FlatLayout, moments: Vec<String>) -> Self {
        let world = layout.world;
        OptimizerIndex {
            format_version: INDEX_FORMAT_VERSION,
            world_size: world,
            total: layout.total,
            moments,
            params: (0..layout.names.len())
                .map(|i| FlatParam {
                    name: layout.names[i].clone(),
                    shape: layout.shapes[i].clone(),
                    offset: layout.offsets[i],
                })
                .collect(),
            parts: (0..world)
                .map(|rank| {
                    let (start, len) = own_range(layout, rank);
                    FlatPart {
                        file: optimizer_part_file(rank, world),
                        rank,
                        start,
                        len,
                    }
                })
                .collect(),
        }
    }

    /// The index in `dir`, or `None` for a checkpoint in the single-file layout.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(OPTIMIZER_INDEX_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
        let index: OptimizerIndex =
            serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: path.clone(),
                source,
            })?;
        index.validate(&path)?;
        Ok(Some(index))
    }

    /// The parts must tile `[0, total)` in order, and the parameters must lie end to end.
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::OptimizerState(format!("{}: {reason}", path.display()));
        if self.format_version > INDEX_FORMAT_VERSION {
            return Err(bad(format!(
                "format {} is newer than this build ({INDEX_FORMAT_VERSION})",
                self.format_version
            )));
        }
        let mut at = 0usize;
        for p in &self.params {
            if p.offset != at {
                return Err(bad(format!(
                    "`{}` starts at {}, not {at}",
                    p.name, p.offset
                )));
            }
            at += p.shape.iter().product::<i64>().max(0) as usize;
        }
        if at != self.total {
            return Err(bad(format!(
                "the parameters hold {at} elements, not {}",
                self.total
            )));
        }
        let mut at = 0usize;
        for part in &self.parts {
            if part.start != at.min(self.total) || part.file.contains('/') {
                return Err(bad(format!(
                    "part `{}` does not continue at {at}",
                    part.file
                )));
            }
            at = part.start + part.len;
        }
        if at != self.total {
            return Err(bad(format!(
                "the parts cover {at} of {} elements",
                self.total
            )));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// Rank `rank`'s range of the flat space without ZeRO's padding: `(start, len)`.
pub fn own_range(layout: &FlatLayout, rank: usize) -> (usize, usize) {
    let start = (rank * layout.shard_len).min(layout.total);
    let end = ((rank + 1) * layout.shard_len).min(layout.total);
    (start, end - start)
}

/// The optimizer parts of a per-rank checkpoint, memory-mapped: any range of any moment is read
/// from the files that hold it, and nothing else is.
pub struct FlatSource {
    dir: PathBuf,
    index: OptimizerIndex,
    maps: Vec<MappedFile>,
}

impl FlatSource {
    pub fn open(dir: &Path, index: OptimizerIndex) -> Result<Self> {
        let maps = index
            .parts
            .iter()
            .map(|p| Ok(MappedFile::open_immutable(&dir.join(&p.file))?))
            .collect::<Result<Vec<_>>>()?;
        Ok(FlatSource {
            dir: dir.to_path_buf(),
            index,
            maps,
        })
    }

    pub fn index(&self) -> &OptimizerIndex {
        &self.index
    }

    pub fn has(&self, moment: &str) -> bool {
        self.index.moments.iter().any(|m| m == moment)
    }

    /// The checkpoint must be of the model `layout` describes (names and shapes, in order).
    pub fn check_model(&self, layout: &FlatLayout) -> Result<()> {
        let mine = layout.names.iter().zip(&layout.shapes);
        let theirs = self.index.params.iter().map(|p| (&p.name, &p.shape));
        if self.index.params.len() != layout.names.len() || !mine.eq(theirs) {
            let first = layout
                .names
                .iter()
                .zip(&layout.shapes)
                .zip(
                    self.index
                        .params
                        .iter()
                        .map(Some)
                        .chain(std::iter::repeat(None)),
                )
                .find(|((n, s), p)| p.is_none_or(|p| &p.name != *n || &p.shape != *s))
                .map_or_else(
                    || "extra tensors".to_string(),
                    |((n, s), _)| format!("`{n}` {s:?}"),
                );
            return Err(Error::OptimizerState(format!(
                "{}: the optimizer state is of another model (first difference at {first})",
                self.dir.join(OPTIMIZER_INDEX_FILE).display()
            )));
        }
        Ok(())
    }

    /// The whole of parameter `i` (in the index's order) of `moment`, in its shape (f32, CPU).
    pub fn read_parameter(&self, moment: &str, i: usize) -> Result<Tensor> {
        let p = &self.index.params[i];
        let n = p.shape.iter().product::<i64>().max(0) as usize;
        Ok(self.read(moment, p.offset, n)?.view(p.shape.as_slice()))
    }

    /// Every parameter of every moment in the per-parameter layout (`exp_avg.NAME`, …).
    pub fn per_parameter(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for moment in &self.index.moments {
            for (i, p) in self.index.params.iter().enumerate() {
                out.push((
                    format!("{moment}.{}", p.name),
                    self.read_parameter(moment, i)?,
                ));
            }
        }
        Ok(out)
    }

    /// Elements `[start, start + len)` of `moment` in the flat space (f32, on the CPU).
    pub fn read(&self, moment: &str, start: usize, len: usize) -> Result<Tensor> {
        let mut bytes = Vec::with_capacity(len * 4);
        let end = start + len;
        for (part, map) in self.index.parts.iter().zip(&self.maps) {
            let (a, b) = (start.max(part.start), end.min(part.start + part.len));
            if a >= b {
                continue;
            }
            let path = self.dir.join(&part.file);
            let file = SafeTensors::deserialize(map).map_err(|e| {
                Error::OptimizerState(format!("{}: not a safetensors file: {e}", path.display()))
            })?;
            let view = file.tensor(moment).map_err(|_| {
                Error::OptimizerState(format!("{}: missing `{moment}`", path.display()))
            })?;
            if view.dtype() != Dtype::F32 || view.shape() != [part.len] {
                return Err(Error::OptimizerState(format!(
                    "{}: `{moment}` is {:?} {:?}, the index says F32 [{}]",
                    path.display(),
                    view.dtype(),
                    view.shape(),
                    part.len
                )));
            }
            let local = (a - part.start) * 4..(b - part.start) * 4;
            bytes.extend_from_slice(&view.data()[local]);
        }
        if bytes.len() != len * 4 {
            return Err(Error::OptimizerState(format!(
                "{}: elements [{start}, {end}) of `{moment}` are not all in the parts",
                self.dir.display()
            )));
        }
        Ok(Tensor::f_from_data_size(
            &bytes,
            &[len as i64],
            Kind::Float,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::zero1::test_layout as layout;

    #[test]
    fn model_tensors_split_into_contiguous_balanced_runs() {
        assert_eq!(model_owners(&[10, 10, 10, 10], 2), vec![0, 0, 1, 1]);
        assert_eq!(model_owners(&[100, 1, 1, 1], 2), vec![0, 1, 1, 1]);
        assert_eq!(model_owners(&[5, 5], 4), vec![0, 2]);
        assert_eq!(model_owners(&[7, 7, 7], 1), vec![0, 0, 0]);
        let owners = model_owners(&[3, 1, 4, 1, 5, 9, 2, 6], 3);
        assert!(owners.windows(2).all(|w| w[0] <= w[1]), "{owners:?}");
    }

    #[test]
    fn parts_tile_the_flat_space_without_padding() {
        let index = OptimizerIndex::new(&layout(&[5, 4], 4), vec!["exp_avg".into()]);
        let spans: Vec<(usize, usize)> = index.parts.iter().map(|p| (p.start, p.len)).collect();
        assert_eq!(spans, vec![(0, 3), (3, 3), (6, 3), (9, 0)]);
        index.validate(Path::new("x")).expect("valid");
        let mut broken = index.clone();
        broken.parts[1].len = 2;
        let err = broken.validate(Path::new("x")).expect_err("gap");
        assert!(
            err.to_string().contains("optimizer-00003-of-00004"),
            "{err}"
        );
    }

    #[test]
    fn ranges_are_read_across_part_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flat = layout(&[5, 4], 2);
        let index = OptimizerIndex::new(&flat, vec!["exp_avg".into()]);
        for part in &index.parts {
            let values: Vec<f32> = (part.start..part.start + part.len)
                .map(|i| i as f32)
                .collect();
            let t = vec![("exp_avg".to_string(), Tensor::from_slice(&values))];
            corenet_model::save_tensors(&t, &dir.path().join(&part.file)).expect("save");
        }
        let source = FlatSource::open(dir.path(), index).expect("open");
        source.check_model(&flat).expect("same model");
        let got = Vec::<f32>::try_from(source.read("exp_avg", 3, 4).expect("read")).expect("vec");
        assert_eq!(got, vec![3.0, 4.0, 5.0, 6.0]);
        let err = source.read("exp_avg_sq", 0, 1).expect_err("missing moment");
        assert!(err.to_string().contains("exp_avg_sq"), "{err}");
        let other = layout(&[5, 3], 2);
        let err = source.check_model(&other).expect_err("other model");
        assert!(err.to_string().contains("`p1` [3]"), "{err}");
    }
}

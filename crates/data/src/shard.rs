//! Which part of a source each (rank, worker) reads. Like CoreNet, a "scaled" process is
//! `scaled_rank = rank * workers + worker` of `scaled_world = world_size * workers`.
//! Unlike CoreNet, files are not padded by duplication: parts may differ in size by one file,
//! but every document is read exactly once per epoch.

use crate::read::Stride;
use crate::rng::Rng;

/// One scaled process's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub world_size: usize,
    pub worker: usize,
    pub workers: usize,
}

impl Shard {
    pub fn scaled_rank(&self) -> usize {
        self.rank * self.workers + self.worker
    }

    pub fn scaled_world(&self) -> usize {
        self.world_size * self.workers
    }

    /// This process's files for one epoch, in reading order, each with the records it owns.
    /// The global order is reshuffled every epoch with the same seed on every process, so the
    /// parts of one epoch always partition the source. With fewer files than processes, every
    /// process reads every file and takes every `scaled_world`-th record (or row group).
    pub fn epoch_plan(
        &self,
        n_files: usize,
        seed: u64,
        source: usize,
        epoch: u64,
    ) -> Vec<(usize, Stride)> {
        let mut order: Vec<usize> = (0..n_files).collect();
        Rng::new(&[seed, source as u64, epoch]).shuffle(&mut order);
        let (rank, world) = (self.scaled_rank(), self.scaled_world());
        if n_files >= world {
            order
                .into_iter()
                .skip(rank)
                .step_by(world)
                .map(|f| (f, Stride::ALL))
                .collect()
        } else {
            order
                .into_iter()
                .map(|f| {
                    (
                        f,
                        Stride {
                            index: rank,
                            count: world,
                        },
                    )
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_level_parts_partition_the_files() {
        let mut seen = Vec::new();
        for rank in 0..2 {
            for worker in 0..2 {
                let s = Shard {
                    rank,
                    world_size: 2,
                    worker,
                    workers: 2,
                };
                seen.extend(s.epoch_plan(9, 5, 0, 3).into_iter().map(|(f, st)| {
                    assert_eq!(st, Stride::ALL);
                    f
                }));
            }
        }
        seen.sort();
        assert_eq!(seen, (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn few_files_split_by_record() {
        let s = Shard {
            rank: 1,
            world_size: 2,
            worker: 0,
            workers: 2,
        };
        let plan = s.epoch_plan(3, 0, 0, 0);
        assert_eq!(plan.len(), 3);
        assert!(plan
            .iter()
            .all(|(_, st)| *st == Stride { index: 2, count: 4 }));
    }
}

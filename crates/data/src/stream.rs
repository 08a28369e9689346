//! `DataStream`: the public iterator of batches. Each worker runs on its own thread and
//! prefetches into a bounded channel; the consumer takes batches round-robin over workers, so
//! the batch order does not depend on thread timing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::batch::Batch;
use crate::config::DataConfig;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::shard::Shard;
use crate::shard_list::ShardList;
use crate::state::{StreamState, STATE_VERSION};
use crate::stats::SourceStats;
use crate::tokenizer::{load_tokenizer, TextTokenizer};
use crate::worker::{Worker, WorkerBatch};

struct WorkerHandle {
    rx: Option<Receiver<Result<WorkerBatch>>>,
    thread: Option<JoinHandle<()>>,
}

/// A rank's stream of batches. Dropping it stops and joins the worker threads.
pub struct DataStream {
    workers: Vec<WorkerHandle>,
    stop: Arc<AtomicBool>,
    state: StreamState,
    finished: bool,
    micro_batch: usize,
    seq_len: usize,
}

impl DataStream {
    /// Opens the stream of `rank` out of `world_size`, loading `config.tokenizer`;
    /// `resume` continues right after the batch that carried that state.
    pub fn open(
        config: &DataConfig,
        rank: usize,
        world_size: usize,
        resume: Option<StreamState>,
    ) -> Result<Self> {
        let tokenizer = load_tokenizer(&config.tokenizer)?;
        Self::with_tokenizer(config, tokenizer, rank, world_size, resume)
    }

    /// Like [`DataStream::open`] with an already loaded tokenizer (`config.tokenizer` unused).
    pub fn with_tokenizer(
        config: &DataConfig,
        tokenizer: Arc<dyn TextTokenizer>,
        rank: usize,
        world_size: usize,
        resume: Option<StreamState>,
    ) -> Result<Self> {
        if rank >= world_size {
            return Err(Error::Config(format!(
                "rank {rank} out of world size {world_size}"
            )));
        }
        let pipe = Arc::new(Pipeline::new(config, tokenizer)?);
        let workers = config.workers;
        let shard = |worker| Shard {
            rank,
            world_size,
            worker,
            workers,
        };
        let state = match resume {
            Some(s) => {
                s.check_layout(rank, world_size, workers, config.seed, &pipe.source_names())?;
                s
            }
            None => StreamState {
                version: STATE_VERSION,
                rank,
                world_size,
                seed: config.seed,
                source_names: pipe.source_names(),
                next_worker: 0,
                workers: (0..workers)
                    .map(|w| Worker::initial_state(&pipe, &shard(w)))
                    .collect(),
                files: None,
            },
        };
        let stop = Arc::new(AtomicBool::new(false));
        let handles = state
            .workers
            .iter()
            .enumerate()
            .map(|(w, ws)| {
                spawn(
                    Worker::new(Arc::clone(&pipe), shard(w), ws.clone()),
                    w,
                    config.prefetch,
                    &stop,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DataStream {
            workers: handles,
            stop,
            state,
            finished: false,
            micro_batch: config.micro_batch,
            seq_len: config.seq_len,
        })
    }

    /// State right after the last batch returned (the initial state before any).
    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// Records the shard files this stream reads (see [`ShardList`]) in its state, and so in the
    /// state every later batch carries.
    pub fn set_files(&mut self, files: Arc<ShardList>) {
        self.state.files = Some(files);
    }

    /// Per-source counters for the batches returned so far.
    pub fn stats(&self) -> Vec<SourceStats> {
        self.state.stats()
    }

    fn receive(&mut self) -> Result<Batch> {
        let w = self.state.next_worker;
        let rx = self.workers[w]
            .rx
            .as_ref()
            .ok_or(Error::WorkerGone { worker: w })?;
        let wb = rx.recv().map_err(|_| Error::WorkerGone { worker: w })??;
        self.state.workers[w] = wb.state;
        self.state.next_worker = (w + 1) % self.workers.len();
        Ok(Batch {
            tokens: wb.tokens,
            prompt: wb.prompt,
            micro_batch: self.micro_batch,
            seq_len: self.seq_len,
            row_sources: wb.row_sources,
            worker: w,
            state: self.state.clone(),
        })
    }
}

/// Starts a worker thread that prefetches up to `depth` batches.
fn spawn(
    mut worker: Worker,
    w: usize,
    depth: usize,
    stop: &Arc<AtomicBool>,
) -> Result<WorkerHandle> {
    let (tx, rx) = sync_channel(depth);
    let stop = Arc::clone(stop);
    let thread = std::thread::Builder::new()
        .name(format!("corenet-data-{w}"))
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let item = worker.next_batch();
                let failed = item.is_err();
                // A closed channel means the stream was dropped: stop quietly.
                if tx.send(item).is_err() || failed {
                    break;
                }
            }
        })
        .map_err(|e| Error::io("<worker thread>", e))?;
    Ok(WorkerHandle {
        rx: Some(rx),
        thread: Some(thread),
    })
}

impl Iterator for DataStream {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let item = self.receive();
        // After an error the position is unknown to the workers that failed: end the stream.
        self.finished = item.is_err();
        Some(item)
    }
}

impl Drop for DataStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers unblocks workers waiting to send.
        for h in &mut self.workers {
            h.rx.take();
        }
        for h in &mut self.workers {
            if let Some(t) = h.thread.take() {
                if t.join().is_err() {
                    tracing::error!("a data worker thread panicked");
                }
            }
        }
    }
}

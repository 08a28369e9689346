//! The data stream as the training step sees it: (B, T) input and target tensors on the
//! training device, the stream position after the last batch taken, and how long the step
//! waited for its batches (`data_wait_ms` in the metrics; near zero while the prefetching
//! workers keep up).

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use corenet_data::{Batch, DataStream, StreamState};

use crate::error::{Error, Result};

/// Batches for the trainer.
pub struct Batches {
    stream: DataStream,
    device: Device,
    /// The loss's ignore index, written over targets that are prompt tokens.
    ignore_index: i64,
    /// Position after the last batch taken, until the trainer collects it.
    position: Option<StreamState>,
    waited: Duration,
}

impl Batches {
    pub fn new(stream: DataStream, device: Device, ignore_index: i64) -> Self {
        Batches {
            stream,
            device,
            ignore_index,
            position: None,
            waited: Duration::ZERO,
        }
    }

    /// The next micro-batch as (B, T) int64 inputs and targets on the device. `step` is the
    /// optimizer step asking, for the error when the stream has ended.
    pub fn next(&mut self, step: u64, steps: u64) -> Result<(Tensor, Tensor)> {
        let started = Instant::now();
        let batch = match self.stream.next() {
            Some(batch) => batch?,
            None => return Err(Error::DataEnded { step, steps }),
        };
        self.waited += started.elapsed();
        let tensors = self.upload(&batch)?;
        self.position = Some(batch.state);
        Ok(tensors)
    }

    /// The position after the batches taken since the last call, if any.
    pub fn take_position(&mut self) -> Option<StreamState> {
        self.position.take()
    }

    /// Time spent waiting for batches since the last call.
    pub fn take_wait(&mut self) -> Duration {
        std::mem::take(&mut self.waited)
    }

    /// On CUDA the rows go through pinned host memory, so the copy is queued behind the
    /// device's work and the host moves on.
    fn upload(&self, batch: &Batch) -> Result<(Tensor, Tensor)> {
        let shape = [batch.micro_batch as i64, batch.seq_len as i64];
        let upload = |ids: Vec<i64>| -> Result<Tensor> {
            let host = Tensor::from_slice(&ids).view(shape);
            if !self.device.is_cuda() {
                return Ok(host);
            }
            Ok(host.f_pin_memory(self.device)?.f_to_device_(
                self.device,
                Kind::Int64,
                true,
                false,
            )?)
        };
        Ok((
            upload(batch.inputs_i64())?,
            upload(batch.targets_i64(self.ignore_index))?,
        ))
    }
}

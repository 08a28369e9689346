//! Device values brought to the host without making the device wait for the host.
//!
//! [`Readback::start`] queues the device-to-host copy right behind the work that produced the
//! values (into pinned memory, asynchronously) and records an event after it. [`Readback::wait`]
//! blocks on that event only, so the trainer can queue step s+1 first and read step s
//! afterwards: the device always has a step's work queued while the host waits. On the CPU
//! there is nothing to overlap and the values are read directly.

use std::ffi::c_void;
use std::ptr::NonNull;

use tch::{Device, Kind, Tensor};

use crate::error::{kernel_err, Error, Result};
use crate::shim;

/// Values on their way to the host (a 1-D tensor, read as f64).
#[derive(Debug)]
pub struct Readback {
    host: Tensor,
    /// Completes when the copy into `host` has; `None` when `host` is already readable.
    event: Option<Event>,
}

impl Readback {
    /// Queues the copy of `values` (any float shape; flattened) to the host.
    pub fn start(values: &Tensor) -> Result<Self> {
        let values = values.detach().reshape([-1]).f_to_kind(Kind::Double)?;
        if !values.device().is_cuda() {
            return Ok(Readback {
                host: values,
                event: None,
            });
        }
        // A non-blocking copy to the CPU lands in pinned memory (ATen pins the output), so it
        // runs on the device's stream without holding up the host.
        let host = values.f_to_device_(Device::Cpu, Kind::Double, true, false)?;
        let event = Event::record(&values)?;
        Ok(Readback {
            host,
            event: Some(event),
        })
    }

    /// Waits for the copy (not for anything queued after it) and returns the values.
    pub fn wait(self) -> Result<Vec<f64>> {
        if let Some(event) = &self.event {
            event.synchronize()?;
        }
        Ok(Vec::<f64>::try_from(&self.host)?)
    }
}

/// A `c10::Event` recorded on the current stream of a tensor's device.
#[derive(Debug)]
struct Event(NonNull<c_void>);

// SAFETY: a c10::Event may be synchronized and destroyed from any thread; the handle is owned
// by exactly one `Event`.
unsafe impl Send for Event {}

impl Event {
    fn record(on: &Tensor) -> Result<Self> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: `on` is a live tensor; `out` receives an owned event handle on success.
        shim::check(unsafe { shim::shim_event_record(on.as_ptr(), &mut out) })
            .map_err(|m| event_err("record", m))?;
        NonNull::new(out)
            .map(Event)
            .ok_or_else(|| event_err("record", "no event returned".into()))
    }

    fn synchronize(&self) -> Result<()> {
        // SAFETY: the handle is live until `drop`.
        shim::check(unsafe { shim::shim_event_synchronize(self.0.as_ptr()) })
            .map_err(|m| event_err("synchronize", m))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by `shim_event_record`, released once.
        unsafe { shim::shim_event_free(self.0.as_ptr()) }
    }
}

fn event_err(op: &str, message: String) -> Error {
    kernel_err(format!("device event {op}"), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_values_come_back_flattened_as_f64() {
        let t = Tensor::from_slice(&[1.5f32, -2.0, f32::NAN, 4.0]).view([2, 2]);
        let values = Readback::start(&t).expect("start").wait().expect("wait");
        assert_eq!(values[..2], [1.5, -2.0]);
        assert!(values[2].is_nan());
        assert_eq!(values[3], 4.0);
    }

    #[test]
    fn a_cpu_tensor_has_no_event_and_events_need_an_event_backend() {
        let t = Tensor::from_slice(&[1f32]);
        assert!(Readback::start(&t).expect("start").event.is_none());
        // The CPU backend has no events: the shim's error comes back as an error, not a crash.
        let err = Event::record(&t).expect_err("no CPU events");
        assert!(err.to_string().contains("device event record"), "{err}");
    }
}

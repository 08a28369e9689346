//! What a run executes on: the device's name, the libtorch version, and peak memory (the
//! process's resident high-water mark on CPU, the CUDA caching allocator's peak on GPU, through
//! the C++ shim since tch binds neither).

use std::ffi::{c_char, c_int, CStr};

use tch::Device;

use crate::error::{kernel_err, Error, Result};
use crate::shim;

/// The libtorch version the binary was built against and links (e.g. "2.11.0").
pub fn torch_version() -> Result<String> {
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: `out` is a valid place for the shim to store a malloc'd string.
    shim::check(unsafe { shim::shim_torch_version(&mut out) }).map_err(shim_err)?;
    if out.is_null() {
        return Err(shim_err("torch version: null string".into()));
    }
    // SAFETY: on success `out` is a NUL-terminated string malloc'd by the shim, owned by us.
    let version = unsafe { CStr::from_ptr(out) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated with malloc by the shim and not used after this point.
    unsafe { shim::shim_free(out.cast()) };
    Ok(version)
}

fn shim_err(message: String) -> Error {
    kernel_err("device info", message)
}

/// A human-readable device name: the CPU model from /proc/cpuinfo, or for CUDA the name
/// `nvidia-smi` reports (tch has no device-name query), overridable with
/// `CORENET_DEVICE_NAME`.
pub fn device_name(device: Device) -> String {
    if let Ok(name) = std::env::var("CORENET_DEVICE_NAME") {
        return name;
    }
    match device {
        Device::Cuda(i) => nvidia_smi_name(i).unwrap_or_else(|| format!("cuda:{i}")),
        _ => cpu_model().unwrap_or_else(|| "cpu".into()),
    }
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn nvidia_smi_name(index: usize) -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name",
            "--format=csv,noheader",
            &format!("--id={index}"),
        ])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak bytes held by the CUDA caching allocator on device `index` since the last
/// [`reset_cuda_peak`] (`torch.cuda.max_memory_allocated`).
pub fn cuda_peak_allocated(index: usize) -> Result<u64> {
    let mut out = 0i64;
    // SAFETY: `out` is a valid i64 for the shim to write.
    shim::check(unsafe { shim::shim_cuda_peak_allocated(index as c_int, &mut out) })
        .map_err(shim_err)?;
    Ok(out.max(0) as u64)
}

/// `torch.cuda.reset_peak_memory_stats(index)`.
pub fn reset_cuda_peak(index: usize) -> Result<()> {
    // SAFETY: plain integer argument; errors come back as a message.
    shim::check(unsafe { shim::shim_cuda_reset_peak(index as c_int) }).map_err(shim_err)
}

/// Waits for the device's queued work (a no-op on CPU, where every op runs eagerly).
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_version_matches_the_pinned_wheel() {
        let v = torch_version().expect("torch version");
        assert!(v.starts_with("2."), "{v}");
    }

    #[test]
    fn cuda_peak_on_a_cpu_machine_is_an_error_not_a_crash() {
        if tch::Cuda::is_available() {
            return;
        }
        assert!(cuda_peak_allocated(0).is_err());
    }

    #[test]
    fn cpu_peak_rss_is_known_on_linux() {
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
    }
}

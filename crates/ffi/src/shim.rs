//! Raw declarations of `csrc/shim.cpp` (compiled by build.rs). Every function returns null on
//! success or a malloc'd error message; [`check`] turns that into a `Result` and frees it.
//! Tensors cross as tch's `C_tensor` pointers, which are `at::Tensor*` on the C++ side.
//! The safe wrappers are in [`crate::process_group`], [`crate::multi_tensor`],
//! [`crate::readback`] and [`crate::device`].

use std::ffi::{c_char, c_int, c_void, CStr};

use torch_sys::C_tensor;

extern "C" {
    pub(crate) fn shim_free(p: *mut c_void);

    pub(crate) fn shim_dist_init(
        addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        backend: c_int,
        device_index: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub(crate) fn shim_dist_destroy(h: *mut c_void) -> *mut c_char;
    pub(crate) fn shim_all_reduce(h: *mut c_void, t: *const C_tensor, op: c_int) -> *mut c_char;
    pub(crate) fn shim_all_reduce_coalesced(
        h: *mut c_void,
        ts: *const *const C_tensor,
        n: usize,
        op: c_int,
    ) -> *mut c_char;
    pub(crate) fn shim_all_reduce_start(
        h: *mut c_void,
        ts: *const *const C_tensor,
        n: usize,
        op: c_int,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub(crate) fn shim_all_reduce_finish(pending: *mut c_void) -> *mut c_char;
    pub(crate) fn shim_reduce_scatter(
        h: *mut c_void,
        input: *const C_tensor,
        output: *const C_tensor,
        op: c_int,
    ) -> *mut c_char;
    pub(crate) fn shim_all_gather(
        h: *mut c_void,
        input: *const C_tensor,
        output: *const C_tensor,
    ) -> *mut c_char;
    pub(crate) fn shim_broadcast(h: *mut c_void, t: *const C_tensor, root: c_int) -> *mut c_char;
    pub(crate) fn shim_barrier(h: *mut c_void) -> *mut c_char;
    pub(crate) fn shim_store_set(
        h: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
    ) -> *mut c_char;
    pub(crate) fn shim_store_get(
        h: *mut c_void,
        key: *const c_char,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> *mut c_char;

    pub(crate) fn shim_store_share(h: *mut c_void, out: *mut *mut c_void) -> *mut c_char;
    pub(crate) fn shim_store_release(s: *mut c_void);
    pub(crate) fn shim_shared_store_set(
        s: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
    ) -> *mut c_char;
    pub(crate) fn shim_shared_store_get(
        s: *mut c_void,
        key: *const c_char,
        out: *mut *mut u8,
        out_len: *mut usize,
    ) -> *mut c_char;
    pub(crate) fn shim_shared_store_check(
        s: *mut c_void,
        key: *const c_char,
        out: *mut c_int,
    ) -> *mut c_char;

    pub(crate) fn shim_fused_adamw(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        steps: *const *const C_tensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        found_inf: *const C_tensor,
    ) -> *mut c_char;
    pub(crate) fn shim_foreach_norm(
        ts: *const *const C_tensor,
        n: usize,
        out: *mut C_tensor,
    ) -> *mut c_char;

    pub(crate) fn shim_clear_grads(ts: *const *const C_tensor, n: usize) -> *mut c_char;

    pub(crate) fn shim_torch_version(out: *mut *mut c_char) -> *mut c_char;
    pub(crate) fn shim_cuda_peak_allocated(device_index: c_int, out: *mut i64) -> *mut c_char;
    pub(crate) fn shim_cuda_reset_peak(device_index: c_int) -> *mut c_char;
    pub(crate) fn shim_event_record(t: *const C_tensor, out: *mut *mut c_void) -> *mut c_char;
    pub(crate) fn shim_event_synchronize(event: *mut c_void) -> *mut c_char;
    pub(crate) fn shim_event_free(event: *mut c_void);
}

/// Converts a shim return value into `Ok(())` or `Err(message)`, freeing the message.
pub(crate) fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim, owned by us.
    let message = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: allocated with malloc by the shim and not used after this point.
    unsafe { shim_free(err.cast()) };
    Err(message)
}

/// Pointers to the `at::Tensor` handles of `ts`, for the list-taking entry points.
pub(crate) fn tensor_ptrs(ts: &[tch::Tensor]) -> Vec<*const C_tensor> {
    ts.iter().map(|t| t.as_ptr()).collect()
}

/// Copies a malloc'd buffer of `len` bytes the shim handed over into a `Vec` and frees it; null
/// is empty.
///
/// # Safety
/// `data` is null or a buffer of at least `len` bytes allocated with malloc, owned by the caller
/// and not used after this call.
pub(crate) unsafe fn take_buffer(data: *mut u8, len: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: per the contract above.
    let value = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
    // SAFETY: allocated with malloc by the shim and not used after this point.
    unsafe { shim_free(data.cast()) };
    value
}

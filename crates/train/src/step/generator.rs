//! libtorch's default generator is process-wide. A run seeds it and then draws its initial
//! weights (or adapters); another thread drawing in between (a second trainer, a test, the
//! benchmark's synthetic tokens) would change them. Every seeded section and every unseeded
//! draw of this crate goes through one lock here, so seeded draws never interleave.

use std::sync::{Mutex, PoisonError};

static GENERATOR: Mutex<()> = Mutex::new(());

/// Seeds the global generator and runs `f` with nobody else in this crate drawing from it.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    drawing(|| {
        tch::manual_seed(seed);
        f()
    })
}

/// Runs `f`, which draws from the global generator without seeding it, between seeded
/// sections rather than inside one.
pub fn drawing<T>(f: impl FnOnce() -> T) -> T {
    let _guard = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    /// Threads drawing unseeded numbers as fast as they can do not change what a seeded
    /// section draws.
    #[test]
    fn a_seeded_section_draws_the_same_numbers_under_concurrent_draws() {
        let alone = seeded(7, || Tensor::randn([64], (Kind::Float, Device::Cpu)));
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = drawing(|| Tensor::randn([8], (Kind::Float, Device::Cpu)));
                    }
                });
            }
            for _ in 0..50 {
                let again = seeded(7, || {
                    let a = Tensor::randn([32], (Kind::Float, Device::Cpu));
                    std::thread::yield_now();
                    Tensor::cat(&[a, Tensor::randn([32], (Kind::Float, Device::Cpu))], 0)
                });
                assert!(again.equal(&alone));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

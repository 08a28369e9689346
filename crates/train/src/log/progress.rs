//! The progress bar and the log lines share stderr: while a bar is shown, every log line is
//! written with the bar cleared and redrawn after it ([`LogWriter`]), so the scrollback holds
//! log lines only, never frozen copies of the bar. indicatif draws nothing when stderr is not
//! a terminal, so a redirected log holds no bar frames at all.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::ProgressBar;

/// The bar on screen, if any (one run per process shows one).
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Makes `bar` the one log lines are written around.
pub(crate) fn show(bar: &ProgressBar) {
    *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar.clone());
}

/// Log lines go straight to stderr again.
pub(crate) fn hide() {
    ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// stderr for log lines, writing around the active progress bar. Give it to the log
/// subscriber (`tracing_subscriber::fmt().with_writer(|| LogWriter)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A duration as a person reads an ETA: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etas_read_like_etas() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (192, "3m12s"),
            (7500, "2h05m"),
            (273_600, "3d04h"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), want);
        }
    }
}

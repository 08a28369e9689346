//! One writer per run directory: an exclusive lock on `corenet.lock`, held for the life of the
//! process. Two trainers on one directory would interleave metrics and checkpoints; the second
//! one fails at start with the holder's pid and host instead.
//!
//! The lock is an advisory `flock` (POSIX record locks on some platforms) taken through
//! [`std::fs::File::try_lock`], so the kernel releases it when the holder dies — a crashed
//! run never leaves a stale lock behind. The file's text (pid, host, start time) is only for
//! the message; the lock itself is what counts. File systems without working locks (some NFS
//! set-ups) report an error rather than silently allowing two writers.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Name of the lock file in each directory a run writes.
pub const LOCK_FILE: &str = "corenet.lock";

/// An exclusive lock on a run directory; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Creates `dir` if needed and locks `dir/corenet.lock`, or fails naming the holder.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // Best effort: the holder may be rewriting it this instant.
                let _ = file.read_to_string(&mut holder);
                return Err(Error::RunLocked {
                    dir: dir.to_path_buf(),
                    holder: describe_holder(holder.trim()),
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
        }
        let text = format!(
            "{{\"pid\": {}, \"host\": {}, \"started_unix\": {}}}\n",
            std::process::id(),
            serde_json::Value::from(host_name()),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        );
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(text.as_bytes()))
            .map_err(|e| Error::io("write", &path, e))?;
        tracing::debug!(lock = %path.display(), "run directory locked");
        Ok(RunLock { _file: file })
    }
}

/// "pid 123 on host-a (since unix time …)" from the holder's lock text.
fn describe_holder(text: &str) -> String {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return "another process (its pid and host could not be read)".into();
    };
    let pid = value.get("pid").map_or("?".into(), ToString::to_string);
    let host = value
        .get("host")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?");
    format!("pid {pid} on host {host}")
}

/// This machine's name, for messages a teammate reads on another node.
pub fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_first_release_frees_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("run");
        let first = RunLock::acquire(&dir).expect("first lock");
        let err = RunLock::acquire(&dir).expect_err("second lock must fail");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())) && text.contains(&host_name()),
            "{text}"
        );
        assert!(text.contains(&dir.display().to_string()), "{text}");
        drop(first);
        RunLock::acquire(&dir).expect("free again once the holder is gone");
    }

    #[test]
    fn unreadable_holder_text_still_gives_a_message() {
        assert!(describe_holder("garbage").contains("another process"));
        assert_eq!(
            describe_holder(r#"{"pid": 7, "host": "node-3"}"#),
            "pid 7 on host node-3"
        );
    }
}

//! The data-directory lock: `LOCK`, held with `flock(LOCK_EX)` while a server owns the directory, contains
//! its pid so a second server can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context as _};

const LOCK_FILE: &str = "LOCK";

/// The held lock; dropping it releases the flock.
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes an exclusive, non-blocking flock on `dir/LOCK` and writes our pid into it.
    pub(super) fn acquire(dir: &Path) -> anyhow::Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut owner = String::new();
                let _ = f.read_to_string(&mut owner);
                bail!(
                    "data directory {} is in use by another server (lock {} held by pid {})",
                    dir.display(),
                    path.display(),
                    owner.trim()
                );
            }
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        f.set_len(0)?;
        f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)?;
        Ok(DirLock { _file: f })
    }
}

//! One `iolane node` per state directory, and none before the last one's children are
//! done: an exclusive `flock` on `<state-dir>/iolane.lock`, on a descriptor that every
//! child process inherits.
//!
//! A driver that is SIGKILLed leaves its children running (`losetup`, `mkfs`, `mount`
//! outside a container's PID namespace). They share the locked open file, so the lock is
//! held until the last of them exits; the next process waits for that before it looks at
//! any volume. Without it a retried NodeStage attached a second loop device for an image
//! that the killed process's `losetup` was still attaching, and staged one while the other
//! answered for the volume. LVM closes inherited descriptors (its commands are told not to
//! warn about them) and serialises itself.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

use super::{Error, Result};

/// How often a waiting start looks again, and how often it says it is waiting.
const RETRY: Duration = Duration::from_millis(50);
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The held lock; released when the process and every child that inherited it are gone
/// (dropping it only closes this process's descriptor: no explicit unlock, which would
/// release the children's hold too).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

/// Takes the lock of `state_dir`, waiting up to `wait` for a previous process (or its
/// children) to let go of it.
pub async fn acquire(state_dir: &Path, wait: Duration) -> Result<InstanceLock> {
    std::fs::create_dir_all(state_dir).map_err(|e| Error::io("create directory", state_dir, e))?;
    let path = state_dir.join("iolane.lock");
    let start = Instant::now();
    let mut reported = start;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => {
                // Inherited by every child from here on (std opens with O_CLOEXEC).
                fcntl(&file, FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| {
                    Error::io("fcntl", &path, std::io::Error::from_raw_os_error(e as i32))
                })?;
                if start.elapsed() > RETRY {
                    tracing::info!(
                        path = %path.display(),
                        waited_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "the previous process and its children are done"
                    );
                }
                return Ok(InstanceLock { _file: file });
            }
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(Error::io("flock", &path, e)),
        }
        if start.elapsed() > wait {
            return Err(Error::io(
                "flock",
                &path,
                std::io::Error::other(format!(
                    "still held after {}s: another iolane node, or a child of one, is running on this state directory",
                    wait.as_secs()
                )),
            ));
        }
        if reported.elapsed() > REPORT_EVERY {
            reported = Instant::now();
            tracing::warn!(path = %path.display(), "waiting for another iolane node, or the children of a killed one, to finish");
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), Duration::ZERO).await.unwrap();
        let err = acquire(dir.path(), Duration::from_millis(120))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("still held"), "{err}");
        drop(first);
        acquire(dir.path(), Duration::ZERO).await.unwrap();
    }

    #[tokio::test]
    async fn a_child_holds_the_lock_after_its_parent_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let lock = acquire(dir.path(), Duration::ZERO).await.unwrap();
        // A child started while the lock is held, outliving the holder's own descriptor
        // (as a killed driver's losetup or mkfs does).
        #[allow(clippy::disallowed_methods)]
        let mut child = std::process::Command::new("sleep")
            .arg("1")
            .spawn()
            .unwrap();
        drop(lock);
        let err = acquire(dir.path(), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("still held"), "{err}");
        child.wait().unwrap();
        acquire(dir.path(), Duration::ZERO).await.unwrap();
    }
}

//! OS effects: the only module that spawns processes, mounts, or reads `/proc` and `/sys`.
//!
//! **Architecture Invariant:** every root (`/proc`, `/sys`, `/dev`) comes in through
//! [`Roots`], and every process goes through a [`CommandRunner`], so the rest of the driver
//! is tested on tempdirs and recording fakes.
//!
//! This file holds the error type, the roots, [`Os`] and its shared types; its calls live
//! along their seams: `mounts` (mount table, mount, bind, unmount), `loops` (loop
//! devices), `devices` (device numbers and sizes, blank check, `blkid`, `mkfs`, growing a
//! filesystem, `statvfs`), [`mounter`] (the [`Mounter`] seam the node calls mount
//! through) and [`files`] (plain directories and files the node calls mount
//! on). [`lvm`] and [`dm`] are the LVM and device-mapper command lines, [`host`] the
//! node's own facts, [`mountinfo`] the mount-table parser.

pub mod command;
mod devices;
pub mod dm;
pub mod files;
pub mod host;
pub mod instance_lock;
mod loops;
pub mod lvm;
pub mod mounter;
pub mod mountinfo;
mod mounts;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use command::{Cmd, CommandRunner, Output, SystemRunner};
pub use devices::{BLANK_CHECK_BYTES, zero_at_both_ends};
pub use mounter::Mounter;
pub use mountinfo::MountEntry;

/// Failures of OS effects. Each carries the command or path it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{argv} exited with {status}: {stderr}")]
    CommandFailed {
        argv: String,
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("{argv} did not finish within {secs}s and was killed")]
    Timeout { argv: String, secs: u64 },
    #[error("could not start {argv}: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: unexpected output {output:?}")]
    Parse { what: &'static str, output: String },
}

impl Error {
    /// Wraps an `io::Error` with the operation and the path.
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Result with the OS error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The host roots the driver looks at; injected so tests can point them at tempdirs.
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

/// A filesystem iolane creates and mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsType {
    Ext4,
    Xfs,
}

impl FsType {
    /// The name mount(8) and blkid use.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// Parses a name as blkid or a capability spells it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ext4" => Some(FsType::Ext4),
            "xfs" => Some(FsType::Xfs),
            _ => None,
        }
    }

    /// Smallest device mkfs accepts for this filesystem.
    pub fn min_size(self) -> u64 {
        match self {
            // ext4 fits in far less, but a journal needs a few MiB to be useful.
            FsType::Ext4 => 16 << 20,
            // xfsprogs 5.19+ refuses data sections under 300 MiB.
            FsType::Xfs => 300 << 20,
        }
    }
}

/// A loop device, whether it was attached read-only, and whether it is detaching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    pub path: PathBuf,
    pub read_only: bool,
    /// Detached while something still had it open (its `autoclear` flag is set: iolane
    /// never attaches with it): it still shows its backing file but goes away at the
    /// last close, so it must not be used for a new staging.
    pub detaching: bool,
}

/// What `blkid -p` found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// No signature at all: safe to format.
    Blank,
    /// A filesystem (or other superblock) of this type.
    Filesystem(String),
    /// A partition table of this type.
    PartitionTable(String),
}

/// Space and inode figures of a mounted filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const MKFS_TIMEOUT: Duration = Duration::from_secs(300);
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The real OS, reached through injected roots and a command runner.
#[derive(Debug, Clone)]
pub struct Os {
    runner: Arc<dyn CommandRunner>,
    roots: Roots,
}

impl Os {
    pub fn new(runner: Arc<dyn CommandRunner>, roots: Roots) -> Self {
        Os { runner, roots }
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    async fn run_ok(&self, cmd: Cmd) -> Result<Output> {
        let out = self.runner.run(&cmd).await?;
        if out.status == Some(0) {
            Ok(out)
        } else {
            Err(out.into_error(&cmd))
        }
    }
}

/// Runs a blocking system call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("run", Path::new("blocking task"), std::io::Error::other(e)))?
}

/// Renders an argv for messages and logs.
pub(crate) fn render_argv(program: &str, args: &[OsString]) -> String {
    let mut s = String::from(program);
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

//! [`run`]: the io_uring engine. Opens the target, joins the cgroup, keeps `queue_depth`
//! IOs in flight until the deadline and records what completed.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use serde::{Deserialize, Serialize};
use tokio_uring::buf::BoundedBuf;

use super::histogram::Histogram;
use super::report::{BenchReport, IntervalStats};
use super::spec::{BenchSpec, Pattern, SpecError};

/// Buffer alignment for `O_DIRECT`: the largest logical block size in common use.
pub const BUFFER_ALIGN: usize = 4096;

/// The 16 bytes repeated through every written block after its 8-byte offset header.
pub const PATTERN_FILL: &[u8; 16] = b"iolane loadgen \n";

/// The kind of one IO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IoOp {
    /// A read.
    Read,
    /// A write.
    Write,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Read => "read",
            IoOp::Write => "write",
        })
    }
}

/// Why a bench could not run or stopped. Every variant names the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The spec is invalid.
    #[error("invalid bench spec: {0}")]
    Spec(#[from] SpecError),
    /// Writing the process id to `<cgroup>/cgroup.procs` failed.
    #[error("join cgroup {}: write pid {pid} to cgroup.procs: {source}", path.display())]
    JoinCgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// The process id written.
        pid: u32,
        /// The error.
        source: io::Error,
    },
    /// The target cannot be inspected or opened.
    #[error("open {}: {source}", path.display())]
    Open {
        /// The target.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `O_DIRECT` open refused with `EINVAL`: the filesystem has no direct IO (tmpfs).
    #[error(
        "open {} with O_DIRECT: its filesystem does not support direct IO (tmpfs?); use a disk filesystem or turn direct off",
        path.display()
    )]
    DirectUnsupported {
        /// The target.
        path: PathBuf,
    },
    /// A write bench opens a block device with `O_EXCL`; the kernel said it is in use.
    #[error(
        "open {} exclusively for writing: device is in use (mounted or held by another opener)",
        path.display()
    )]
    DeviceBusy {
        /// The target.
        path: PathBuf,
    },
    /// The target is a directory, a character device, a socket, ...
    #[error("{} is neither a block device nor a regular file", path.display())]
    NotFileOrBlockDevice {
        /// The target.
        path: PathBuf,
    },
    /// Finding the size of the target failed.
    #[error("size of {}: {source}", path.display())]
    Size {
        /// The target.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The target (or its `size_limit`) holds less than one block.
    #[error("{}: size {size} is smaller than one block of {block_size} bytes", path.display())]
    TooSmall {
        /// The target.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// The block size.
        block_size: u32,
    },
    /// `size_limit` is larger than the target.
    #[error("size_limit: {size_limit} exceeds the size {size} of {}", path.display())]
    SizeLimitTooLarge {
        /// The target.
        path: PathBuf,
        /// The limit asked for.
        size_limit: u64,
        /// The target's size.
        size: u64,
    },
    /// The bench thread or its io_uring runtime could not start.
    #[error(
        "start io_uring runtime for {}: {source} (io_uring disabled by kernel.io_uring_disabled or blocked by seccomp?)",
        path.display()
    )]
    Runtime {
        /// The target.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An IO failed.
    #[error("{op} of {len} bytes at offset {offset} of {}: {source}", path.display())]
    Io {
        /// The target.
        path: PathBuf,
        /// Read or write.
        op: IoOp,
        /// Byte offset.
        offset: u64,
        /// Bytes asked for.
        len: u32,
        /// The error.
        source: io::Error,
    },
    /// An IO transferred fewer bytes than asked.
    #[error("{op} of {len} bytes at offset {offset} of {}: transferred only {done}", path.display())]
    ShortIo {
        /// The target.
        path: PathBuf,
        /// Read or write.
        op: IoOp,
        /// Byte offset.
        offset: u64,
        /// Bytes asked for.
        len: u32,
        /// Bytes transferred.
        done: usize,
    },
}

/// Fills `block` with the content the generator writes at byte `offset`: `offset` as
/// little-endian `u64`, then [`PATTERN_FILL`] repeated (cut at the end of the block).
pub fn write_pattern(offset: u64, block: &mut [u8]) {
    for (byte, fill) in block.iter_mut().skip(8).zip(PATTERN_FILL.iter().cycle()) {
        *byte = *fill;
    }
    stamp(offset, block);
}

/// Writes the offset header only; the rest already holds the fill.
fn stamp(offset: u64, block: &mut [u8]) {
    let header = offset.to_le_bytes();
    let n = header.len().min(block.len());
    block[..n].copy_from_slice(&header[..n]);
}

/// Runs the bench `spec` describes and returns what it measured. Blocks the calling thread
/// for `spec.duration` (plus open and teardown); the IO runs on a dedicated thread with
/// its own tokio-uring runtime, so any thread may call this, including one inside a tokio
/// runtime. With `spec.cgroup` set it moves the **whole process** into that cgroup first,
/// for good: see the [module docs](super) (one bench per process).
///
/// Stops at the first failed IO and returns it; IOs are never retried.
pub fn run(spec: &BenchSpec) -> Result<BenchReport, BenchError> {
    spec.validate()?;
    let owned = spec.clone();
    let thread = std::thread::Builder::new()
        .name("iolane-bench".to_owned())
        .spawn(move || run_on_this_thread(&owned))
        .map_err(|source| BenchError::Runtime {
            path: spec.target.clone(),
            source,
        })?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[tracing::instrument(skip_all, fields(bench.target = %spec.target.display(), bench.pattern = %spec.pattern))]
fn run_on_this_thread(spec: &BenchSpec) -> Result<BenchReport, BenchError> {
    if let Some(cgroup) = &spec.cgroup {
        join_cgroup(cgroup)?;
    }
    let (file, span) = open_target(spec)?;
    let runtime = tokio_uring::Runtime::new(&tokio_uring::builder()).map_err(|source| {
        BenchError::Runtime {
            path: spec.target.clone(),
            source,
        }
    })?;
    let recorded = runtime.block_on(drive(spec, file, span))?;
    let report = BenchReport::new(
        spec,
        span,
        recorded.started_unix_ms,
        recorded.per_second,
        recorded.samples,
        &recorded.reads,
        &recorded.writes,
    );
    Ok(report)
}

/// Moves this process (all its threads) into the cgroup v2 directory `dir`.
fn join_cgroup(dir: &Path) -> Result<(), BenchError> {
    let pid = std::process::id();
    let procs = dir.join("cgroup.procs");
    tracing::debug!(cgroup.path = %dir.display(), pid, "writing pid to cgroup.procs");
    let err = |source| BenchError::JoinCgroup {
        path: dir.to_owned(),
        pid,
        source,
    };
    let mut file = OpenOptions::new().write(true).open(&procs).map_err(err)?;
    // cgroupfs takes one pid per write(2); the line is far below any short-write size.
    file.write_all(format!("{pid}\n").as_bytes()).map_err(err)
}

/// Opens the target for the spec's pattern and returns it with the span to use.
fn open_target(spec: &BenchSpec) -> Result<(File, u64), BenchError> {
    let path = &spec.target;
    let kind = std::fs::metadata(path)
        .map_err(|source| BenchError::Open {
            path: path.clone(),
            source,
        })?
        .file_type();
    let block_device = kind.is_block_device();
    if !block_device && !kind.is_file() {
        return Err(BenchError::NotFileOrBlockDevice { path: path.clone() });
    }
    let writes = spec.pattern.writes();
    let mut flags = OFlag::empty();
    if spec.direct {
        flags |= OFlag::O_DIRECT;
    }
    if block_device && writes {
        // Without O_CREAT, O_EXCL on a block device means "fail with EBUSY if mounted".
        flags |= OFlag::O_EXCL;
    }
    tracing::debug!(file.path = %path.display(), ?flags, writes, "opening bench target");
    let mut file = OpenOptions::new()
        .read(true)
        .write(writes)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(
            |source| match Errno::from_raw(source.raw_os_error().unwrap_or(0)) {
                Errno::EINVAL if spec.direct => {
                    BenchError::DirectUnsupported { path: path.clone() }
                }
                Errno::EBUSY if flags.contains(OFlag::O_EXCL) => {
                    BenchError::DeviceBusy { path: path.clone() }
                }
                _ => BenchError::Open {
                    path: path.clone(),
                    source,
                },
            },
        )?;
    let size_err = |source| BenchError::Size {
        path: path.clone(),
        source,
    };
    let size = if block_device {
        file.seek(SeekFrom::End(0)).map_err(size_err)?
    } else {
        file.metadata().map_err(size_err)?.len()
    };
    let block = u64::from(spec.block_size);
    let span = match spec.size_limit {
        Some(limit) if limit > size => {
            return Err(BenchError::SizeLimitTooLarge {
                path: path.clone(),
                size_limit: limit,
                size,
            });
        }
        Some(limit) => limit,
        None => size - size % block,
    };
    if span < block {
        return Err(BenchError::TooSmall {
            path: path.clone(),
            size,
            block_size: spec.block_size,
        });
    }
    Ok((file, span))
}

/// What the workers recorded.
struct Recorded {
    per_second: Vec<IntervalStats>,
    /// Per `spec.interval` when it is shorter than a second.
    samples: Vec<IntervalStats>,
    reads: Histogram,
    writes: Histogram,
    /// Wall-clock start of the run, milliseconds since the Unix epoch.
    started_unix_ms: u64,
}

/// State every worker shares. The runtime is single-threaded, so `Cell`/`RefCell` suffice;
/// no borrow is held across an `.await`.
struct Shared<'a> {
    spec: &'a BenchSpec,
    file: tokio_uring::fs::File,
    span: u64,
    start: Instant,
    deadline: Instant,
    /// Next offset of a sequential pattern.
    cursor: Cell<u64>,
    recorded: RefCell<Recorded>,
    /// The first failure; every worker stops once it is set.
    failure: RefCell<Option<BenchError>>,
}

async fn drive(spec: &BenchSpec, file: File, span: u64) -> Result<Recorded, BenchError> {
    let seconds = usize::try_from(spec.seconds()).unwrap_or(usize::MAX);
    let start = Instant::now();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let shared = Shared {
        spec,
        file: tokio_uring::fs::File::from_std(file),
        span,
        start,
        deadline: start + spec.duration,
        cursor: Cell::new(0),
        recorded: RefCell::new(Recorded {
            per_second: vec![IntervalStats::default(); seconds],
            samples: vec![IntervalStats::default(); spec.samples()],
            reads: Histogram::new(),
            writes: Histogram::new(),
            started_unix_ms,
        }),
        failure: RefCell::new(None),
    };
    let mut workers: FuturesUnordered<_> = (0..spec.queue_depth)
        .map(|index| worker(&shared, index))
        .collect();
    while workers.next().await.is_some() {}
    drop(workers);
    let Shared {
        file,
        recorded,
        failure,
        ..
    } = shared;
    // A close error after the IO completed changes nothing measured.
    if let Err(error) = file.close().await {
        tracing::debug!(%error, "closing the bench target failed");
    }
    match failure.into_inner() {
        Some(error) => Err(error),
        None => Ok(recorded.into_inner()),
    }
}

/// One of `queue_depth` IO loops, each with its own aligned buffer and PRNG stream.
async fn worker(shared: &Shared<'_>, index: u32) {
    let spec = shared.spec;
    let len = spec.block_size as usize;
    let blocks = shared.span / u64::from(spec.block_size);
    let mut rng = XorShift64Star::new(spec.seed, index);
    // Over-allocate and use the 4096-aligned window: safe alignment without a custom
    // allocator. The heap block never moves while the Vec is lent to the ring.
    let mut buf = vec![0u8; len + BUFFER_ALIGN];
    let skew = buf.as_ptr().addr() % BUFFER_ALIGN;
    let begin = (BUFFER_ALIGN - skew) % BUFFER_ALIGN;
    let window = begin..begin + len;
    let mut holds_fill = false;
    loop {
        if shared.failure.borrow().is_some() || Instant::now() >= shared.deadline {
            return;
        }
        let op = match spec.pattern {
            Pattern::RandRead | Pattern::SeqRead => IoOp::Read,
            Pattern::RandWrite | Pattern::SeqWrite => IoOp::Write,
            Pattern::RandRw { read_pct } => {
                if rng.next() % 100 < u64::from(read_pct) {
                    IoOp::Read
                } else {
                    IoOp::Write
                }
            }
        };
        let offset = if spec.pattern.sequential() {
            let offset = shared.cursor.get();
            shared
                .cursor
                .set((offset + u64::from(spec.block_size)) % shared.span);
            offset
        } else {
            rng.below(blocks) * u64::from(spec.block_size)
        };
        match op {
            IoOp::Write if holds_fill => stamp(offset, &mut buf[window.clone()]),
            IoOp::Write => write_pattern(offset, &mut buf[window.clone()]),
            IoOp::Read => {}
        }
        holds_fill = op == IoOp::Write;
        let slice = buf.slice(window.clone());
        let issued = Instant::now();
        let (result, slice) = match op {
            IoOp::Read => shared.file.read_at(slice, offset).await,
            IoOp::Write => shared.file.write_at(slice, offset).submit().await,
        };
        let done = Instant::now();
        buf = slice.into_inner();
        let failure = match result {
            Ok(n) if n == len => {
                record(shared, op, issued, done, len);
                continue;
            }
            Ok(n) => BenchError::ShortIo {
                path: spec.target.clone(),
                op,
                offset,
                len: spec.block_size,
                done: n,
            },
            Err(source) => BenchError::Io {
                path: spec.target.clone(),
                op,
                offset,
                len: spec.block_size,
                source,
            },
        };
        shared.failure.borrow_mut().get_or_insert(failure);
        return;
    }
}

/// Counts one completed IO, unless it completed at or after the deadline.
fn record(shared: &Shared<'_>, op: IoOp, issued: Instant, done: Instant, len: usize) {
    if done >= shared.deadline {
        return;
    }
    let elapsed = done.duration_since(shared.start);
    let second = usize::try_from(elapsed.as_secs()).unwrap_or(usize::MAX);
    let sample = usize::try_from(elapsed.as_nanos() / shared.spec.interval.as_nanos().max(1))
        .unwrap_or(usize::MAX);
    let nanos = u64::try_from(done.duration_since(issued).as_nanos()).unwrap_or(u64::MAX);
    let mut recorded = shared.recorded.borrow_mut();
    let recorded = &mut *recorded;
    let Some(interval) = recorded.per_second.get_mut(second) else {
        return;
    };
    let len = len as u64;
    count(interval, op, len);
    if let Some(s) = recorded.samples.get_mut(sample) {
        count(s, op, len);
    }
    if issued.duration_since(shared.start) < shared.spec.latency_from {
        return;
    }
    match op {
        IoOp::Read => recorded.reads.record(nanos),
        IoOp::Write => recorded.writes.record(nanos),
    }
}

fn count(interval: &mut IntervalStats, op: IoOp, len: u64) {
    match op {
        IoOp::Read => {
            interval.read_iops += 1;
            interval.read_bps += len;
        }
        IoOp::Write => {
            interval.write_iops += 1;
            interval.write_bps += len;
        }
    }
}

/// xorshift64* (Vigna): small, fast, and good enough to spread offsets; not for secrets.
#[derive(Debug, Clone)]
pub(crate) struct XorShift64Star(u64);

impl XorShift64Star {
    /// Stream `stream` of `seed`: the state is splitmix64 of both, never zero.
    pub(crate) fn new(seed: u64, stream: u32) -> Self {
        let mut z = seed ^ u64::from(stream).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        XorShift64Star(if z == 0 { 1 } else { z })
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (Lemire's multiply-shift; `n` > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn prng_is_deterministic_per_stream_and_in_range() {
        let draw = |seed, stream| {
            let mut r = XorShift64Star::new(seed, stream);
            (0..64).map(|_| r.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7, 0), draw(7, 0));
        assert_ne!(draw(7, 0), draw(7, 1));
        assert_ne!(draw(7, 0), draw(8, 0));
        assert!(draw(7, 3).iter().all(|&v| v < 1000));
        let mut r = XorShift64Star::new(0, 0);
        let spread: std::collections::BTreeSet<u64> = (0..4000).map(|_| r.below(16)).collect();
        assert_eq!(spread.len(), 16, "every block is reachable");
    }

    #[test]
    fn write_pattern_layout() {
        let mut block = vec![0u8; 40];
        write_pattern(0x0102_0304_0506_0708, &mut block);
        assert_eq!(&block[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&block[8..24], PATTERN_FILL);
        assert_eq!(&block[24..40], PATTERN_FILL);
        let mut short = [0u8; 4];
        write_pattern(u64::MAX, &mut short);
        assert_eq!(short, [0xff; 4]);
    }
}

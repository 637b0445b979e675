//! What a bench runs: [`BenchSpec`] and its access [`Pattern`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default block size in bytes.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Default number of IOs kept in flight.
pub const DEFAULT_QUEUE_DEPTH: u32 = 32;
/// Largest accepted queue depth (the io_uring submission queue holds 256 entries).
pub const MAX_QUEUE_DEPTH: u32 = 256;
/// Largest accepted block size in bytes (4 MiB); `queue_depth` buffers of this size are
/// allocated, so at most 1 GiB of buffers.
pub const MAX_BLOCK_SIZE: u32 = 4 << 20;
/// Default seed of the offset generator.
pub const DEFAULT_SEED: u64 = 0x696f_6c61_6e65; // "iolane"

/// The access pattern, named as fio names them where one exists.
///
/// Parsed from `randread`, `randwrite`, `read` (or `seqread`), `write` (or `seqwrite`),
/// `randrw` (50 % reads) and `randrw:PCT` (PCT % reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Pattern {
    /// Reads at uniformly random block-aligned offsets.
    RandRead,
    /// Writes at uniformly random block-aligned offsets.
    RandWrite,
    /// Reads from offset 0 upwards, wrapping at the end of the used span.
    SeqRead,
    /// Writes from offset 0 upwards, wrapping at the end of the used span.
    SeqWrite,
    /// Random offsets; each IO is a read with probability `read_pct` percent.
    RandRw {
        /// Percentage of reads, 0..=100.
        read_pct: u8,
    },
}

impl Pattern {
    /// Whether the pattern writes, so the target must be opened for writing.
    pub fn writes(self) -> bool {
        match self {
            Pattern::RandRead | Pattern::SeqRead => false,
            Pattern::RandWrite | Pattern::SeqWrite => true,
            Pattern::RandRw { read_pct } => read_pct < 100,
        }
    }

    /// Whether the pattern reads.
    pub fn reads(self) -> bool {
        match self {
            Pattern::RandRead | Pattern::SeqRead => true,
            Pattern::RandWrite | Pattern::SeqWrite => false,
            Pattern::RandRw { read_pct } => read_pct > 0,
        }
    }

    /// Whether offsets are sequential rather than random.
    pub fn sequential(self) -> bool {
        matches!(self, Pattern::SeqRead | Pattern::SeqWrite)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::RandRead => f.write_str("randread"),
            Pattern::RandWrite => f.write_str("randwrite"),
            Pattern::SeqRead => f.write_str("read"),
            Pattern::SeqWrite => f.write_str("write"),
            Pattern::RandRw { read_pct } => write!(f, "randrw:{read_pct}"),
        }
    }
}

impl FromStr for Pattern {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SpecError::Pattern(s.to_owned());
        match s {
            "randread" => Ok(Pattern::RandRead),
            "randwrite" => Ok(Pattern::RandWrite),
            "read" | "seqread" => Ok(Pattern::SeqRead),
            "write" | "seqwrite" => Ok(Pattern::SeqWrite),
            "randrw" => Ok(Pattern::RandRw { read_pct: 50 }),
            _ => {
                let pct = s.strip_prefix("randrw:").ok_or_else(bad)?;
                let read_pct: u8 = pct.parse().map_err(|_| bad())?;
                if read_pct > 100 {
                    return Err(bad());
                }
                Ok(Pattern::RandRw { read_pct })
            }
        }
    }
}

/// One bench run. Build it with [`BenchSpec::new`] (which fills in the defaults) and set
/// the public fields; [`run`](super::run) validates it first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchSpec {
    /// A block device or regular file. It must exist; it is never created or resized.
    pub target: PathBuf,
    /// Access pattern.
    pub pattern: Pattern,
    /// Bytes per IO: a multiple of 512, at most 4 MiB. Default 4096. With `direct` it
    /// must also be a multiple of the target's logical block size, or IOs fail `EINVAL`.
    pub block_size: u32,
    /// IOs kept in flight, 1..=256. Default 32.
    pub queue_depth: u32,
    /// How long to run: a whole number of seconds, at least 1 (each second is one
    /// [`IntervalStats`](super::IntervalStats)).
    pub duration: Duration,
    /// Bytes of the target to use, from offset 0: a positive multiple of `block_size`, at
    /// most the target's size. Default: the whole target, rounded down to `block_size`.
    pub size_limit: Option<u64>,
    /// A cgroup v2 directory the whole process moves into before any IO (see the module
    /// docs: one bench per process).
    pub cgroup: Option<PathBuf>,
    /// Open with `O_DIRECT` (bypass the page cache). Default true. Fails on filesystems
    /// without direct IO, such as tmpfs.
    pub direct: bool,
    /// Seed of the offset generator; the same seed gives the same offsets per worker.
    pub seed: u64,
    /// Length of the report's sampling intervals: 10 ms up to 1 s, dividing 1 s.
    /// Default 1 s (`per_second` only); shorter ones also fill the report's `intervals`
    /// (`iolane bench --interval-ms 100`: a reaction time from 100 ms samples).
    pub interval: Duration,
    /// IOs issued earlier than this after the start count in the rates but not in the
    /// latency percentiles (`--latency-from-ms`: the steady state's latency, after a
    /// start-up or reaction window). Default 0; less than `duration`.
    pub latency_from: Duration,
}

impl BenchSpec {
    /// A spec with the defaults: 4096-byte blocks, queue depth 32, the whole target, no
    /// cgroup, `O_DIRECT`, the default seed.
    pub fn new(target: impl Into<PathBuf>, pattern: Pattern, duration: Duration) -> Self {
        BenchSpec {
            target: target.into(),
            pattern,
            block_size: DEFAULT_BLOCK_SIZE,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            duration,
            size_limit: None,
            cgroup: None,
            direct: true,
            seed: DEFAULT_SEED,
            interval: Duration::from_secs(1),
            latency_from: Duration::ZERO,
        }
    }

    /// Checks every field that can be checked without touching the target; the error
    /// names the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.target.as_os_str().is_empty() {
            return Err(SpecError::Target);
        }
        if self.block_size == 0
            || !self.block_size.is_multiple_of(512)
            || self.block_size > MAX_BLOCK_SIZE
        {
            return Err(SpecError::BlockSize(self.block_size));
        }
        if !(1..=MAX_QUEUE_DEPTH).contains(&self.queue_depth) {
            return Err(SpecError::QueueDepth(self.queue_depth));
        }
        if self.duration.is_zero() || self.duration.subsec_nanos() != 0 {
            return Err(SpecError::Duration(self.duration));
        }
        let ms = self.interval.as_millis();
        if !self.interval.subsec_nanos().is_multiple_of(1_000_000)
            || !(10..=1000).contains(&ms)
            || !1000_u128.is_multiple_of(ms)
        {
            return Err(SpecError::Interval(self.interval));
        }
        if self.latency_from >= self.duration {
            return Err(SpecError::LatencyFrom(self.latency_from));
        }
        if let Pattern::RandRw { read_pct } = self.pattern
            && read_pct > 100
        {
            return Err(SpecError::ReadPct(read_pct));
        }
        if let Some(limit) = self.size_limit
            && (limit == 0 || !limit.is_multiple_of(u64::from(self.block_size)))
        {
            return Err(SpecError::SizeLimit {
                size_limit: limit,
                block_size: self.block_size,
            });
        }
        if let Some(cgroup) = &self.cgroup
            && cgroup.as_os_str().is_empty()
        {
            return Err(SpecError::Cgroup);
        }
        Ok(())
    }

    /// The number of 1-second intervals, once validated.
    pub(crate) fn seconds(&self) -> u64 {
        self.duration.as_secs()
    }

    /// The number of sampling intervals, once validated (0 at the default 1 s: the
    /// per-second figures are the samples).
    pub(crate) fn samples(&self) -> usize {
        let ms = self.interval.as_millis().max(1);
        if ms >= 1000 {
            return 0;
        }
        usize::try_from(self.duration.as_millis() / ms).unwrap_or(usize::MAX)
    }
}

/// A [`BenchSpec`] field that is out of range. Each message starts with the field's name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// `target` is empty.
    #[error("target: must not be empty")]
    Target,
    /// `pattern` text does not parse.
    #[error(
        "pattern: {0:?} is not one of randread, randwrite, read, write, randrw, randrw:PCT (PCT 0-100)"
    )]
    Pattern(String),
    /// `pattern.read_pct` above 100.
    #[error("pattern.read_pct: {0} is above 100")]
    ReadPct(u8),
    /// `block_size` is not a positive multiple of 512 up to 4 MiB.
    #[error("block_size: {0} is not a positive multiple of 512 of at most 4 MiB")]
    BlockSize(u32),
    /// `queue_depth` outside 1..=256.
    #[error("queue_depth: {0} is outside 1..=256")]
    QueueDepth(u32),
    /// `duration` is zero or not whole seconds.
    #[error("duration: {0:?} is not a whole number of seconds of at least 1")]
    Duration(Duration),
    /// `size_limit` is zero or not a multiple of `block_size`.
    #[error("size_limit: {size_limit} is not a positive multiple of block_size {block_size}")]
    SizeLimit {
        /// The value given.
        size_limit: u64,
        /// The block size it must be a multiple of.
        block_size: u32,
    },
    /// `cgroup` is an empty path.
    #[error("cgroup: must not be an empty path")]
    Cgroup,
    /// `interval` is not whole milliseconds from 10 to 1000 dividing a second.
    #[error("interval: {0:?} is not 10-1000 whole milliseconds dividing 1 s")]
    Interval(Duration),
    /// `latency_from` is not less than `duration`.
    #[error("latency_from: {0:?} leaves no IO to measure (it must be less than the duration)")]
    LatencyFrom(Duration),
}

impl SpecError {
    /// The name of the field at fault, as a CLI can map it to its flag.
    pub fn field(&self) -> &'static str {
        match self {
            SpecError::Target => "target",
            SpecError::Pattern(_) => "pattern",
            SpecError::ReadPct(_) => "pattern.read_pct",
            SpecError::BlockSize(_) => "block_size",
            SpecError::QueueDepth(_) => "queue_depth",
            SpecError::Duration(_) => "duration",
            SpecError::Interval(_) => "interval",
            SpecError::LatencyFrom(_) => "latency_from",
            SpecError::SizeLimit { .. } => "size_limit",
            SpecError::Cgroup => "cgroup",
        }
    }
}

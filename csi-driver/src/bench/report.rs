//! What a bench measured: [`BenchReport`], as JSON (serde) or as a table (`Display`).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::histogram::Histogram;
use super::spec::{BenchSpec, Pattern};

/// IOs and bytes completed in one 1-second interval, which are also that second's rates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalStats {
    /// Reads completed in the interval.
    pub read_iops: u64,
    /// Writes completed in the interval.
    pub write_iops: u64,
    /// Bytes read in the interval.
    pub read_bps: u64,
    /// Bytes written in the interval.
    pub write_bps: u64,
}

impl IntervalStats {
    /// Reads plus writes.
    pub fn iops(&self) -> u64 {
        self.read_iops + self.write_iops
    }
}

/// Latency of completed IOs, from submission to completion, in microseconds with
/// nanosecond resolution. All zero when `ios` is 0. Percentiles come from a
/// [`Histogram`] (at most 1/32 above the true value, never above `max_us`); `mean_us` and
/// `max_us` are exact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// IOs measured.
    pub ios: u64,
    /// Mean latency.
    pub mean_us: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 99th percentile latency.
    pub p99_us: f64,
    /// Largest latency.
    pub max_us: f64,
}

impl Latency {
    /// The summary of a histogram of nanoseconds.
    pub fn from_nanos(h: &Histogram) -> Self {
        // ns / 1000 as f64 is the double nearest the decimal, so JSON round-trips exactly.
        let us = |ns: Option<u64>| ns.map_or(0.0, |ns| ns as f64 / 1000.0);
        Latency {
            ios: h.count(),
            mean_us: us(h.mean()),
            p50_us: us(h.percentile(50.0)),
            p99_us: us(h.percentile(99.0)),
            max_us: us(h.max()),
        }
    }
}

/// The result of one [`run`](super::run). Serialises to JSON with these field names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The target benchmarked.
    pub target: PathBuf,
    /// The access pattern.
    pub pattern: Pattern,
    /// Bytes per IO.
    pub block_size: u32,
    /// IOs kept in flight.
    pub queue_depth: u32,
    /// Whether the target was opened with `O_DIRECT`.
    pub direct: bool,
    /// Bytes of the target used, from offset 0.
    pub span_bytes: u64,
    /// The cgroup the process ran in, if one was given.
    pub cgroup: Option<PathBuf>,
    /// Wall-clock start of the run (the first IO), milliseconds since the Unix epoch: lines
    /// up the samples of benches run side by side.
    #[serde(default)]
    pub started_unix_ms: u64,
    /// Length of the run in seconds, the length of `per_second`.
    pub duration_secs: u64,
    /// One entry per second of the run, in order; a second with no completed IO is present
    /// with zeros.
    pub per_second: Vec<IntervalStats>,
    /// The sampling interval in milliseconds (`--interval-ms`; 1000 by default).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// One entry per `interval_ms` when it is shorter than a second (counts within the
    /// interval, not rates: times `1000 / interval_ms` for a rate); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<IntervalStats>,
    /// Reads completed.
    pub read_ios: u64,
    /// Writes completed.
    pub write_ios: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Reads plus writes.
    pub total_ios: u64,
    /// Bytes read plus written.
    pub total_bytes: u64,
    /// `total_ios / duration_secs`, to 0.1.
    pub mean_iops: f64,
    /// `read_ios / duration_secs`, to 0.1.
    pub mean_read_iops: f64,
    /// `write_ios / duration_secs`, to 0.1.
    pub mean_write_iops: f64,
    /// IOs issued in the first this many milliseconds are not in the latencies below
    /// (`--latency-from-ms`; 0: all are).
    #[serde(default)]
    pub latency_from_ms: u64,
    /// Latency of all IOs (from `latency_from_ms`).
    pub latency: Latency,
    /// Latency of reads.
    pub read_latency: Latency,
    /// Latency of writes.
    pub write_latency: Latency,
}

impl BenchReport {
    /// Builds the report from what the workers recorded.
    pub(crate) fn new(
        spec: &BenchSpec,
        span_bytes: u64,
        started_unix_ms: u64,
        per_second: Vec<IntervalStats>,
        intervals: Vec<IntervalStats>,
        reads: &Histogram,
        writes: &Histogram,
    ) -> Self {
        let sum = |f: fn(&IntervalStats) -> u64| per_second.iter().map(f).sum::<u64>();
        let read_ios = sum(|s| s.read_iops);
        let write_ios = sum(|s| s.write_iops);
        let read_bytes = sum(|s| s.read_bps);
        let write_bytes = sum(|s| s.write_bps);
        let secs = spec.seconds();
        // Rounded to 0.1 so the value is the double nearest a short decimal and JSON
        // round-trips exactly.
        let rate = |n: u64| (n as f64 / secs as f64 * 10.0).round() / 10.0;
        let mut all = reads.clone();
        all.merge(writes);
        BenchReport {
            target: spec.target.clone(),
            pattern: spec.pattern,
            block_size: spec.block_size,
            queue_depth: spec.queue_depth,
            direct: spec.direct,
            span_bytes,
            cgroup: spec.cgroup.clone(),
            started_unix_ms,
            duration_secs: secs,
            read_ios,
            write_ios,
            read_bytes,
            write_bytes,
            total_ios: read_ios + write_ios,
            total_bytes: read_bytes + write_bytes,
            mean_iops: rate(read_ios + write_ios),
            mean_read_iops: rate(read_ios),
            mean_write_iops: rate(write_ios),
            latency_from_ms: u64::try_from(spec.latency_from.as_millis()).unwrap_or(u64::MAX),
            latency: Latency::from_nanos(&all),
            read_latency: Latency::from_nanos(reads),
            write_latency: Latency::from_nanos(writes),
            per_second,
            interval_ms: u64::try_from(spec.interval.as_millis()).unwrap_or(u64::MAX),
            intervals,
        }
    }

    /// IOPS of each sampling interval (`intervals` scaled to a rate), in order.
    pub fn interval_iops(&self) -> Vec<f64> {
        let scale = 1000.0 / self.interval_ms.max(1) as f64;
        self.intervals
            .iter()
            .map(|s| s.iops() as f64 * scale)
            .collect()
    }
}

fn default_interval_ms() -> u64 {
    1000
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

impl fmt::Display for BenchReport {
    /// One line per second, one per sampling interval when shorter than a second (its
    /// end in ms and its IOPS), then a summary table of reads, writes and both.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "iolane bench: {} on {} ({:.1} MiB used), bs {}, qd {}, {} s{}{}",
            self.pattern,
            self.target.display(),
            mib(self.span_bytes),
            self.block_size,
            self.queue_depth,
            self.duration_secs,
            if self.direct { ", O_DIRECT" } else { "" },
            self.cgroup
                .as_ref()
                .map(|c| format!(", cgroup {}", c.display()))
                .unwrap_or_default(),
        )?;
        writeln!(
            f,
            "{:>5} {:>11} {:>11} {:>11} {:>11}",
            "sec", "read IOPS", "write IOPS", "read MiB/s", "write MiB/s"
        )?;
        for (second, s) in self.per_second.iter().enumerate() {
            writeln!(
                f,
                "{:>5} {:>11} {:>11} {:>11.2} {:>11.2}",
                second + 1,
                s.read_iops,
                s.write_iops,
                mib(s.read_bps),
                mib(s.write_bps)
            )?;
        }
        if !self.intervals.is_empty() {
            writeln!(f, "{:>9} {:>11}", "ms", "IOPS")?;
            for (i, iops) in self.interval_iops().into_iter().enumerate() {
                writeln!(f, "{:>9} {:>11.0}", (i as u64 + 1) * self.interval_ms, iops)?;
            }
        }
        writeln!(
            f,
            "{:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "", "ios", "MiB", "IOPS", "mean us", "p50 us", "p99 us", "max us"
        )?;
        let rows = [
            (
                "read",
                self.read_bytes,
                self.mean_read_iops,
                &self.read_latency,
            ),
            (
                "write",
                self.write_bytes,
                self.mean_write_iops,
                &self.write_latency,
            ),
            ("total", self.total_bytes, self.mean_iops, &self.latency),
        ];
        for (name, bytes, iops, lat) in rows {
            writeln!(
                f,
                "{:<6} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                name,
                lat.ios,
                mib(bytes),
                iops,
                lat.mean_us,
                lat.p50_us,
                lat.p99_us,
                lat.max_us
            )?;
        }
        Ok(())
    }
}

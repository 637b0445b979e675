//! The IO load generator behind `iolane bench`: O_DIRECT random or sequential reads and
//! writes on a block device or regular file, on a tokio-uring (io_uring) runtime, with a
//! fixed number of IOs in flight, per-second IOPS and bandwidth (and per `interval` when
//! shorter, e.g. 100 ms), and p50/p99/max latency.
//!
//! ```no_run
//! use std::time::Duration;
//! use csi_driver::bench::{BenchSpec, Pattern, run};
//!
//! let spec = BenchSpec::new("/dev/loop0", Pattern::RandRead, Duration::from_secs(10));
//! let report = run(&spec)?; // blocks for the duration
//! print!("{report}"); // one line per second and a summary table
//! # Ok::<(), csi_driver::bench::BenchError>(())
//! ```
//!
//! - [`spec`]: [`BenchSpec`] (what to run) and [`Pattern`]; [`BenchSpec::validate`] names
//!   the field at fault.
//! - [`engine`](mod@engine): [`run`]: opens the target, joins the cgroup, drives the IO.
//! - [`report`]: [`BenchReport`], serde (JSON) and a `Display` table.
//! - [`histogram`]: the log-bucketed latency histogram (about 3 % resolution).
//! - [`command`]: `iolane bench`'s flags to a spec, and its output.
//! - [`calibrate`]: `iolane bench --calibrate`: a device's capacity, measured and stored
//!   for the node's priority controllers.
//!
//! # How it works
//! `run` starts a dedicated thread that owns a current-thread tokio-uring runtime, so it may
//! be called from any thread, including one that runs a tokio runtime (it blocks that
//! thread for the duration). `queue_depth` workers each own one 4096-aligned buffer and
//! loop: pick an offset (a block-aligned xorshift draw for random patterns, a shared
//! wrapping cursor for sequential ones), submit one read or write, await it, record its
//! latency and the 1-second interval it completed in. Workers stop submitting at the
//! deadline; IOs still in flight then are awaited but not counted, so every counted IO
//! completed inside `[0, duration)` and each interval's count is its per-second rate.
//!
//! Writes carry a recognisable content (see [`write_pattern`]): the block's byte offset
//! as little-endian `u64`, then `"iolane loadgen \n"` repeated; a reader can check that a
//! block came from this generator and was written where it claims. Writes destroy the
//! target's contents. A block device is opened with `O_EXCL` for write patterns, so the
//! kernel refuses a device that is mounted or otherwise claimed (`EBUSY`).
//!
//! # Cgroups: one bench per process
//! With `cgroup: Some(dir)`, `run` writes the process id to `dir/cgroup.procs` before it
//! creates the io_uring or opens the target. It is `cgroup.procs`, not `cgroup.threads`:
//! `io` is a *domain* controller, and `io.max` throttles the domain cgroup of the issuing
//! task; thread-granular placement (`cgroup.threads`) exists only inside *threaded*
//! subtrees, where `io` cannot be enabled at all. Writing to `cgroup.procs` moves the
//! **whole process** (every thread, and io_uring's io-wq workers, which are threads of
//! this process), and the process stays there after `run` returns. So to run several
//! benches in different cgroups at once (the demo: one per volume), start one child
//! process per bench (e.g. `iolane bench --cgroup <dir> --json`, spawned through the
//! driver's command runner) and collect each child's JSON [`BenchReport`], which
//! implements `Deserialize` for that purpose. Do not call `run` with a cgroup from a
//! process that serves anything else: the whole process would be throttled.
//! The kernel refuses the move (`EBUSY`) into a cgroup that has controllers enabled in its
//! own `cgroup.subtree_control` (the no-internal-process rule), and `EINVAL`/`ENOENT`
//! when `dir` is not a cgroup.

pub mod calibrate;
pub mod command;
pub mod engine;
pub mod histogram;
pub mod report;
pub mod spec;

#[cfg(test)]
mod tests;

pub use command::run_bench;
pub use engine::{BenchError, IoOp, run, write_pattern};
pub use histogram::Histogram;
pub use report::{BenchReport, IntervalStats, Latency};
pub use spec::{BenchSpec, Pattern, SpecError};

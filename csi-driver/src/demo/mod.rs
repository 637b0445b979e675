//! `iolane demo`: iolane's main job on its embedded default, end to end on this machine:
//! streaming keeps its priority over several batch volumes on a shared disk, and batch gets
//! the whole disk while streaming idles.
//!
//! 1. Checks the prerequisites (root, cgroup v2 with the io controller at the cgroup
//!    root, loop devices, io_uring, a work directory on a disk) and stops with exit code 2,
//!    creating nothing, when one is missing, saying what is missing and what would be needed.
//! 2. Measures the disk under its work directory (4 KiB random reads on a scratch file
//!    there, `load::calibrate`) and stores the rate as its calibration in the node's
//!    state directory, where the priority controllers read a device's capacity, as after
//!    `iolane bench --calibrate` on a real node.
//! 3. Serves the node's own CSI services in-process on the loop backend (state under a
//!    temp dir in the work directory), on a Unix socket there, with the node's class
//!    priority controllers built from the default node config as `iolane node` builds
//!    them ([`crate::priority::enable`]), and talks to the node only through that socket
//!    with the generated tonic clients ([`crate::grpc::client`]).
//! 4. Stands in for kubelet: a parent cgroup whose name mentions `kubepods` (with `+io` in
//!    its `cgroup.subtree_control`) and one `pod<uid>` cgroup per pod; then, for one
//!    `streaming` and `--batch-volumes` `batch` volumes (StorageClass parameter
//!    `iolane.dev/tier`), CreateVolume, NodeStage and NodePublish (raw block) with the pod
//!    UID in `volume_context`. Each loop device is switched to direct IO and the span the
//!    load uses is written first, so that reads reach the disk (not the image's page cache,
//!    not a hole).
//! 5. Runs `iolane bench` (random 4 KiB O_DIRECT reads, queue depth 32) in each pod's cgroup,
//!    one child process per pod (a bench moves its whole process into the cgroup): the
//!    streaming volume alone, all volumes at once, the batch volumes alone; samples the
//!    device controller's state every 100 ms meanwhile; prints a table and the verdict.
//! 6. Removes everything it made (unpublish, unstage, delete, cgroups, temp dir), also
//!    after an error, Ctrl-C or SIGTERM (the bench children die with the run; a second
//!    signal during the clean-up is ignored: every clean-up step has a deadline).
//!
//! Exit status: 0 when the priority held (streaming next to batch kept at least
//! [`STREAMING_KEPT`] of its solo rate, batch next to streaming at least its floor less
//! [`FLOOR_SLACK`], batch alone at least [`WORK_CONSERVED`] of the device);
//! [`NOT_HELD`] (3) when everything ran and was removed but the priority did not hold on
//! this machine (the table says where); 1 when a step failed or something was left
//! behind; 2 when a prerequisite is missing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iops_controller::priority::{Topology, topology};
use iops_controller::{DeviceNumber, Enforcement, RealCgroupFs, keys};
use serde::Serialize;

use crate::backend::loopback::LoopBackend;
use crate::bench::{BenchReport, IntervalStats};
use crate::config::{DemoArgs, NodeConfig};
use crate::driver::{Driver, Settings};
use crate::grpc::client::{ClientError, CsiClient};
use crate::os::host::HostFacts;
use crate::os::{Cmd, CommandRunner, Os, Roots, SystemRunner};
use crate::tiering::Tiering;

/// Size of each demo volume (sparse: only the load's span is written).
const VOLUME_BYTES: i64 = 1 << 30;
/// The span of each volume (and of the calibration's scratch file) the load uses, written
/// first: reads of a hole never reach the disk.
const SPAN_BYTES: u64 = 64 << 20;
/// How long the in-process node may take to answer Probe with ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a clean-up call is retried while the volume is busy (ABORTED).
const CLEANUP_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// What a bench child may take beyond its duration (start-up, a slow machine).
const BENCH_SLACK: Duration = Duration::from_secs(120);
/// The exit status when the demo ran and cleaned up but the priority did not hold.
pub const NOT_HELD: u8 = 3;
/// The demo's node ID.
const NODE_ID: &str = "iolane-demo";

/// Everything that failed in the demo, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Os(#[from] crate::os::Error),
    #[error("{0}")]
    Csi(#[from] ClientError),
    #[error("{what}: {reason}")]
    Step { what: String, reason: String },
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
}

fn step(what: impl Into<String>, reason: impl std::fmt::Display) -> DemoError {
    DemoError::Step {
        what: what.into(),
        reason: reason.to_string(),
    }
}

mod cleanup;
mod load;
mod prereq;
mod run;
mod verdict;

pub use prereq::{missing, work_dir_gap, work_dir_missing};
pub use verdict::{
    ControllerView, DemoReport, FLOOR_SLACK, Judgement, RunFigures, RunRow, STREAMING_KEPT,
    WORK_CONSERVED, judge, table,
};

use cleanup::{cleanup, remove_tmp};
use run::run;

// ---- what the demo made, for the clean-up ---------------------------------------------------

#[derive(Debug, Clone)]
struct DemoVolume {
    /// Short name in the output (`streaming`, `batch-1`, ...).
    name: String,
    tier: &'static str,
    csi_name: String,
    id: String,
    pod: String,
    cgroup: PathBuf,
    staging: PathBuf,
    target: PathBuf,
    context: BTreeMap<String, String>,
    device: Option<DeviceNumber>,
}

/// What exists because of the demo; the clean-up undoes it in reverse.
#[derive(Debug, Default)]
struct Made {
    tmp: Option<PathBuf>,
    root_io_enabled: bool,
    parent: Option<PathBuf>,
    pod_cgroups: Vec<PathBuf>,
    /// Volumes whose CreateVolume was sent (IDs are derived from the name, so known first).
    volumes: Vec<DemoVolume>,
    /// The priority controllers' loop, stopped after the clean-up.
    priority: Option<tokio::task::JoinHandle<()>>,
}

// ---- the run --------------------------------------------------------------------------------

/// `iolane demo`. Prints to stdout (it is the command's output) and returns the exit code.
#[allow(clippy::print_stdout)]
pub async fn main(args: DemoArgs) -> ExitCode {
    let os = Os::new(Arc::new(SystemRunner), Roots::default());
    let facts = os.host_facts(&args.cgroup_root);
    let mut gaps = missing(&facts);
    let work_dir = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    gaps.extend(work_dir_missing(&work_dir, &os.roots().sys));
    if !gaps.is_empty() {
        println!("iolane demo cannot run on this machine; nothing was created:");
        for g in &gaps {
            println!("  - {g}");
        }
        return ExitCode::from(2);
    }
    let mut made = Made::default();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server: Option<tokio::task::JoinHandle<_>> = None;
    let outcome = {
        let run = run(&args, &work_dir, &os, &mut made, &mut server, stop_rx);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            s = signal() => Err(DemoError::Interrupted(s)),
        }
    };
    let mut failed = false;
    let report = match outcome {
        Ok(r) => Some(r),
        Err(e) => {
            println!("\niolane demo failed: {e}");
            failed = true;
            None
        }
    };
    println!("\ncleaning up");
    let (problems, lines_left) = cleanup(&os, &mut made, &args.cgroup_root).await;
    let _ = stop_tx.send(());
    if let Some(task) = made.priority.take() {
        task.abort();
    }
    if let Some(task) = server.take() {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => println!("  the node stopped with an error: {e}"),
            Ok(Err(e)) => println!("  the node task failed: {e}"),
            Err(_) => println!("  the node did not stop within 10s"),
        }
    }
    if let Some(tmp) = made.tmp.take() {
        remove_tmp(&os, &tmp);
    }
    for p in &problems {
        println!("  left behind: {p}");
    }
    if problems.is_empty() {
        println!("  removed everything the demo made");
    }
    let Some(mut report) = report else {
        return ExitCode::FAILURE;
    };
    report.lines_after_unpublish = lines_left;
    if !report.lines_after_unpublish.is_empty() {
        println!(
            "  io.max lines left after unpublish: {:?}",
            report.lines_after_unpublish
        );
        failed = true;
    }
    if let Some(path) = &args.json {
        match serde_json::to_vec_pretty(&report) {
            Ok(bytes) => match std::fs::write(path, bytes) {
                Ok(()) => println!("wrote {}", path.display()),
                Err(e) => {
                    println!("writing {}: {e}", path.display());
                    failed = true;
                }
            },
            Err(e) => {
                println!("encoding the report: {e}");
                failed = true;
            }
        }
    }
    if failed || !problems.is_empty() {
        ExitCode::FAILURE
    } else if !report.judgement.held {
        ExitCode::from(NOT_HELD)
    } else {
        ExitCode::SUCCESS
    }
}

/// Waits for SIGINT or SIGTERM; returns its name.
async fn signal() -> &'static str {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    match term {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

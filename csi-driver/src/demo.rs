//! `iolane demo`: iolane's main job on its embedded default, end to end on this machine.
//!
//! 1. Checks the prerequisites (root, cgroup v2 with the io controller at the cgroup
//!    root, loop devices, io_uring) and stops with exit code 2, creating nothing, when one
//!    is missing, saying what is missing and what would be needed.
//! 2. Serves the node's own CSI services in-process on the loop backend (state under a
//!    temp dir), on a Unix socket there, and talks to them only through that socket with the
//!    generated tonic clients ([`crate::grpc::client`]).
//! 3. Stands in for kubelet: a parent cgroup whose name mentions `kubepods` (with `+io` in
//!    its `cgroup.subtree_control`) and one `pod<uid>` cgroup per pod; then, for a
//!    `streaming` and a `batch` volume (StorageClass parameter `iolane.dev/tier`),
//!    CreateVolume, NodeStage and NodePublish (raw block) with the pod UID in
//!    `volume_context`, so the driver writes the pod's `io.max` at publish.
//! 4. Shows the `io.max` line the driver wrote for each volume, runs `iolane bench`
//!    (random 4 KiB O_DIRECT reads) on the streaming volume alone, then on both at once, one
//!    child process per pod cgroup (a bench moves its whole process into the cgroup), and
//!    prints what each achieved against its limit.
//! 5. Removes everything it made (unpublish, unstage, delete, cgroups, temp dir), also
//!    after an error, Ctrl-C or SIGTERM (the bench children die with the run; a second
//!    signal during the clean-up is ignored: every clean-up step has a deadline).
//!
//! Exit status: 0 when the tiers held (batch at most its limit within [`TOLERANCE`], and
//! streaming uncapped and faster than the batch limit), 1 when they did not or anything
//! failed, 2 when a prerequisite is missing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iops_controller::loadgen::BenchReport;
use iops_controller::{DeviceNumber, IoMax, Limit, Limits, RealCgroupFs, TierSet, keys};
use serde::Serialize;

use crate::backend::loopback::LoopBackend;
use crate::config::{DemoArgs, NodeConfig};
use crate::driver::{Driver, Settings};
use crate::enforce::Enforcer;
use crate::grpc::client::{ClientError, CsiClient};
use crate::os::host::HostFacts;
use crate::os::{Cmd, CommandRunner, Os, Roots, SystemRunner};
use crate::tiering::Tiering;

/// How far above its limit the batch volume may go and still count as held (the kernel's
/// throttle lets a short burst through at the start of each slice).
pub const TOLERANCE: f64 = 0.05;
/// Size of each demo volume (sparse: it costs no space until written).
const VOLUME_BYTES: i64 = 1 << 30;
/// How long the in-process node may take to answer Probe with ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a clean-up call is retried while the volume is busy (ABORTED).
const CLEANUP_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// What a bench child may take beyond its duration (start-up, a slow machine).
const BENCH_SLACK: Duration = Duration::from_secs(120);
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

// ---- prerequisites ----------------------------------------------------------------------

/// What is missing on this host for the demo, each with what would be needed; empty when
/// nothing is.
pub fn missing(f: &HostFacts) -> Vec<String> {
    let mut out = Vec::new();
    if !f.root {
        out.push(
            "not running as root: the demo attaches loop devices, mounts volumes and creates \
             cgroups (run it as root)"
                .to_owned(),
        );
    }
    let root = f.cgroup_root.display();
    let blkio = if f.blkio_on_v1 {
        "; the io controller is bound to the cgroup v1 `blkio` hierarchy (/proc/cgroups), \
         and a controller can be in only one hierarchy"
    } else {
        ""
    };
    match &f.root_controllers {
        None => {
            let mut m = format!("no cgroup v2 hierarchy at {root} (it has no cgroup.controllers)");
            for (at, controllers) in &f.other_v2_mounts {
                let _ = write!(
                    m,
                    "; cgroup v2 is mounted at {} with controllers [{}] (a hybrid v1/v2 host)",
                    at.display(),
                    controllers.join(" ")
                );
            }
            m.push_str(blkio);
            m.push_str(
                "; needed: cgroup v2 with the io controller, i.e. a host booted with the unified \
                 hierarchy (systemd.unified_cgroup_hierarchy=1, no v1 blkio mount), or \
                 --cgroup-root naming a cgroup v2 mount whose cgroup.controllers lists io",
            );
            out.push(m);
        }
        Some(c) if !c.iter().any(|c| c == "io") => out.push(format!(
            "the cgroup v2 hierarchy at {root} has no io controller (cgroup.controllers: [{}]){blkio}; \
             needed: the io controller in cgroup v2, which writes io.max (a unified-hierarchy \
             host with no v1 blkio mount)",
            c.join(" ")
        )),
        Some(_) => {}
    }
    if !f.loop_control {
        out.push(
            "no /dev/loop-control: the loop driver is not loaded (needed for the loop backend: \
             modprobe loop)"
                .to_owned(),
        );
    }
    if f.io_uring_disabled == Some(2) {
        out.push(
            "io_uring is disabled (kernel.io_uring_disabled = 2); the load generator needs it \
             (sysctl kernel.io_uring_disabled=0)"
                .to_owned(),
        );
    }
    out
}

// ---- results ------------------------------------------------------------------------------

/// One bench run's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunFigures {
    pub iops: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl From<&BenchReport> for RunFigures {
    fn from(r: &BenchReport) -> Self {
        RunFigures {
            iops: r.mean_iops,
            p50_us: r.latency.p50_us,
            p99_us: r.latency.p99_us,
        }
    }
}

/// One volume's row of the result table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeRow {
    pub name: String,
    pub volume_id: String,
    pub tier: String,
    pub device: String,
    pub pod_uid: String,
    pub cgroup: PathBuf,
    /// The `io.max` line for the volume's device after publish; `None` when the pod's
    /// `io.max` has none (no cap).
    pub io_max_line: Option<String>,
    /// The read IOPS cap in that line (`None` = `max`): the load is random reads.
    pub limit_iops: Option<u64>,
    pub alone: Option<RunFigures>,
    pub together: RunFigures,
    /// `together.iops / limit_iops`.
    pub ratio: Option<f64>,
}

/// The whole result, also written as JSON with `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoReport {
    pub duration_secs: u64,
    pub tolerance: f64,
    pub volumes: Vec<VolumeRow>,
    pub batch_held: bool,
    pub streaming_uncapped: bool,
    pub tiers_held: bool,
    pub verdict: String,
    /// `io.max` lines left for the demo's devices after unpublish (should be none).
    pub lines_after_unpublish: Vec<String>,
}

/// Whether the tiers held, and the sentence that says so.
pub fn judge(streaming: &VolumeRow, batch: &VolumeRow) -> (bool, bool, String) {
    let Some(limit) = batch.limit_iops else {
        return (
            false,
            false,
            format!(
                "tiers did NOT hold: the batch volume's pod has no read IOPS cap in io.max ({})",
                batch.io_max_line.as_deref().unwrap_or("no line")
            ),
        );
    };
    let limit = limit as f64;
    let batch_held = batch.together.iops <= limit * (1.0 + TOLERANCE);
    let uncapped_line = streaming.limit_iops.is_none();
    let above = streaming.together.iops > limit * (1.0 + TOLERANCE);
    let alone = streaming.alone.map_or(0.0, |a| a.iops);
    let streaming_uncapped = uncapped_line && above;
    let mut v = String::new();
    let _ = write!(
        v,
        "batch: {:.0} IOPS for a limit of {limit:.0} ({:.2}x, {} {:.0}%); ",
        batch.together.iops,
        batch.together.iops / limit,
        if batch_held {
            "held within"
        } else {
            "ABOVE the limit by more than"
        },
        TOLERANCE * 100.0
    );
    if !uncapped_line {
        let _ = write!(
            v,
            "streaming: CAPPED by io.max ({}); ",
            streaming.io_max_line.as_deref().unwrap_or("")
        );
    } else if above {
        let _ = write!(
            v,
            "streaming: uncapped, {:.0} IOPS next to batch ({:.0} alone, {:.1}x the batch limit); ",
            streaming.together.iops,
            alone,
            streaming.together.iops / limit
        );
    } else {
        let _ = write!(
            v,
            "streaming: no cap in io.max, but {:.0} IOPS ({:.0} alone) is not above the batch \
             limit, so this machine cannot show the difference (try --batch-iops {:.0}); ",
            streaming.together.iops,
            alone,
            (alone / 4.0).max(1.0)
        );
    }
    let held = batch_held && streaming_uncapped;
    v.push_str(if held {
        "the tiers held"
    } else {
        "the tiers did NOT hold"
    });
    (batch_held, streaming_uncapped, v)
}

fn us(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}ms", v / 1000.0)
    } else {
        format!("{v:.0}us")
    }
}

/// The result table, one row per volume.
pub fn table(rows: &[VolumeRow]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<10} {:<10} {:>12} {:>10} {:>10} {:>12} {:>17} {:>17}",
        "volume",
        "tier",
        "limit (IOPS)",
        "alone",
        "together",
        "together/lim",
        "p50/p99 alone",
        "p50/p99 together"
    );
    for r in rows {
        let dash = || "-".to_owned();
        let _ = writeln!(
            t,
            "{:<10} {:<10} {:>12} {:>10} {:>10.0} {:>12} {:>17} {:>17}",
            r.name,
            r.tier,
            r.limit_iops
                .map_or_else(|| "max".to_owned(), |l| l.to_string()),
            r.alone.map_or_else(dash, |a| format!("{:.0}", a.iops)),
            r.together.iops,
            r.ratio.map_or_else(dash, |x| format!("{x:.3}")),
            r.alone
                .map_or_else(dash, |a| format!("{}/{}", us(a.p50_us), us(a.p99_us))),
            format!("{}/{}", us(r.together.p50_us), us(r.together.p99_us)),
        );
    }
    t
}

// ---- what the demo made, for the clean-up ---------------------------------------------------

#[derive(Debug, Clone)]
struct DemoVolume {
    /// Short name in the table (`streaming`, `batch`).
    name: &'static str,
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
}

// ---- the run --------------------------------------------------------------------------------

/// `iolane demo`. Prints to stdout (it is the command's output) and returns the exit code.
#[allow(clippy::print_stdout)]
pub async fn main(args: DemoArgs) -> ExitCode {
    let os = Os::new(Arc::new(SystemRunner), Roots::default());
    let facts = os.host_facts(&args.cgroup_root);
    let gaps = missing(&facts);
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
        let run = run(&args, &os, &mut made, &mut server, stop_rx);
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
    if failed || !report.tiers_held || !problems.is_empty() {
        ExitCode::FAILURE
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

/// The node's tiers: the built-ins, or batch replaced by `--batch-iops` through a node
/// config (the same `[tiers.batch]` table a ConfigMap would carry).
fn tiers(batch_iops: Option<u64>) -> Result<(TierSet, Option<String>), DemoError> {
    let Some(n) = batch_iops else {
        return Ok((TierSet::builtin(), None));
    };
    let builtin = TierSet::builtin();
    let bps = builtin
        .get(keys::BATCH)
        .map(|t| t.limits_for(VOLUME_BYTES as u64))
        .unwrap_or(Limits::UNLIMITED);
    let text = format!(
        "[tiers.batch]\npriority = \"batch\"\nread_iops = {n}\nwrite_iops = {n}\nread_bps = {}\nwrite_bps = {}\n",
        quoted(bps.read_bps),
        quoted(bps.write_bps)
    );
    let cfg = NodeConfig::parse(&text).map_err(|e| step("--batch-iops", e))?;
    let set = cfg.tier_set().map_err(|e| step("--batch-iops", e))?;
    Ok((set, Some(text)))
}

fn quoted(l: Limit) -> String {
    match l.get() {
        Some(v) => v.to_string(),
        None => "\"max\"".to_owned(),
    }
}

#[allow(clippy::print_stdout)]
async fn run(
    args: &DemoArgs,
    os: &Os,
    made: &mut Made,
    server: &mut Option<tokio::task::JoinHandle<Result<(), crate::server::ServeError>>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<DemoReport, DemoError> {
    let (tier_set, config_text) = tiers(args.batch_iops)?;
    let tmp = os.make_temp_dir("iolane-demo.")?;
    made.tmp = Some(tmp.clone());
    println!("iolane demo: working in {}", tmp.display());
    if let Some(text) = &config_text {
        println!("node config (--batch-iops):\n{}", indent(text));
    }

    // The node, in-process, on the loop backend, serving on a socket in the temp dir.
    let socket = tmp.join("csi.sock");
    let backend = LoopBackend::open(
        os.clone(),
        tmp.join("state/loop"),
        NodeConfig::default().loopback.overprovision_ratio,
    )
    .map_err(|e| step("opening the loop backend", e))?;
    let driver = Driver::new(
        Arc::new(backend),
        os.clone(),
        Settings {
            node_id: NODE_ID.to_owned(),
            path_root: Some(tmp.clone()),
            max_volumes_per_node: 0,
        },
        Tiering::new(
            tier_set,
            None,
            Enforcer::new(args.cgroup_root.clone(), Arc::new(RealCgroupFs)),
        ),
    );
    let sock = socket.clone();
    *server = Some(tokio::spawn(async move {
        crate::server::serve_until(driver, "csi.iolane.dev", &sock, async {
            let _ = stop.await;
        })
        .await
    }));
    let mut client = connect_ready(&socket).await?;
    println!("node serving CSI on unix://{}", socket.display());

    // The pods' cgroups, as kubelet (cgroupfs driver) would lay them out.
    let root = &args.cgroup_root;
    if !os.subtree_has(root, "io")? {
        os.subtree_control(root, "+io")?;
        made.root_io_enabled = true;
        println!("enabled +io in {}/cgroup.subtree_control", root.display());
    }
    let parent = root.join(format!("iolane-demo-kubepods-{}", std::process::id()));
    os.make_cgroup(&parent)?;
    made.parent = Some(parent.clone());
    os.subtree_control(&parent, "+io")?;

    for (name, tier) in [("streaming", keys::STREAMING), ("batch", keys::BATCH)] {
        let pod = os.random_uuid()?;
        let cgroup = parent.join(format!("pod{pod}"));
        os.make_cgroup(&cgroup)?;
        made.pod_cgroups.push(cgroup.clone());
        let csi_name = format!("iolane-demo-{}-{name}", std::process::id());
        let staging = tmp.join("staging").join(name);
        let target = tmp
            .join("kubelet/plugins/kubernetes.io/csi/volumeDevices/publish")
            .join(&csi_name)
            .join(&pod);
        made.volumes.push(DemoVolume {
            name,
            tier,
            id: crate::volume::volume_id_for(&csi_name),
            csi_name,
            pod,
            cgroup,
            staging,
            target,
            context: BTreeMap::new(),
            device: None,
        });
    }
    for v in &mut made.volumes {
        let params = BTreeMap::from([(keys::TIER.to_owned(), v.tier.to_owned())]);
        let created = client
            .create_block_volume(&v.csi_name, VOLUME_BYTES, &params)
            .await?;
        if created.id != v.id {
            return Err(step(
                "CreateVolume",
                format!(
                    "returned ID {} for {}, expected {}",
                    created.id, v.csi_name, v.id
                ),
            ));
        }
        v.context = created.context;
        println!(
            "created {} volume {} ({} MiB, StorageClass parameter {}={}; volume_context tier {})",
            v.name,
            v.id,
            created.capacity_bytes >> 20,
            keys::TIER,
            v.tier,
            v.context.get(keys::TIER).map_or("-", String::as_str)
        );
        std::fs::create_dir_all(&v.staging)
            .map_err(|e| crate::os::Error::io("create staging dir", &v.staging, e))?;
        client.stage_block(&v.id, &v.staging, &v.context).await?;
        if let Some(dir) = v.target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::os::Error::io("create target dir", dir, e))?;
        }
        let mut context = v.context.clone();
        context.insert(keys::POD_UID.to_owned(), v.pod.clone());
        client
            .publish_block(&v.id, &v.staging, &v.target, &context)
            .await?;
        v.device = Some(os.device_number(&v.target)?);
        println!(
            "  staged and published at {} for pod {} (cgroup {})",
            v.target.display(),
            v.pod,
            v.cgroup.display()
        );
    }

    // What the driver wrote.
    println!("\nio.max after NodePublishVolume (as the kernel shows it):");
    let mut lines = Vec::new();
    for v in &made.volumes {
        let dev = v
            .device
            .ok_or_else(|| step("publish", "no device number"))?;
        let text = os.read_io_max(&v.cgroup)?;
        let line = line_for(&text, dev);
        let limits = IoMax::parse(&text)
            .map_err(|e| step(format!("parsing {}/io.max", v.cgroup.display()), e))?
            .limits(dev);
        println!(
            "  {:<10} {}/io.max: {}",
            v.name,
            v.cgroup.display(),
            line.as_deref()
                .map_or_else(|| format!("no line for {dev} (uncapped)"), str::to_owned)
        );
        lines.push((line, limits.read_iops.get()));
    }

    // The load.
    let exe = std::env::current_exe().map_err(|e| step("finding the iolane binary", e))?;
    let exe = exe.to_string_lossy().into_owned();
    let secs = args.duration;
    println!("\nrandom 4 KiB O_DIRECT reads, queue depth 32, {secs}s per run");
    println!("  run 1: streaming alone");
    let streaming = &made.volumes[0];
    let batch = &made.volumes[1];
    let bench_dir = tmp.join("bench");
    std::fs::create_dir_all(&bench_dir)
        .map_err(|e| crate::os::Error::io("create", &bench_dir, e))?;
    let alone = bench(
        &exe,
        streaming,
        &bench_dir.join("streaming-alone.json"),
        secs,
    )
    .await?;
    println!("  run 2: streaming and batch at once");
    let (s_json, b_json) = (
        bench_dir.join("streaming-together.json"),
        bench_dir.join("batch-together.json"),
    );
    let (s_tog, b_tog) = tokio::try_join!(
        bench(&exe, streaming, &s_json, secs),
        bench(&exe, batch, &b_json, secs),
    )?;

    let row = |v: &DemoVolume,
               line: &(Option<String>, Option<u64>),
               alone: Option<&BenchReport>,
               tog: &BenchReport| {
        let together = RunFigures::from(tog);
        VolumeRow {
            name: v.name.to_owned(),
            volume_id: v.id.clone(),
            tier: v.tier.to_owned(),
            device: v.device.map(|d| d.to_string()).unwrap_or_default(),
            pod_uid: v.pod.clone(),
            cgroup: v.cgroup.clone(),
            io_max_line: line.0.clone(),
            limit_iops: line.1,
            alone: alone.map(RunFigures::from),
            together,
            ratio: line.1.map(|l| together.iops / l as f64),
        }
    };
    let rows = vec![
        row(streaming, &lines[0], Some(&alone), &s_tog),
        row(batch, &lines[1], None, &b_tog),
    ];
    let (batch_held, streaming_uncapped, verdict) = judge(&rows[0], &rows[1]);
    println!("\n{}", table(&rows));
    println!("{verdict}");
    Ok(DemoReport {
        duration_secs: secs,
        tolerance: TOLERANCE,
        volumes: rows,
        batch_held,
        streaming_uncapped,
        tiers_held: batch_held && streaming_uncapped,
        verdict,
        lines_after_unpublish: Vec::new(),
    })
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `io.max` line of `dev` in `text`, if any.
fn line_for(text: &str, dev: DeviceNumber) -> Option<String> {
    let prefix = format!("{dev} ");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .map(str::to_owned)
}

async fn connect_ready(socket: &Path) -> Result<CsiClient, DemoError> {
    let end = Instant::now() + READY_DEADLINE;
    loop {
        let last = match CsiClient::connect(socket).await {
            Ok(mut c) => match c.ready().await {
                Ok(true) => return Ok(c),
                Ok(false) => "Probe answered not ready".to_owned(),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() > end {
            return Err(step(
                format!("starting the node on {}", socket.display()),
                format!("not ready within {READY_DEADLINE:?}: {last}"),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `iolane bench` on `v`'s published device inside its pod's cgroup, as a child
/// process (the bench moves its whole process into the cgroup), and reads its JSON report.
async fn bench(
    exe: &str,
    v: &DemoVolume,
    json: &Path,
    secs: u64,
) -> Result<BenchReport, DemoError> {
    let cmd = Cmd::program_path(exe.to_owned(), Duration::from_secs(secs) + BENCH_SLACK)
        .arg("--log")
        .arg("warn")
        .arg("bench")
        .arg("--target")
        .arg(&v.target)
        .arg("--pattern")
        .arg("randread")
        .arg("--duration")
        .arg(secs.to_string())
        .arg("--cgroup")
        .arg(&v.cgroup)
        .arg("--json")
        .arg(json);
    let out = SystemRunner.run(&cmd).await?;
    if out.status != Some(0) {
        return Err(out.into_error(&cmd).into());
    }
    let text = std::fs::read_to_string(json).map_err(|e| crate::os::Error::io("read", json, e))?;
    serde_json::from_str(&text).map_err(|e| step(format!("reading {}", json.display()), e))
}

/// Retries `call` while it answers ABORTED (a call on the volume still running), up to
/// [`CLEANUP_DEADLINE`].
async fn retry<F, Fut>(mut call: F) -> Result<(), ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let end = Instant::now() + CLEANUP_DEADLINE;
    loop {
        match call().await {
            Err(e) if e.code() == Some(tonic::Code::Aborted) && Instant::now() < end => {
                tokio::time::sleep(POLL).await;
            }
            other => return other,
        }
    }
}

/// Undoes what `made` records, in reverse; returns what could not be undone and the
/// `io.max` lines still present for the demo's devices after unpublish.
#[allow(clippy::print_stdout)]
async fn cleanup(os: &Os, made: &mut Made, cgroup_root: &Path) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut lines_left = Vec::new();
    if let Some(tmp) = &made.tmp
        && !made.volumes.is_empty()
    {
        match CsiClient::connect(&tmp.join("csi.sock")).await {
            Ok(client) => {
                for v in made.volumes.iter().rev() {
                    let c = client.clone();
                    if let Err(e) = retry(|| {
                        let mut c = c.clone();
                        let (id, t) = (v.id.clone(), v.target.clone());
                        async move { c.unpublish(&id, &t).await }
                    })
                    .await
                    {
                        problems.push(format!("unpublish {}: {e}", v.id));
                    } else {
                        println!("  unpublished {}", v.id);
                    }
                    if let (Some(dev), Ok(text)) = (v.device, os.read_io_max(&v.cgroup)) {
                        let line = line_for(&text, dev);
                        println!(
                            "    {}/io.max now: {}",
                            v.cgroup.display(),
                            line.as_deref().unwrap_or("no line for the device (max)")
                        );
                        lines_left.extend(line);
                    }
                    for (what, r) in [
                        (
                            "unstage",
                            retry(|| {
                                let mut c = c.clone();
                                let (id, s) = (v.id.clone(), v.staging.clone());
                                async move { c.unstage(&id, &s).await }
                            })
                            .await,
                        ),
                        (
                            "delete",
                            retry(|| {
                                let mut c = c.clone();
                                let id = v.id.clone();
                                async move { c.delete(&id).await }
                            })
                            .await,
                        ),
                    ] {
                        match r {
                            Ok(()) => println!("  {what}d {}", v.id),
                            Err(e) => problems.push(format!("{what} {}: {e}", v.id)),
                        }
                    }
                }
            }
            Err(e) => problems.push(format!("volumes {:?}: {e}", ids(&made.volumes))),
        }
    }
    for cg in made.pod_cgroups.drain(..).rev() {
        match os.remove_cgroup(&cg).await {
            Ok(()) => println!("  removed cgroup {}", cg.display()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(parent) = made.parent.take() {
        match os.remove_cgroup(&parent).await {
            Ok(()) => println!("  removed cgroup {}", parent.display()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if made.root_io_enabled {
        // Other cgroups may use io by now; then it stays (the kernel refuses with EBUSY).
        match os.subtree_control(cgroup_root, "-io") {
            Ok(()) => println!(
                "  disabled io again in {}/cgroup.subtree_control",
                cgroup_root.display()
            ),
            Err(e) => println!("  left io enabled at the cgroup root: {e}"),
        }
    }
    (problems, lines_left)
}

fn ids(v: &[DemoVolume]) -> Vec<&str> {
    v.iter().map(|v| v.id.as_str()).collect()
}

/// Removes the temp dir unless something is still mounted under it.
#[allow(clippy::print_stdout)]
fn remove_tmp(os: &Os, tmp: &Path) {
    let mounted: Vec<PathBuf> = os
        .mounts()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(tmp))
        .collect();
    if !mounted.is_empty() {
        println!(
            "  left {} in place: still mounted under it: {mounted:?}",
            tmp.display()
        );
        return;
    }
    match os.remove_temp_dir(tmp) {
        Ok(()) => println!("  removed {}", tmp.display()),
        Err(e) => println!("  {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            root: true,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            root_controllers: Some(vec!["cpu".into(), "io".into(), "memory".into()]),
            other_v2_mounts: Vec::new(),
            blkio_on_v1: false,
            loop_control: true,
            io_uring_disabled: Some(0),
        }
    }

    #[test]
    fn a_complete_host_misses_nothing() {
        assert!(missing(&facts()).is_empty());
    }

    #[test]
    fn each_missing_prerequisite_is_named_with_what_is_needed() {
        // This repository's CI host: hybrid cgroups, io bound to v1 blkio.
        let hybrid = HostFacts {
            root_controllers: None,
            other_v2_mounts: vec![(PathBuf::from("/sys/fs/cgroup/unified"), vec![])],
            blkio_on_v1: true,
            ..facts()
        };
        let m = missing(&hybrid);
        assert_eq!(m.len(), 1, "{m:?}");
        for part in [
            "no cgroup v2 hierarchy at /sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "blkio",
            "needed:",
        ] {
            assert!(m[0].contains(part), "{part}: {}", m[0]);
        }
        let no_io = HostFacts {
            root_controllers: Some(vec!["cpu".into(), "memory".into()]),
            ..facts()
        };
        let m = missing(&no_io);
        assert!(
            m[0].contains("has no io controller") && m[0].contains("[cpu memory]"),
            "{m:?}"
        );
        let m = missing(&HostFacts {
            root: false,
            loop_control: false,
            io_uring_disabled: Some(2),
            ..facts()
        });
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains("root") && m[1].contains("loop") && m[2].contains("io_uring"));
    }

    fn row(tier: &str, limit: Option<u64>, alone: Option<f64>, together: f64) -> VolumeRow {
        let f = |iops| RunFigures {
            iops,
            p50_us: 100.0,
            p99_us: 25_000.0,
        };
        VolumeRow {
            name: tier.to_owned(),
            volume_id: "iol-x".to_owned(),
            tier: tier.to_owned(),
            device: "7:0".to_owned(),
            pod_uid: "u".to_owned(),
            cgroup: PathBuf::from("/c"),
            io_max_line: limit.map(|l| format!("7:0 rbps=max wbps=max riops={l} wiops={l}")),
            limit_iops: limit,
            alone: alone.map(f),
            together: f(together),
            ratio: limit.map(|l| together / l as f64),
        }
    }

    #[test]
    fn judging_the_tiers() {
        let s = row("streaming", None, Some(3400.0), 3000.0);
        let (b, u, v) = judge(&s, &row("batch", Some(200), None, 199.0));
        assert!(b && u, "{v}");
        assert!(v.ends_with("the tiers held"), "{v}");
        // Batch above its limit beyond the tolerance.
        let (b, _, v) = judge(&s, &row("batch", Some(200), None, 260.0));
        assert!(!b && v.contains("ABOVE"), "{v}");
        // Streaming capped in io.max.
        let capped = row("streaming", Some(200), Some(200.0), 200.0);
        let (_, u, v) = judge(&capped, &row("batch", Some(200), None, 199.0));
        assert!(!u && v.contains("CAPPED"), "{v}");
        // A machine too slow to go above the batch limit at all.
        let slow = row("streaming", None, Some(150.0), 120.0);
        let (b, u, v) = judge(&slow, &row("batch", Some(2000), None, 100.0));
        assert!(b && !u && v.contains("--batch-iops"), "{v}");
        // No cap written for batch.
        let (b, _, v) = judge(&s, &row("batch", None, None, 3000.0));
        assert!(!b && v.contains("no read IOPS cap"), "{v}");
    }

    #[test]
    fn the_table_has_a_row_per_volume() {
        let t = table(&[
            row("streaming", None, Some(3400.0), 3012.4),
            row("batch", Some(200), None, 198.6),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].contains("max") && lines[1].contains("3400") && lines[1].contains("3012"));
        assert!(
            lines[2].contains("200") && lines[2].contains("0.993") && lines[2].contains("25.0ms")
        );
    }

    #[test]
    fn batch_iops_makes_a_node_config() {
        let (set, text) = tiers(Some(300)).unwrap();
        let l = set.get(keys::BATCH).unwrap().limits_for(1 << 30);
        assert_eq!(
            (l.read_iops.get(), l.write_iops.get()),
            (Some(300), Some(300))
        );
        assert_eq!(
            l.read_bps,
            TierSet::builtin()
                .get(keys::BATCH)
                .unwrap()
                .limits_for(1 << 30)
                .read_bps
        );
        assert!(text.unwrap().starts_with("[tiers.batch]"));
        assert!(tiers(None).unwrap().1.is_none());
        assert!(tiers(Some(0)).is_err());
    }

    #[test]
    fn io_max_line_of_a_device() {
        let text =
            "7:1 rbps=max wbps=max riops=200 wiops=200\n7:10 rbps=1 wbps=max riops=max wiops=max\n";
        let d = |minor| DeviceNumber { major: 7, minor };
        assert_eq!(
            line_for(text, d(1)).unwrap(),
            "7:1 rbps=max wbps=max riops=200 wiops=200"
        );
        assert!(line_for(text, d(10)).unwrap().starts_with("7:10 "));
        assert_eq!(line_for(text, d(2)), None);
    }
}

//! The runtime benchmark (issue 12, item 3): a node with 500 publications keeps answering
//! while it works. Against the real `iolane node` on the loop backend, over its Unix
//! socket, with real loop devices, ext4 filesystems and bind mounts:
//!
//! 1. 25 ext4 volumes of the capped `batch` tier are created and staged, and each is
//!    published to 20 pods (kubelet-shaped target paths, one pod cgroup each in a tempdir
//!    cgroup root like the `tiers::host` tests use): 500 publications, each with its
//!    `io.max` line written. The reconciler runs a pass over them every second.
//! 2. For [`MEASURE`] (`IOLANE_BENCH_RUNTIME_SECS`, default 15 s), 8 clients run CreateVolume
//!    back to back (sparse image, `set_len`, fsyncs) while one client calls Probe and one
//!    NodeGetVolumeStats (on the published targets in turn), each every 20 ms, and one
//!    publishes a volume to a new pod and unpublishes it again, over and over.
//!
//! It prints one line, `bench runtime: ...`, with each call's p50/p99/max and count, then
//! the verdict against the goals: Probe and NodeGetVolumeStats p99 under 50 ms, NodePublish
//! p99 under 100 ms (the CI build is a debug build). A missed goal fails the test, except
//! with `IOLANE_RUNTIME_GOALS=report`, where the verdict line says so and the test passes:
//! `tests/run.sh` runs it that way, on its own, with `--nocapture`, so the lines are in
//! CI's output. A wrong or missing answer fails it always.
//!
//! 500 publications are 25 volumes published to 20 pods each, not 500 volumes: what the
//! node's calls and its reconciler walk is the publications (mounts, pod cgroups, `io.max`
//! lines), and 500 loop devices would measure the host's loop driver and the set-up time
//! instead. A call answered ABORTED (another call on its volume in flight, e.g. the
//! reconciler adopting a mount) is retried as kubelet does, its latency counting the
//! retries; how many were is printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use iolane_tests::csi;
use iolane_tests::csi::controller_client::ControllerClient;
use iolane_tests::csi::identity_client::IdentityClient;
use iolane_tests::csi::node_client::NodeClient;
use iolane_tests::{
    Driver, MIB, Options, cleanup, connect, create_request, is_lvm, mount_cap, note, ok, poll,
    publish_request, require_root, skip, stage_request, unpublish_request,
};
use tokio::task::JoinHandle;

/// Volumes staged for the benchmark.
const VOLUMES: usize = 25;
/// Pods each of them is published to: `VOLUMES * PODS_PER_VOLUME` publications.
const PODS_PER_VOLUME: usize = 20;
/// Clients running CreateVolume side by side during the measurement.
const CREATORS: usize = 8;
/// How often the Probe and NodeGetVolumeStats clients call.
const PACE: Duration = Duration::from_millis(20);
/// The goals, in milliseconds (p99).
const PROBE_GOAL_MS: f64 = 50.0;
const STATS_GOAL_MS: f64 = 50.0;
const PUBLISH_GOAL_MS: f64 = 100.0;
/// Clients publishing the 500 in the set-up, side by side (each its own volumes: the
/// driver refuses two calls on one volume at once).
const SETUP_CLIENTS: usize = 5;
/// The capped `batch` tier, with the priority controllers off: every line is then exactly
/// the tier's cap (`riops=200`), which the set-up waits for (with them on, a batch line is
/// the device's dynamic share under the cap).
const TIERS: &str = "[priority]\nenabled = false\n\n[tiers.batch]\npriority = \"batch\"\nread_iops = 200\nwrite_iops = 200\nread_bps = \"max\"\nwrite_bps = \"max\"\n";
const TIER_KEY: &str = "iolane.dev/tier";

/// How long a call answered ABORTED (another call on its volume in flight) is retried,
/// and the pause between attempts.
const RETRY_DEADLINE: Duration = Duration::from_secs(30);
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Calls answered ABORTED and retried, as kubelet does; printed with the figures (a
/// retried call's latency includes its retries).
static ABORTED: AtomicUsize = AtomicUsize::new(0);

/// The reply of `$call`, retried while it answers ABORTED (within [`RETRY_DEADLINE`]);
/// anything else but OK fails the test.
macro_rules! retry_aborted {
    ($what:expr, $call:expr) => {{
        let end = Instant::now() + RETRY_DEADLINE;
        loop {
            match $call.await {
                Err(s) if s.code() == tonic::Code::Aborted && Instant::now() < end => {
                    ABORTED.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                r => break ok(r, $what),
            }
        }
    }};
}

/// Seconds of measurement: `IOLANE_BENCH_RUNTIME_SECS`, default 15.
fn measure() -> Duration {
    let secs = std::env::var("IOLANE_BENCH_RUNTIME_SECS")
        .ok()
        .map_or(15, |v| {
            v.parse().expect("IOLANE_BENCH_RUNTIME_SECS is seconds")
        });
    Duration::from_secs(secs)
}

/// One staged volume.
#[derive(Debug, Clone)]
struct Vol {
    id: String,
    staging: String,
}

/// One publication: where, and the pod cgroup its caps go to.
#[derive(Debug, Clone)]
struct Publication {
    volume: usize,
    target: String,
    cgroup: PathBuf,
}

/// Latencies of one kind of call.
#[derive(Debug, Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn ms(&mut self, q: f64) -> f64 {
        self.0.sort_unstable();
        if self.0.is_empty() {
            return f64::NAN;
        }
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1].as_secs_f64() * 1000.0
    }

    /// `name p50 A p99 B max C ms (n=N)`.
    fn line(&mut self, name: &str) -> String {
        format!(
            "{name} p50 {:.1} p99 {:.1} max {:.1} ms (n={})",
            self.ms(0.5),
            self.ms(0.99),
            self.ms(1.0),
            self.0.len()
        )
    }
}

fn uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read a random UUID")
        .trim()
        .to_owned()
}

async fn node(d: &Driver) -> NodeClient<tonic::transport::Channel> {
    NodeClient::new(connect(&d.socket()).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_runtime_stays_responsive_with_500_publications_and_8_creators() {
    require_root!();
    if is_lvm() {
        skip("the runtime benchmark is of the loop backend");
        return;
    }
    let cg = tempfile::tempdir().expect("tempdir");
    let cg_root = cg.path().canonicalize().expect("canonicalize");
    let mut d = Driver::start_with(Options {
        args: vec![
            "--cgroup-root".into(),
            cg_root.display().to_string(),
            "--reconcile-period".into(),
            "1".into(),
        ],
        config: Some(TIERS.to_owned()),
        ..Options::default()
    })
    .await;
    let cap = mount_cap("ext4");
    let setup = Instant::now();

    // 1. The volumes, staged, and 500 publications.
    let mut vols = Vec::with_capacity(VOLUMES);
    for i in 0..VOLUMES {
        let name = format!("bench-vol-{i}");
        let mut req = create_request(&name, vec![cap.clone()], 64 * MIB, 0);
        req.parameters.insert(TIER_KEY.into(), "batch".into());
        let mut controller = d.controller.clone();
        let v = ok(controller.create_volume(req).await, "CreateVolume")
            .volume
            .expect("volume");
        let staging = d.make_staging(&name);
        vols.push(Vol {
            id: v.volume_id,
            staging,
        });
    }
    let vols = Arc::new(vols);
    let mut pubs = Vec::with_capacity(VOLUMES * PODS_PER_VOLUME);
    for v in 0..vols.len() {
        for _ in 0..PODS_PER_VOLUME {
            let (target, cgroup) = new_pod(&cg_root, d.root(), &format!("pv-bench-{v}"));
            pubs.push(Publication {
                volume: v,
                target,
                cgroup,
            });
        }
    }
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for w in 0..SETUP_CLIENTS {
        let mut client = node(&d).await;
        let vols = Arc::clone(&vols);
        let mine: Vec<Publication> = pubs
            .iter()
            .filter(|p| p.volume % SETUP_CLIENTS == w)
            .cloned()
            .collect();
        let cap = cap.clone();
        workers.push(tokio::spawn(async move {
            let mut staged = [false; VOLUMES];
            for p in mine {
                let vol = &vols[p.volume];
                if !staged[p.volume] {
                    retry_aborted!(
                        "NodeStage",
                        client.node_stage_volume(stage_request(&vol.id, &vol.staging, &cap))
                    );
                    staged[p.volume] = true;
                }
                retry_aborted!(
                    "NodePublish (set-up)",
                    client.node_publish_volume(publish_request(
                        &vol.id,
                        &vol.staging,
                        &p.target,
                        &cap,
                        false,
                    ))
                );
            }
        }));
    }
    for w in workers {
        w.await.expect("set-up client");
    }
    let pubs = Arc::new(pubs);
    // Every publication's caps are in its pod's io.max (written at publish, or by a pass).
    let capped = || {
        pubs.iter()
            .filter(|p| {
                std::fs::read_to_string(p.cgroup.join("io.max"))
                    .is_ok_and(|t| t.contains("riops=200"))
            })
            .count()
    };
    let all = poll(Duration::from_secs(30), || capped() == pubs.len()).await;
    assert!(
        all,
        "{} of {} publications have their io.max line",
        capped(),
        pubs.len()
    );
    let setup = setup.elapsed();

    // 2. The measurement.
    let window = measure();
    let end = Instant::now() + window;
    let mut creators = Vec::new();
    for c in 0..CREATORS {
        let mut client = ControllerClient::new(connect(&d.socket()).await.expect("connect"));
        creators.push(tokio::spawn(async move {
            let mut s = Samples::default();
            let mut i = 0;
            while Instant::now() < end {
                let mut req = create_request(
                    &format!("bench-new-{c}-{i}"),
                    vec![mount_cap("ext4")],
                    16 * MIB,
                    0,
                );
                req.parameters.insert(TIER_KEY.into(), "batch".into());
                let t = Instant::now();
                ok(client.create_volume(req).await, "CreateVolume (load)");
                s.0.push(t.elapsed());
                i += 1;
            }
            s
        }));
    }
    let mut identity = IdentityClient::new(connect(&d.socket()).await.expect("connect"));
    let prober: JoinHandle<Samples> = tokio::spawn(async move {
        let mut s = Samples::default();
        let mut tick = tokio::time::interval(PACE);
        while Instant::now() < end {
            tick.tick().await;
            let t = Instant::now();
            let r = ok(identity.probe(csi::ProbeRequest {}).await, "Probe");
            s.0.push(t.elapsed());
            assert_eq!(r.ready, Some(true), "Probe answered not ready");
        }
        s
    });
    let mut stats_client = node(&d).await;
    let (spubs, svols) = (Arc::clone(&pubs), Arc::clone(&vols));
    let stats: JoinHandle<Samples> = tokio::spawn(async move {
        let mut s = Samples::default();
        let mut tick = tokio::time::interval(PACE);
        let mut i = 0;
        while Instant::now() < end {
            tick.tick().await;
            let p = &spubs[i % spubs.len()];
            let req = csi::NodeGetVolumeStatsRequest {
                volume_id: svols[p.volume].id.clone(),
                volume_path: p.target.clone(),
                staging_target_path: String::new(),
            };
            let t = Instant::now();
            let r = ok(
                stats_client.node_get_volume_stats(req).await,
                "NodeGetVolumeStats",
            );
            s.0.push(t.elapsed());
            assert!(!r.usage.is_empty(), "NodeGetVolumeStats: no usage");
            i += 1;
        }
        s
    });
    let mut publisher = node(&d).await;
    let (pvols, pcg, proot) = (Arc::clone(&vols), cg_root.clone(), d.root().to_owned());
    let cap2 = cap.clone();
    let publishes: JoinHandle<(Samples, Samples)> = tokio::spawn(async move {
        let (mut publish, mut unpublish) = (Samples::default(), Samples::default());
        let mut i = 0;
        while Instant::now() < end {
            let vol = &pvols[i % VOLUMES];
            let (target, cgroup) = new_pod(&pcg, &proot, &format!("pv-bench-{}", i % VOLUMES));
            let t = Instant::now();
            retry_aborted!(
                "NodePublish",
                publisher.node_publish_volume(publish_request(
                    &vol.id,
                    &vol.staging,
                    &target,
                    &cap2,
                    false,
                ))
            );
            publish.0.push(t.elapsed());
            let line = std::fs::read_to_string(cgroup.join("io.max")).expect("read io.max");
            assert!(
                line.contains("riops=200"),
                "NodePublish returned before its caps were written: {line:?}"
            );
            let t = Instant::now();
            retry_aborted!(
                "NodeUnpublish",
                publisher.node_unpublish_volume(unpublish_request(&vol.id, &target))
            );
            unpublish.0.push(t.elapsed());
            i += 1;
        }
        (publish, unpublish)
    });

    let mut create = Samples::default();
    for c in creators {
        create.0.extend(c.await.expect("creator").0);
    }
    let mut probe = prober.await.expect("prober");
    let mut stats = stats.await.expect("stats client");
    let (mut publish, mut unpublish) = publishes.await.expect("publisher");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (p_probe, p_stats, p_publish) = (probe.ms(0.99), stats.ms(0.99), publish.ms(0.99));
    note(format!(
        "bench runtime: probe p99 {p_probe:.1} ms (goal {PROBE_GOAL_MS}), stats p99 {p_stats:.1} ms (goal {STATS_GOAL_MS}), publish p99 {p_publish:.1} ms (goal {PUBLISH_GOAL_MS}); {} publications, {CREATORS} creators, {} s after a {} s set-up; {}; {}; {}; {}; {}; {} calls retried after ABORTED; load {}",
        pubs.len(),
        window.as_secs(),
        setup.as_secs(),
        probe.line("probe"),
        stats.line("stats"),
        publish.line("publish"),
        unpublish.line("unpublish"),
        create.line("create"),
        ABORTED.load(Ordering::Relaxed),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    ));
    // The 500 publications are taken down with the driver stopped, not one call each
    // (that would double the run): its mounts and loop devices, all under its tempdir.
    d.kill();
    let cleaned = cleanup(d.root());
    let failed: Vec<&String> = cleaned
        .iter()
        .filter(|c| c.contains("failed") || c.contains("could not"))
        .collect();
    assert!(
        failed.is_empty(),
        "taking the publications down: {failed:?}"
    );
    let mut missed = Vec::new();
    for (name, p99, goal) in [
        ("Probe", p_probe, PROBE_GOAL_MS),
        ("NodeGetVolumeStats", p_stats, STATS_GOAL_MS),
        ("NodePublish", p_publish, PUBLISH_GOAL_MS),
    ] {
        // NaN (no sample) misses too.
        if p99.is_nan() || p99 >= goal {
            missed.push(format!("{name} p99 {p99:.1} ms >= {goal} ms"));
        }
    }
    // `IOLANE_RUNTIME_GOALS=report` (what tests/run.sh sets): the verdict is printed and a
    // missed goal does not fail the run (latency on a shared CI machine is the machine's as
    // much as the driver's); the checks above (every call answered, and right) still do.
    let report_only = std::env::var("IOLANE_RUNTIME_GOALS").is_ok_and(|v| v == "report");
    if missed.is_empty() {
        println!("bench runtime: goals met");
    } else if report_only {
        println!("bench runtime: goals MISSED: {}", missed.join(", "));
    } else {
        panic!("goals missed: {}", missed.join(", "));
    }
}

/// A pod: its cgroup in the fake tree under `cg_root` (io controller listed, empty
/// `io.max` and `io.stat`) and its kubelet target path for `pv` under `root`.
fn new_pod(cg_root: &Path, root: &Path, pv: &str) -> (String, PathBuf) {
    let uid = uuid();
    let cgroup = cg_root.join("kubepods/burstable").join(format!("pod{uid}"));
    std::fs::create_dir_all(&cgroup).expect("create fake cgroup");
    std::fs::write(cgroup.join("cgroup.controllers"), "cpu io memory pids\n").expect("write");
    std::fs::write(cgroup.join("io.max"), "").expect("write io.max");
    std::fs::write(cgroup.join("io.stat"), "").expect("write io.stat");
    let target = root
        .join("kubelet/pods")
        .join(&uid)
        .join("volumes/kubernetes.io~csi")
        .join(pv)
        .join("mount");
    std::fs::create_dir_all(target.parent().expect("parent")).expect("create pod volume dir");
    (target.to_string_lossy().into_owned(), cgroup)
}

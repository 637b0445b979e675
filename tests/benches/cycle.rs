//! Volume-cycle benchmark: prints figures, asserts nothing.
//!
//! Runs in the VM (`tests/vm/bench.sh`, see `docs/benchmarks.md`), as root, with two blank
//! disks: the driver gets the first (`iolane node --lvm-devices`), the raw command sequence
//! a VG of the same shape on the second. Both sides run in the same boot, interleaved
//! (sequential phase, driver concurrent, raw concurrent), so their ratio is
//! meaningful even where the absolute times (software emulation, a busy machine) are not.
//! The sequential phase alternates driver and raw cycles for the same reason.
//!
//! One cycle, driver: CreateVolume (1 GiB ext4) → NodeStage → NodePublish → NodeUnpublish →
//! NodeUnstage → DeleteVolume. Raw: `lvcreate --type thin -V 1G` → `mkfs.ext4` (the
//! driver's options) → `mount` → `umount` → `lvremove -y`.
//!
//! ```text
//! cycle [--out DIR] [--cycles N] [--concurrency C] [--per-worker K]
//!       [--driver-device /dev/nvme0n1] [--raw-device /dev/nvme1n1] [--iolane PATH]
//! ```
//!
//! The driver runs with `--log-format json --log info,csi_driver=debug`; every process it
//! spawns is logged (`running`, with the argv), and the sequential phase attributes those
//! lines to the RPC that was in flight, so the report counts spawns per RPC.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::zombie_processes,
    reason = "a benchmark binary: it spawns iolane and LVM tools, prints, and panics on setup errors"
)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessMode, AccessType, MountVolume};
use csi_proto::v1 as csi;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

const GIB: i64 = 1 << 30;
const RAW_VG: &str = "rawbench";
const POOL: &str = "pool";
/// The driver's `mkfs.ext4` options (csi-driver/src/os/mod.rs, `Os::mkfs`).
const MKFS_EXT4: &[&str] = &[
    "-q",
    "-m",
    "0",
    "-E",
    "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
];
const STEPS_DRIVER: &[&str] = &[
    "CreateVolume",
    "NodeStage",
    "NodePublish",
    "NodeUnpublish",
    "NodeUnstage",
    "DeleteVolume",
];
const STEPS_RAW: &[&str] = &["lvcreate", "mkfs.ext4", "mount", "umount", "lvremove"];

struct Args {
    out: PathBuf,
    cycles: usize,
    concurrency: usize,
    per_worker: usize,
    driver_device: String,
    raw_device: String,
    iolane: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        out: std::env::var_os("IOLANE_VM_RESULTS")
            .map_or_else(|| PathBuf::from("."), PathBuf::from),
        cycles: 10,
        concurrency: 8,
        per_worker: 3,
        driver_device: "/dev/nvme0n1".into(),
        raw_device: "/dev/nvme1n1".into(),
        iolane: std::env::var_os("IOLANE_BIN").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/iolane"),
            PathBuf::from,
        ),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        // `cargo bench` passes `--bench`; ignore it.
        if k == "--bench" {
            continue;
        }
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--out" => a.out = v.into(),
            "--cycles" => a.cycles = v.parse().unwrap(),
            "--concurrency" => a.concurrency = v.parse().unwrap(),
            "--per-worker" => a.per_worker = v.parse().unwrap(),
            "--driver-device" => a.driver_device = v,
            "--raw-device" => a.raw_device = v,
            "--iolane" => a.iolane = v.into(),
            _ => panic!("unknown flag {k}"),
        }
    }
    a
}

/// Runs a program, panicking with its output when it fails.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One cycle's step times, in seconds, in step order.
type Sample = Vec<f64>;

struct Phase {
    name: String,
    steps: &'static [&'static str],
    samples: Vec<Sample>,
    wall: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn stats(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    json!({"n": v.len(), "p50": pct(&v, 50.0), "p99": pct(&v, 99.0), "mean": mean,
           "min": v.first().copied().unwrap_or(f64::NAN), "max": v.last().copied().unwrap_or(f64::NAN)})
}

impl Phase {
    fn summary(&self) -> Value {
        let cycles: Vec<f64> = self.samples.iter().map(|s| s.iter().sum()).collect();
        let mut steps = serde_json::Map::new();
        for (i, s) in self.steps.iter().enumerate() {
            steps.insert(
                (*s).to_owned(),
                stats(self.samples.iter().map(|x| x[i]).collect()),
            );
        }
        json!({
            "cycles": self.samples.len(),
            "wall_s": self.wall,
            "cycles_per_s": self.samples.len() as f64 / self.wall,
            "cycle_s": stats(cycles),
            "steps_s": steps,
        })
    }
}

// ---- the driver side ------------------------------------------------------------------

struct Driver {
    child: Child,
    root: PathBuf,
    log: PathBuf,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    Endpoint::try_from("http://[::]:50051")?
        .timeout(Duration::from_secs(600))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

async fn start_driver(a: &Args) -> Driver {
    let root = PathBuf::from("/tmp/iolane-bench");
    let _ = fs::remove_dir_all(&root);
    for d in ["state", "staging", "mount"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let socket = root.join("csi.sock");
    let log = root.join("driver.log");
    let f = File::create(&log).unwrap();
    let mut child = Command::new(&a.iolane)
        .arg("node")
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args([
            "--node-id",
            "vm",
            "--log-format",
            "json",
            "--log",
            "info,csi_driver=debug",
        ])
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--lvm-devices")
        .arg(&a.driver_device)
        .env_remove("IOLANE_CONFIG")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("spawn iolane");
    let t0 = Instant::now();
    loop {
        if socket.exists()
            && let Ok(ch) = connect(&socket).await
            && let Ok(r) = IdentityClient::new(ch.clone())
                .probe(csi::ProbeRequest {})
                .await
            && r.into_inner().ready == Some(true)
        {
            eprintln!(
                "bench: driver ready after {:.1} s",
                t0.elapsed().as_secs_f64()
            );
            return Driver {
                child,
                root,
                log,
                controller: ControllerClient::new(ch.clone()),
                node: NodeClient::new(ch),
            };
        }
        if t0.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "driver not ready: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cap() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

/// Current length of the driver log (to attribute the lines that follow to one RPC).
fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The programs the driver spawned between two log offsets.
fn spawns_between(path: &Path, from: u64, to: u64) -> Vec<String> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(from)).unwrap();
    let mut buf = vec![0; (to - from) as usize];
    f.read_exact(&mut buf).unwrap();
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&buf).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = &v["fields"];
        if fields["message"] == "running"
            && let Some(argv) = fields["argv"].as_str()
        {
            out.push(argv.to_owned());
        }
    }
    out
}

/// One driver cycle; with `trace`, also the argv lines each RPC spawned.
async fn driver_cycle(
    mut controller: ControllerClient<Channel>,
    mut node: NodeClient<Channel>,
    root: &Path,
    log: &Path,
    name: &str,
    trace: Option<&mut Vec<Vec<String>>>,
) -> Sample {
    let staging = root.join("staging").join(name);
    fs::create_dir_all(&staging).unwrap();
    let staging = staging.to_str().unwrap().to_owned();
    let target = root.join("mount").join(name).to_str().unwrap().to_owned();
    let mut times = Vec::with_capacity(6);
    let mut offsets = vec![log_len(log)];
    macro_rules! step {
        ($e:expr, $what:expr) => {{
            let t = Instant::now();
            let r = $e.await.unwrap_or_else(|s| panic!("{} {name}: {s}", $what));
            times.push(secs(t.elapsed()));
            // The log is written synchronously by the driver before it answers.
            offsets.push(log_len(log));
            r.into_inner()
        }};
    }
    let v = step!(
        controller.create_volume(csi::CreateVolumeRequest {
            name: name.to_owned(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: GIB,
                limit_bytes: 0
            }),
            volume_capabilities: vec![cap()],
            ..Default::default()
        }),
        "CreateVolume"
    );
    let id = v.volume.expect("volume").volume_id;
    step!(
        node.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
            volume_capability: Some(cap()),
            ..Default::default()
        }),
        "NodeStage"
    );
    step!(
        node.node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
            target_path: target.clone(),
            volume_capability: Some(cap()),
            ..Default::default()
        }),
        "NodePublish"
    );
    step!(
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.clone(),
        }),
        "NodeUnpublish"
    );
    step!(
        node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
        }),
        "NodeUnstage"
    );
    step!(
        controller.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        }),
        "DeleteVolume"
    );
    if let Some(tr) = trace {
        for w in offsets.windows(2) {
            tr.push(spawns_between(log, w[0], w[1]));
        }
    }
    times
}

/// The sequential phase: driver cycle i, then raw cycle i, alternating, so that a change in
/// the machine's load (another VM on the same cores) hits both sides alike. A side's wall
/// time is the sum of its own cycles.
async fn sequential(d: &Driver, n: usize, spawns: &mut Vec<Vec<Vec<String>>>) -> (Phase, Phase) {
    let (mut ds, mut rs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let mut tr = Vec::new();
        ds.push(
            driver_cycle(
                d.controller.clone(),
                d.node.clone(),
                &d.root,
                &d.log,
                &format!("seq-{i}"),
                Some(&mut tr),
            )
            .await,
        );
        spawns.push(tr);
        rs.push(tokio::task::block_in_place(|| {
            raw_cycle(&format!("seq-{i}"))
        }));
    }
    let wall = |v: &[Sample]| v.iter().map(|s| s.iter().sum::<f64>()).sum();
    (
        Phase {
            name: "driver_sequential".into(),
            steps: STEPS_DRIVER,
            wall: wall(&ds),
            samples: ds,
        },
        Phase {
            name: "raw_sequential".into(),
            steps: STEPS_RAW,
            wall: wall(&rs),
            samples: rs,
        },
    )
}

async fn driver_concurrent(d: &Driver, workers: usize, per: usize) -> Phase {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (c, n, root, log) = (
            d.controller.clone(),
            d.node.clone(),
            d.root.clone(),
            d.log.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..per {
                out.push(
                    driver_cycle(
                        c.clone(),
                        n.clone(),
                        &root,
                        &log,
                        &format!("conc-{w}-{i}"),
                        None,
                    )
                    .await,
                );
            }
            out
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    Phase {
        name: "driver_concurrent".into(),
        steps: STEPS_DRIVER,
        samples,
        wall: secs(t.elapsed()),
    }
}

// ---- the raw side ---------------------------------------------------------------------

fn raw_setup(dev: &str) {
    // What the driver does at start on a blank device: a VG, then a thin pool of 95 % of it,
    // 64 KiB chunks, zeroing on, error when full.
    sh("vgcreate", &[RAW_VG, dev]);
    sh(
        "lvcreate",
        &[
            "-T",
            "-l",
            "95%VG",
            "--chunksize",
            "64k",
            "--zero",
            "y",
            "--errorwhenfull",
            "y",
            &format!("{RAW_VG}/{POOL}"),
        ],
    );
}

fn raw_cycle(name: &str) -> Sample {
    let dir = format!("/tmp/iolane-bench-raw/{name}");
    fs::create_dir_all(&dir).unwrap();
    let dev = format!("/dev/{RAW_VG}/{name}");
    let lv = format!("{RAW_VG}/{name}");
    let mut mkfs: Vec<&str> = MKFS_EXT4.to_vec();
    mkfs.extend(["--", &dev]);
    let steps: [(&str, Vec<&str>); 5] = [
        (
            "lvcreate",
            vec![
                "--type",
                "thin",
                "-V",
                "1073741824b",
                "--thinpool",
                POOL,
                "-n",
                name,
                RAW_VG,
            ],
        ),
        ("mkfs.ext4", mkfs),
        ("mount", vec!["-t", "ext4", "--", &dev, &dir]),
        ("umount", vec!["--", &dir]),
        ("lvremove", vec!["-y", &lv]),
    ];
    steps
        .iter()
        .map(|(p, a)| {
            let t = Instant::now();
            sh(p, a);
            secs(t.elapsed())
        })
        .collect()
}

fn raw_concurrent(workers: usize, per: usize) -> Phase {
    let t = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            std::thread::spawn(move || {
                (0..per)
                    .map(|i| raw_cycle(&format!("conc-{w}-{i}")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let samples = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    Phase {
        name: "raw_concurrent".into(),
        steps: STEPS_RAW,
        samples,
        wall: secs(t.elapsed()),
    }
}

// ---- report ---------------------------------------------------------------------------

fn program_of(argv: &str) -> String {
    argv.split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches('"')
        .to_owned()
}

fn spawn_report(spawns: &[Vec<Vec<String>>]) -> Value {
    // spawns[cycle][rpc] = argv lines.
    let mut out = serde_json::Map::new();
    for (r, rpc) in STEPS_DRIVER.iter().enumerate() {
        let mut programs: BTreeMap<String, usize> = BTreeMap::new();
        let mut total = 0;
        for c in spawns {
            for a in &c[r] {
                *programs.entry(program_of(a)).or_default() += 1;
                total += 1;
            }
        }
        let n = spawns.len().max(1) as f64;
        let per: BTreeMap<String, f64> = programs
            .into_iter()
            .map(|(k, v)| (k, v as f64 / n))
            .collect();
        let example = spawns.first().map(|c| c[r].clone()).unwrap_or_default();
        out.insert(
            (*rpc).to_owned(),
            json!({"spawns_per_call": total as f64 / n, "by_program": per, "argv_first_cycle": example}),
        );
    }
    Value::Object(out)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn print_table(phases: &[&Phase], report: &Value) {
    println!();
    println!(
        "{:<20} {:>7} {:>9} {:>9} {:>9} {:>10}",
        "phase", "cycles", "p50 s", "p99 s", "mean s", "cycles/s"
    );
    for p in phases {
        let s = &report["phases"][&p.name];
        println!(
            "{:<20} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>10.3}",
            p.name,
            s["cycles"],
            f(&s["cycle_s"]["p50"]),
            f(&s["cycle_s"]["p99"]),
            f(&s["cycle_s"]["mean"]),
            f(&s["cycles_per_s"])
        );
    }
    println!();
    println!("per step (p50 / p99, seconds):");
    for p in phases {
        let s = &report["phases"][&p.name]["steps_s"];
        let cells: Vec<String> = p
            .steps
            .iter()
            .map(|k| format!("{k} {:.3}/{:.3}", f(&s[*k]["p50"]), f(&s[*k]["p99"])))
            .collect();
        println!("  {:<18} {}", p.name, cells.join("  "));
    }
    println!();
    println!(
        "ratio driver/raw, cycle p50: sequential {:.2}x, concurrent {:.2}x",
        f(&report["ratio_p50"]["sequential"]),
        f(&report["ratio_p50"]["concurrent"])
    );
    println!(
        "ratio driver/raw, cycles/s:  sequential {:.2}x, concurrent {:.2}x",
        f(&report["ratio_throughput"]["sequential"]),
        f(&report["ratio_throughput"]["concurrent"])
    );
    println!();
    println!("driver process spawns per RPC (sequential phase, mean per call):");
    for rpc in STEPS_DRIVER {
        let s = &report["driver_spawns"][*rpc];
        println!(
            "  {:<14} {:>4.1}  {}",
            rpc,
            f(&s["spawns_per_call"]),
            s["by_program"]
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let a = parse_args();
    fs::create_dir_all(&a.out).unwrap();
    let t_all = Instant::now();
    let mut d = start_driver(&a).await;
    raw_setup(&a.raw_device);
    let tools: serde_json::Map<String, Value> = [
        ("uname", sh("uname", &["-r"])),
        (
            "lvm",
            sh("lvm", &["version"])
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
        ("nproc", sh("nproc", &[])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Value::String(v.trim().to_owned())))
    .collect();

    // Warm-up, not counted: first lvcreate starts dmeventd, page cache for binaries.
    eprintln!("bench: warm-up");
    let _ = driver_cycle(
        d.controller.clone(),
        d.node.clone(),
        &d.root,
        &d.log,
        "warm",
        None,
    )
    .await;
    let _ = raw_cycle("warm");

    let mut spawns = Vec::new();
    eprintln!(
        "bench: sequential x{} (driver and raw cycles alternating)",
        a.cycles
    );
    let (ds, rs) = sequential(&d, a.cycles, &mut spawns).await;
    eprintln!(
        "bench: driver concurrent {}x{}",
        a.concurrency, a.per_worker
    );
    let dc = driver_concurrent(&d, a.concurrency, a.per_worker).await;
    eprintln!("bench: raw concurrent {}x{}", a.concurrency, a.per_worker);
    let rc = tokio::task::block_in_place(|| raw_concurrent(a.concurrency, a.per_worker));

    let phases = [&ds, &rs, &dc, &rc];
    let mut ph = serde_json::Map::new();
    for p in phases {
        ph.insert(p.name.clone(), p.summary());
    }
    let ph = Value::Object(ph);
    let ratio = |d: &str, r: &str, k: &str| -> f64 {
        if k == "p50" {
            f(&ph[d]["cycle_s"]["p50"]) / f(&ph[r]["cycle_s"]["p50"])
        } else {
            f(&ph[r]["cycles_per_s"]) / f(&ph[d]["cycles_per_s"])
        }
    };
    let report = json!({
        "config": {"cycles": a.cycles, "concurrency": a.concurrency, "per_worker": a.per_worker,
                   "driver_device": a.driver_device, "raw_device": a.raw_device,
                   "iolane": a.iolane.display().to_string(), "volume_size_bytes": GIB, "fs": "ext4",
                   "mkfs_ext4_options": MKFS_EXT4},
        "guest": tools,
        "phases": ph,
        "ratio_p50": {"sequential": ratio("driver_sequential", "raw_sequential", "p50"),
                      "concurrent": ratio("driver_concurrent", "raw_concurrent", "p50")},
        // raw cycles/s over driver cycles/s: > 1 means the driver is slower.
        "ratio_throughput": {"sequential": ratio("driver_sequential", "raw_sequential", "tp"),
                             "concurrent": ratio("driver_concurrent", "raw_concurrent", "tp")},
        "driver_spawns": spawn_report(&spawns),
        "samples": {"driver_sequential": ds.samples, "raw_sequential": rs.samples,
                    "driver_concurrent": dc.samples, "raw_concurrent": rc.samples},
        "total_s": secs(t_all.elapsed()),
    });
    let path = a.out.join("bench-cycle.json");
    fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    print_table(&phases, &report);
    println!("\nJSON: {}", path.display());

    let _ = d.child.kill();
    let _ = d.child.wait();
    let _ = fs::copy(&d.log, a.out.join("bench-driver.log"));
}

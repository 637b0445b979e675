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
//! `--spares N` gives the driver's class `spares = N` (default 0: off). With spares, a
//! DeleteVolume leaves background work in the driver (discard and `mkfs` of the spare): in
//! the sequential phase the bench waits, untimed, until the driver log says it is done
//! before the raw cycle starts, and likewise between the driver and the raw concurrent
//! phases, so the raw side never runs beside the driver's background work; the waits are
//! reported (`drain_s`). Untimed, each driver cycle reads the staged filesystem's UUID
//! (`blkid`) and runs `e2fsck -fn` after NodeUnstage; each raw cycle runs the same
//! `e2fsck -fn` before `lvremove`. The report says whether every UUID was distinct and
//! every check clean; the exit status is 1 if not.
//!
//! ```text
//! cycle [--out DIR] [--cycles N] [--concurrency C] [--per-worker K] [--spares N]
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

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod driver;
mod raw;
mod report;

use driver::{driver_concurrent, driver_cycle, sequential, start_driver};
use raw::{raw_concurrent, raw_cycle, raw_setup};
use report::{f, print_table, spawn_report};

pub(crate) const GIB: i64 = 1 << 30;
pub(crate) const RAW_VG: &str = "rawbench";
pub(crate) const POOL: &str = "pool";
/// The driver's `mkfs.ext4` options (csi-driver/src/os/mod.rs, `Os::mkfs`).
pub(crate) const MKFS_EXT4: &[&str] = &[
    "-q",
    "-m",
    "0",
    "-E",
    "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
];
pub(crate) const STEPS_DRIVER: &[&str] = &[
    "CreateVolume",
    "NodeStage",
    "NodePublish",
    "NodeUnpublish",
    "NodeUnstage",
    "DeleteVolume",
];
pub(crate) const STEPS_RAW: &[&str] = &["lvcreate", "mkfs.ext4", "mount", "umount", "lvremove"];

pub(crate) struct Args {
    pub(crate) out: PathBuf,
    pub(crate) cycles: usize,
    pub(crate) concurrency: usize,
    pub(crate) per_worker: usize,
    pub(crate) driver_device: String,
    pub(crate) raw_device: String,
    pub(crate) iolane: PathBuf,
    pub(crate) spares: u32,
}

pub(crate) fn parse_args() -> Args {
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
        spares: 0,
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
            "--spares" => a.spares = v.parse().unwrap(),
            _ => panic!("unknown flag {k}"),
        }
    }
    a
}

/// Runs a program to its end (C locale, no stdin).
fn output(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}

/// Runs a program, panicking with its output when it fails.
pub(crate) fn sh(program: &str, args: &[&str]) -> String {
    let out = output(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a program; whether it exited 0, and its output.
pub(crate) fn sh_status(program: &str, args: &[&str]) -> (bool, String) {
    let out = output(program, args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// One driver volume's checks: (cycle name, filesystem UUID, fsck clean, fsck output).
type Check = (String, String, bool, String);
static CHECKS: std::sync::Mutex<Vec<Check>> = std::sync::Mutex::new(Vec::new());

pub(crate) fn record_check(name: &str, uuid: &str, clean: bool, fsck: &str) {
    CHECKS
        .lock()
        .unwrap()
        .push((name.to_owned(), uuid.to_owned(), clean, fsck.to_owned()));
}

/// Every filesystem UUID distinct and every `fsck -n` clean, over the driver cycles.
fn checks_report() -> (bool, Value) {
    let checks = CHECKS.lock().unwrap().clone();
    let uuids: std::collections::BTreeSet<&str> = checks.iter().map(|c| c.1.as_str()).collect();
    let bad_uuid: Vec<&Check> = checks.iter().filter(|c| c.1.len() != 36).collect();
    let unclean: Vec<&Check> = checks.iter().filter(|c| !c.2).collect();
    let ok = uuids.len() == checks.len() && bad_uuid.is_empty() && unclean.is_empty();
    (
        ok,
        json!({"filesystems": checks.len(), "distinct_uuids": uuids.len(),
               "unreadable_uuids": bad_uuid.iter().map(|c| format!("{}: {}", c.0, c.1)).collect::<Vec<_>>(),
               "fsck_clean": checks.len() - unclean.len(),
               "fsck_failures": unclean.iter().map(|c| format!("{}: {}", c.0, c.3)).collect::<Vec<_>>()}),
    )
}

pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
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
    let drain_concurrent = drain(&d.log).await;
    eprintln!("bench: raw concurrent {}x{}", a.concurrency, a.per_worker);
    let rc = tokio::task::block_in_place(|| raw_concurrent(a.concurrency, a.per_worker));

    let (checks_ok, checks) = checks_report();
    let drains = DRAINS.lock().unwrap().clone();
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
                   "spares": a.spares, "mkfs_ext4_options": MKFS_EXT4},
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
        "checks": checks,
        "drain_s": {"sequential": drains, "after_driver_concurrent": drain_concurrent},
    });
    let path = a.out.join("bench-cycle.json");
    fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    print_table(&phases, &report);
    println!("\nJSON: {}", path.display());

    let _ = d.child.kill();
    let _ = d.child.wait();
    let _ = fs::copy(&d.log, a.out.join("bench-driver.log"));
    println!(
        "\ndriver background work after a delete (spares {}), waited for untimed: sequential p50 {:.3} s max {:.3} s; after the concurrent phase {:.3} s",
        a.spares,
        {
            let mut sorted = drains.clone();
            sorted.sort_by(f64::total_cmp);
            report::pct(&sorted, 50.0)
        },
        drains.iter().copied().fold(0.0, f64::max),
        drain_concurrent
    );
    println!(
        "checks (driver volumes, spares {}): {} filesystems, {} distinct UUIDs, fsck -n clean {}/{}{}",
        a.spares,
        report["checks"]["filesystems"],
        report["checks"]["distinct_uuids"],
        report["checks"]["fsck_clean"],
        report["checks"]["filesystems"],
        if checks_ok { "" } else { ": FAILED" }
    );
    if !checks_ok {
        println!(
            "{}",
            serde_json::to_string_pretty(&report["checks"]).unwrap()
        );
        std::process::exit(1);
    }
}

/// Seconds waited, after each sequential driver cycle, for the driver's background work.
pub(crate) static DRAINS: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());

/// Waits until every spare the driver kept (log: "kept the volume's LV as a spare") is
/// prepared or given up ("prepared a spare", "could not prepare a spare"); returns the
/// seconds waited. Without spares there is nothing to wait for.
pub(crate) async fn drain(log: &Path) -> f64 {
    let t = Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        let kept = text.matches("kept the volume's LV as a spare").count();
        let done = text.matches("prepared a spare").count()
            + text.matches("could not prepare a spare").count();
        if done >= kept {
            return secs(t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "the driver's spares were not prepared within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

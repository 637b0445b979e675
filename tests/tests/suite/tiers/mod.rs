//! IO tiers end to end: what the driver writes into a pod's cgroup v2 `io.max` at
//! NodePublishVolume and NodeUnpublishVolume, checked with the kernel's own tools (`cat`,
//! `stat`, `lsblk`, `mountpoint`) rather than the project's parsers.
//!
//! Two kinds of tests:
//! - `publish_*`: a tempdir cgroup root of plain files (`cgroup.controllers` listing `io`,
//!   an empty `io.max`), so the line the driver writes is the file's whole content. They run
//!   wherever the conformance suite runs (root, loop backend on the host; the lvm backend in
//!   the VM).
//! - `vm_*`: the real cgroup root of a kernel with the io controller and the lvm backend
//!   (`tests/vm/tiers.sh`): the cap measured with `iolane bench` (batch within 0.9-1.02x of
//!   its limit, streaming well above it), the reconciler repairing a line written behind the
//!   driver's back, re-applying after SIGKILL and restart, and the line gone after
//!   unpublish; and (`retier::vm_*`) a running load's rate following a live re-tier to
//!   uncapped and back within a second, from per-100 ms samples. They return with a printed
//!   reason outside lvm mode or without cgroup v2 io.
//! - `priority::vm_*`: the priority controllers (`[priority]`, on by default, issue 9) on a
//!   disk QEMU throttles (`tests/vm/priority-test.sh`, a boot of its own in `all.sh`, not
//!   `tiers.sh`): streaming keeps its solo rate and latency against four batch volumes,
//!   batch alone gets the device, the floor and the reaction times.
//!
//! - `priority_devices::`: two throttled disks, one device class each: load on one never
//!   changes the other's batch budget (VM, lvm).
//!
//! - `calibration::`: `iolane bench --calibrate` on a real loop device, and the node
//!   starting the state directory's disk from the stored capacity (loop backend, host).
//!
//! Environment: `IOLANE_TEST_BENCH_SECS` (seconds per load run, default 5).

mod calibration;
mod host;
mod priority;
mod priority_devices;
// `vm` first: its `require_vm!` is used by `retier`.
#[macro_use]
mod vm;
mod retier;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use iolane_tests::csi;
use iolane_tests::{
    Driver, GIB, Options, binary, block_cap, create_request, mount_cap, note, ok, poll,
    publish_request, require_root, run, stage_request, unpublish_request, unstage_request,
};

/// The batch tier of these tests: 200 read and write IOPS (the VM does about 3,400
/// uncapped), no bandwidth cap, as a static cap:
const BATCH_IOPS: u64 = 200;
///
/// `[priority] enabled = false`: these tests check the static caps (what publish writes, the
/// reconciler's repair and re-apply); the priority controllers, on by default, are checked
/// by `priority::` on an IO-bound disk.
const TIERS: &str = "[priority]\nenabled = false\n\n[tiers.batch]\npriority = \"batch\"\nread_iops = 200\nwrite_iops = 200\nread_bps = \"max\"\nwrite_bps = \"max\"\n";
const TIER_KEY: &str = "iolane.dev/tier";
const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
/// `--reconcile-period` of the VM tests, seconds.
const RECONCILE_SECS: u64 = 2;
/// How long a repair may take: a few reconcile periods (a pass runs LVM reports, slow in
/// the emulated VM).
const REPAIR_DEADLINE: Duration = Duration::from_secs(5 * RECONCILE_SECS);
/// How long a restarted driver may take to re-apply (start-up on lvm plus a pass).
const REAPPLY_DEADLINE: Duration = Duration::from_secs(60);

fn uuid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read a random UUID")
        .trim()
        .to_owned()
}

fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `MAJ:MIN` of a block device node, from `stat -c %t:%T` (hex) in decimal.
fn stat_dev(node: &Path) -> String {
    let out = run("stat", &["-L", "-c", "%t:%T", &node.to_string_lossy()]);
    let (maj, min) = out.trim().split_once(':').expect("stat printed MAJ:MIN");
    format!(
        "{}:{}",
        u32::from_str_radix(maj, 16).expect("hex major"),
        u32::from_str_radix(min, 16).expect("hex minor")
    )
}

/// `MAJ:MIN` of a block device from `lsblk`.
fn lsblk_dev(node: &Path) -> String {
    run("lsblk", &["-dno", "MAJ:MIN", &node.to_string_lossy()])
        .trim()
        .to_owned()
}

/// `io.max` of `cgroup`, read with `cat`.
fn cat_io_max(cgroup: &Path) -> String {
    run("cat", &[&cgroup.join("io.max").to_string_lossy()])
}

/// The line of `dev` in `io.max` text, if any.
fn line_of(text: &str, dev: &str) -> Option<String> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(dev))
        .map(str::to_owned)
}

/// The device and the `key=value` pairs of an `io.max` line.
fn caps(line: &str) -> (String, HashMap<String, String>) {
    let mut words = line.split_whitespace();
    let dev = words.next().unwrap_or_default().to_owned();
    let pairs = words
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    (dev, pairs)
}

fn four(want: [(&str, &str); 4]) -> HashMap<String, String> {
    want.into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Asserts that `line` is `dev` with exactly the four keys at these values, in any order.
fn assert_caps(line: &str, dev: &str, want: [(&str, &str); 4]) {
    assert_eq!(
        caps(line),
        (dev.to_owned(), four(want)),
        "io.max line {line:?}"
    );
}

#[test]
fn io_max_helpers() {
    let text =
        "254:3 rbps=max wbps=max riops=200 wiops=200\n254:30 rbps=1 wbps=max riops=max wiops=max\n";
    assert_eq!(
        line_of(text, "254:3").as_deref(),
        Some("254:3 rbps=max wbps=max riops=200 wiops=200")
    );
    assert!(line_of(text, "254:30").is_some_and(|l| l.starts_with("254:30 ")));
    assert_eq!(line_of(text, "254:4"), None);
    assert_caps(
        "254:3 riops=200 rbps=max wiops=200 wbps=max",
        "254:3",
        [
            ("rbps", "max"),
            ("wbps", "max"),
            ("riops", "200"),
            ("wiops", "200"),
        ],
    );
    // A line without one of the four keys is not the four caps.
    let want = four([
        ("rbps", "max"),
        ("wbps", "max"),
        ("riops", "200"),
        ("wiops", "200"),
    ]);
    assert_ne!(caps("254:3 rbps=max riops=200 wiops=200").1, want);
    assert_ne!(
        caps("254:3 rbps=max wbps=max riops=200 wiops=200 x=1").1,
        want
    );
}

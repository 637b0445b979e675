//! The priority controllers keep devices apart (issue 9: "two devices: load on one never
//! changes the budget of the other"), in the VM on two NVMe disks that QEMU throttles each
//! on its own (`IOLANE_TEST_PRIORITY_IOPS`, `tests/vm/priority-test.sh`): the real `iolane
//! node` on the lvm backend, one device class per disk, priority on with the default tiers.
//!
//! Device B (`nvme1n1`) carries two batch volumes that load it for the whole test; device A
//! (`nvme0n1`) carries a streaming and a batch volume that start 2 s later, together, for
//! `secs()` seconds. The node's `/metrics` is read as fast as it answers. The test checks
//! that A's batch budget fell while its streaming volume ran (the controller acted) and that
//! B's budget never moved from its value before A's load; B's batch rate during A's load
//! against before is printed (the emulated guest's CPU is shared, the disks are not).
//!
//! Outside the VM (no lvm, no two disks, no cgroup v2 io, or no throttled disk) it returns
//! with a printed reason, like the other `vm_*` tests.

use super::priority::{Run, class_samples, load, prefill, secs};
use super::vm::{Pods, Published, http_get, publish_block_in, unpublish_and_delete};
use super::*;
use iolane_tests::LvmClass;

/// `/metrics`' batch budget of `device`, if the series is there.
fn budget(text: &str, device: &str) -> Option<f64> {
    let name = format!("iolane_priority_batch_budget_ratio{{device=\"{device}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Mean of the class's per-100 ms samples in `[from, to)` ms since the epoch.
fn class_mean(runs: &[Run], from: u64, to: u64) -> f64 {
    let s = class_samples(runs, from);
    let n = usize::try_from(to.saturating_sub(from) / 100).unwrap_or(0);
    let part: Vec<f64> = s.into_iter().take(n).collect();
    part.iter().sum::<f64>() / part.len().max(1) as f64
}

#[tokio::test]
async fn vm_load_on_one_device_leaves_the_other_alone() {
    iolane_tests::require_lvm!();
    let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let devices: Vec<String> = std::env::var("IOLANE_TEST_LVM_DEVICES")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let Some(iops) = std::env::var("IOLANE_TEST_PRIORITY_IOPS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        iolane_tests::skip(
            "no throttled disk (IOLANE_TEST_PRIORITY_IOPS; runs in tests/vm/priority.sh)",
        );
        return;
    };
    if devices.len() < 2 {
        iolane_tests::skip("two disks needed (IOLANE_TEST_LVM_DEVICES=/dev/A,/dev/B)");
        return;
    }
    if !controllers.split_whitespace().any(|c| c == "io") {
        iolane_tests::skip("no cgroup v2 io controller at /sys/fs/cgroup");
        return;
    }
    let name_of = |d: &str| d.trim_start_matches("/dev/").to_owned();
    let (dev_a, dev_b) = (name_of(&devices[0]), name_of(&devices[1]));
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let mut d = Driver::start_with(Options {
        args: vec!["--metrics-address".into(), metrics.clone()],
        // Each pass's inputs and budget (`priority: pass`), printed when the test fails.
        log: Some("info,csi_driver=debug,iops_controller::priority=debug".to_owned()),
        config: Some(format!(
            "[priority.devices.{dev_a}]\niops = {iops}\n\n[priority.devices.{dev_b}]\niops = {iops}\n"
        )),
        lvm_classes: vec![
            LvmClass {
                devices: vec![devices[0].clone()],
                ..LvmClass::default_class(&[])
            },
            LvmClass {
                name: "second".to_owned(),
                devices: vec![devices[1].clone()],
                vg: "iolane-second".to_owned(),
                extra: String::new(),
            },
        ],
        ..Options::default()
    })
    .await;
    let mut pods = Pods::new();
    let a_stream = publish_block_in(&mut d, "pv-as", "streaming", None, &mut pods).await;
    let a_batch = publish_block_in(&mut d, "pv-ab", "batch", None, &mut pods).await;
    let mut b_batch = Vec::new();
    for i in 1..=2 {
        b_batch.push(
            publish_block_in(
                &mut d,
                &format!("pv-bb{i}"),
                "batch",
                Some("second"),
                &mut pods,
            )
            .await,
        );
    }
    let all: Vec<&Published> = [&a_stream, &a_batch].into_iter().chain(&b_batch).collect();
    for p in &all {
        prefill(p);
    }
    let out = d.root().join("bench");
    fs::create_dir_all(&out).expect("bench dir");
    let s = secs();
    let lead = Duration::from_secs(2);
    let whole = s + 4;
    let (b_runs, a_runs, seen) = std::thread::scope(|sc| {
        let b: Vec<_> = b_batch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let json = out.join(format!("bb{i}.json"));
                sc.spawn(move || load(p, &json, whole, Duration::ZERO))
            })
            .collect();
        let a: Vec<_> = [&a_stream, &a_batch]
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let json = out.join(format!("a{i}.json"));
                sc.spawn(move || load(p, &json, s, lead))
            })
            .collect();
        let watch = sc.spawn(|| {
            let t0 = Instant::now();
            let mut seen: Vec<(u64, Option<f64>, Option<f64>)> = Vec::new();
            while t0.elapsed() < Duration::from_secs(whole) {
                let text = http_get(&metrics, "/metrics");
                seen.push((now_ms(), budget(&text, &dev_a), budget(&text, &dev_b)));
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        });
        let join = |h: Vec<std::thread::ScopedJoinHandle<'_, Run>>| -> Vec<Run> {
            h.into_iter().map(|h| h.join().expect("bench")).collect()
        };
        (join(b), join(a), watch.join().expect("watch"))
    });
    // A's load: from its streaming bench's first IO to its end.
    let a_start = a_runs[0].start_ms;
    let a_end = a_start + 100 * a_runs[0].samples.len() as u64;
    let b_start = b_runs.iter().map(|r| r.start_ms).max().unwrap_or(0);
    let b_before = class_mean(&b_runs, b_start + 500, a_start);
    let b_during = class_mean(&b_runs, a_start + 1000, a_end);
    let before: Vec<f64> = seen
        .iter()
        .filter(|(t, _, _)| *t + 200 < a_start)
        .filter_map(|(_, _, b)| *b)
        .collect();
    let during: Vec<(u64, Option<f64>, Option<f64>)> = seen
        .iter()
        .copied()
        .filter(|(t, _, _)| (a_start..a_end).contains(t))
        .collect();
    let a_before = seen
        .iter()
        .filter(|(t, _, _)| *t + 200 < a_start)
        .filter_map(|(_, a, _)| *a)
        .next_back();
    let a_min = during
        .iter()
        .filter_map(|(_, a, _)| *a)
        .fold(f64::INFINITY, f64::min);
    let b_ref = before.last().copied();
    let b_moved: Vec<String> = during
        .iter()
        .filter(|(_, _, b)| match (b, b_ref) {
            (Some(b), Some(r)) => (b - r).abs() > 1e-9,
            _ => true,
        })
        .map(|(t, _, b)| format!("{} ms: {b:?}", t.saturating_sub(a_start)))
        .collect();
    note(format!(
        "two devices (each throttled to {iops} IOPS, {s} s of load on {dev_a} from +{} s):\n  \
         {dev_b} batch class {b_before:.0} IOPS before, {b_during:.0} IOPS while {dev_a} loaded ({:.2}x)\n  \
         {dev_a} batch budget {a_before:?} before, lowest {a_min:.3} while its streaming ran\n  \
         {dev_b} batch budget {b_ref:?} before; {} /metrics reads while {dev_a} loaded, {} of them different",
        lead.as_secs(),
        b_during / b_before.max(1.0),
        during.len(),
        b_moved.len(),
    ));
    let mut failed = Vec::new();
    if b_ref.is_none() || before.is_empty() {
        failed.push(format!(
            "no batch budget of {dev_b} on /metrics before the load on {dev_a}"
        ));
    }
    if during.len() < 10 {
        failed.push(format!(
            "only {} /metrics reads while {dev_a} loaded; want 10 or more",
            during.len()
        ));
    }
    if !a_before.is_some_and(|b| a_min < b) {
        failed.push(format!(
            "{dev_a}'s batch budget did not fall while its streaming volume ran ({a_before:?} -> {a_min:.3}): the load did not reach the controller"
        ));
    }
    if !b_moved.is_empty() {
        failed.push(format!(
            "{dev_b}'s batch budget moved while only {dev_a} changed: {}",
            b_moved.join(", ")
        ));
    }
    assert!(
        failed.is_empty(),
        "two devices: lines not met:\n  {}",
        failed.join("\n  ")
    );
    for p in [&a_stream, &a_batch].into_iter().chain(&b_batch) {
        unpublish_and_delete(&mut d, p).await;
    }
    drop(pods);
    d.assert_no_leaks("after the two-device priority test")
        .await;
}

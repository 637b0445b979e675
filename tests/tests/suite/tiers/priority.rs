//! The priority controllers (issue 9) end to end, on a disk whose capacity is IO-bound
//! (`tests/vm/priority.sh`: QEMU throttles the NVMe to `IOLANE_TEST_PRIORITY_IOPS`): the
//! real `iolane node` on the lvm backend with the default tiers, one streaming and four
//! batch raw-block volumes published into their own pod cgroups, `iolane bench` (4 KiB
//! random reads, queue depth 8) in each.
//!
//! `IOLANE_TEST_PRIORITY=on` runs the node with `[priority] enabled = true` and the
//! device's capacity in the config; `off` with the static tier caps alone, where the test
//! is expected to fail (the point). Lines of assertions:
//! - all five loading: streaming keeps >= 0.90 of its solo IOPS;
//! - batch alone (streaming idle): one batch volume gets >= 0.85 of the device (the
//!   streaming solo rate).
//!
//! Outside the VM (no lvm, no cgroup v2 io, or no throttled disk) it returns with a printed
//! reason, like the other `vm_*` tests.

use super::vm::{Pods, Published, http_get, publish_block, unpublish_and_delete};
use super::*;

/// Bytes of each volume the benches read (prefilled, so reads reach the disk: a thin LV's
/// unwritten blocks never do).
const SPAN: u64 = 32 << 20;

fn secs() -> u64 {
    std::env::var("IOLANE_TEST_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// Mean IOPS of `iolane bench` on `p` from its pod's cgroup, after `delay`.
fn load(p: &Published, json: &Path, secs: u64, delay: Duration) -> f64 {
    load_sampled(p, json, secs, delay).0
}

/// Mean IOPS and the IOPS of every 100 ms (`--interval-ms 100`).
fn load_sampled(p: &Published, json: &Path, secs: u64, delay: Duration) -> (f64, Vec<f64>) {
    std::thread::sleep(delay);
    let bin = binary();
    run(
        &bin.to_string_lossy(),
        &[
            "--log",
            "warn",
            "bench",
            "--target",
            &p.target.to_string_lossy(),
            "--pattern",
            "randread",
            "--queue-depth",
            "8",
            "--size-limit",
            &SPAN.to_string(),
            "--duration",
            &secs.to_string(),
            "--cgroup",
            &p.cgroup.to_string_lossy(),
            "--json",
            &json.to_string_lossy(),
            "--interval-ms",
            "100",
        ],
    );
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(json).expect("read bench JSON")).expect("JSON");
    let samples = report["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|s| {
            let n = s["read_iops"].as_u64().unwrap_or(0) + s["write_iops"].as_u64().unwrap_or(0);
            n as f64 * 10.0
        })
        .collect();
    (report["mean_iops"].as_f64().expect("mean_iops"), samples)
}

/// Milliseconds from the start until three 100 ms samples in a row reach `line`.
fn reaction_ms(samples: &[f64], line: f64) -> Option<usize> {
    samples
        .windows(3)
        .position(|w| w.iter().all(|s| *s >= line))
        .map(|i| i * 100)
}

#[tokio::test]
async fn vm_streaming_keeps_its_rate_against_four_batch_volumes() {
    iolane_tests::require_lvm!();
    let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    let (Some(iops), Ok(mode)) = (
        std::env::var("IOLANE_TEST_PRIORITY_IOPS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok()),
        std::env::var("IOLANE_TEST_PRIORITY"),
    ) else {
        iolane_tests::skip(
            "no throttled disk (IOLANE_TEST_PRIORITY_IOPS, IOLANE_TEST_PRIORITY; runs in tests/vm/priority.sh)",
        );
        return;
    };
    if !controllers.split_whitespace().any(|c| c == "io") {
        iolane_tests::skip("no cgroup v2 io controller at /sys/fs/cgroup");
        return;
    }
    let enabled = match mode.as_str() {
        "on" => true,
        "off" => false,
        other => panic!("IOLANE_TEST_PRIORITY={other:?}: want on or off"),
    };
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let config = if enabled {
        format!("[priority]\nenabled = true\n\n[priority.devices.nvme0n1]\niops = {iops}\n")
    } else {
        String::new()
    };
    // The default reconcile period (10 s): the pool gauges refresh with it, and their LVM
    // reports would take a vCPU of the emulated guest every 2 s.
    let mut d = Driver::start_with(Options {
        args: vec!["--metrics-address".into(), metrics.clone()],
        config: Some(config),
        ..Options::default()
    })
    .await;
    let mut pods = Pods::new();
    let streaming = publish_block(&mut d, "pv-s0", "streaming", &mut pods).await;
    let mut batch = Vec::new();
    for i in 1..=4 {
        batch.push(publish_block(&mut d, &format!("pv-b{i}"), "batch", &mut pods).await);
    }
    for p in std::iter::once(&streaming).chain(&batch) {
        run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", p.target.display()),
                "bs=1M",
                &format!("count={}", SPAN >> 20),
                "oflag=direct",
                "status=none",
            ],
        );
    }
    let out = d.root().join("bench");
    fs::create_dir_all(&out).expect("bench dir");
    let s = secs();
    let solo = load(&streaming, &out.join("s-solo.json"), s, Duration::ZERO);
    let batch_alone = load(&batch[0], &out.join("b-alone.json"), s, Duration::ZERO);
    // Batch saturates the device first; streaming joins a second later (the controller
    // reacts within a period or two).
    let lead = Duration::from_secs(1);
    let (together, batch_together) = std::thread::scope(|sc| {
        let b: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let json = out.join(format!("b{i}-together.json"));
                sc.spawn(move || load(p, &json, s + 2, Duration::ZERO))
            })
            .collect();
        let st = sc.spawn(|| load_sampled(&streaming, &out.join("s-together.json"), s, lead));
        // The controller's view every second while the load runs (for the record).
        let watch = sc.spawn(|| {
            let t0 = Instant::now();
            let mut lines = Vec::new();
            while t0.elapsed() < Duration::from_secs(s + 2) {
                let text = http_get(&metrics, "/metrics");
                let pick = |name: &str| {
                    text.lines()
                        .find(|l| l.starts_with(name))
                        .and_then(|l| l.rsplit(' ').next())
                        .unwrap_or("-")
                        .to_owned()
                };
                let caps: Vec<String> = batch
                    .iter()
                    .map(|p| {
                        let text = cat_io_max(&p.cgroup);
                        line_of(&text, &p.dev)
                            .and_then(|l| {
                                l.split_whitespace()
                                    .find_map(|kv| kv.strip_prefix("riops=").map(str::to_owned))
                            })
                            .unwrap_or_else(|| "none".to_owned())
                    })
                    .collect();
                lines.push(format!(
                    "{:>5} ms batch riops={} budget={} streaming_active={} streaming_use={} batch_use={} writes={}",
                    t0.elapsed().as_millis(),
                    caps.join("/"),
                    pick("iolane_priority_batch_budget_ratio"),
                    pick("iolane_priority_streaming_active"),
                    pick("iolane_priority_class_demand_ratio{device=\"nvme0n1\",class=\"streaming\"}"),
                    pick("iolane_priority_class_demand_ratio{device=\"nvme0n1\",class=\"batch\"}"),
                    pick("iolane_priority_writes_total"),
                ));
                std::thread::sleep(Duration::from_secs(1));
            }
            lines
        });
        let together = st.join().expect("streaming bench");
        if enabled {
            note(format!(
                "priority timeline (streaming starts at {} ms):\n{}",
                lead.as_millis(),
                watch.join().expect("watch").join("\n")
            ));
        }
        let b: Vec<f64> = b
            .into_iter()
            .map(|h| h.join().expect("batch bench"))
            .collect();
        (together, b)
    });
    let text = http_get(&metrics, "/metrics");
    let prio: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("iolane_priority_"))
        .collect();
    let (together, samples) = together;
    let keep = together / solo;
    let reaction = reaction_ms(&samples, 0.90 * solo)
        .map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms"));
    let share = batch_alone / solo;
    note(format!(
        "priority {mode} (device throttled to {iops} IOPS, {s} s runs): streaming solo {solo:.0} IOPS, \
         batch alone {batch_alone:.0} ({share:.2} of the device), all five: streaming {together:.0} \
         ({keep:.2} of solo; >= 0.90 of solo for 3 samples of 100 ms after {reaction}), batch {:.0} ({})",
        batch_together.iter().sum::<f64>(),
        batch_together
            .iter()
            .map(|b| format!("{b:.0}"))
            .collect::<Vec<_>>()
            .join(" + ")
    ));
    note(format!("/metrics priority series:\n{}", prio.join("\n")));
    if enabled {
        assert!(
            prio.iter()
                .any(|l| l.starts_with("iolane_priority_batch_budget_ratio{device=\"nvme0n1\"}")),
            "/metrics lacks the batch budget of nvme0n1"
        );
    }
    assert!(
        keep >= 0.90,
        "streaming kept {keep:.2} of its solo rate ({together:.0} of {solo:.0} IOPS) with four batch volumes loading; want >= 0.90"
    );
    assert!(
        share >= 0.85,
        "batch alone got {share:.2} of the device ({batch_alone:.0} of {solo:.0} IOPS); want >= 0.85"
    );
    for p in std::iter::once(&streaming).chain(&batch) {
        unpublish_and_delete(&mut d, p).await;
    }
}

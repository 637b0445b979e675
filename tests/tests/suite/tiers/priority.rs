//! The priority controllers (issue 9) end to end, on a disk whose capacity is IO-bound
//! (QEMU throttles the NVMe to `IOLANE_TEST_PRIORITY_IOPS`; `tests/vm/priority-vm.sh` from
//! `tests/vm/all.sh`, or `tests/vm/priority.sh` alone): the real `iolane node` on the lvm
//! backend with the **default tiers**, one streaming and four batch raw-block volumes
//! published into their own pod cgroups, `iolane bench` (4 KiB random reads, queue depth 8,
//! 100 ms samples) in each.
//!
//! `IOLANE_TEST_PRIORITY=on`: the default node config (`[priority]` on) plus the device's
//! capacity (`[priority.devices.nvme0n1] iops`, the node-config override of the
//! calibration). `off`: the pre-priority defaults (`[priority] enabled = false` and the old
//! static `[tiers.batch]` of 2000 IOPS), where the test is expected to FAIL (the issue).
//! Its lines (all measured in one node run, all reported before the first failing one):
//! - all five loading: streaming keeps >= 0.90 of its solo IOPS (the better of a solo run
//!   before and after) from +1 s of its start (the first second is the reaction line's;
//!   the whole run's mean is printed too), and its p99 latency from +1 s stays within
//!   1.5x of solo's from +1 s (the mean of the two solo runs' p99s;
//!   `iolane bench --latency-from-ms 1000` in every run: the
//!   first second, when batch's queued IO drains at the device, is the reaction line's
//!   too);
//! - the four batch volumes alone (streaming idle) get >= 0.85 of the device (the
//!   streaming solo rate);
//! - while streaming saturates the device, the batch class gets at least its floor (0.05
//!   of the device, within 20 %); how far above it is printed (blk-throttle overshoots the
//!   few IOPS per volume a 400-IOPS disk's floor gives);
//! - reaction, from the 100 ms samples lined up by the benches' start times: streaming
//!   at 0.90 of solo or more within 1 s of starting next to saturating batch, and batch
//!   back at 0.85 of the device or more within 2 s of streaming's end (the time is the
//!   start of the first 300 ms window whose mean reaches the line).
//!
//! Outside the VM (no lvm, no cgroup v2 io, or no throttled disk) it returns with a printed
//! reason, like the other `vm_*` tests.

use super::vm::{Pods, Published, http_get, publish_block, unpublish_and_delete};
use super::*;

/// Bytes of each volume the benches read (prefilled, so reads reach the disk: a thin LV's
/// unwritten blocks never do).
pub(super) const SPAN: u64 = 32 << 20;
/// The batch class's floor (`[priority] floor`, default).
const FLOOR: f64 = 0.05;

/// Seconds from the environment variable `var`, else `default`.
fn env_secs(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Seconds of each load run of the tier tests (`IOLANE_TEST_BENCH_SECS`, default 5).
pub(super) fn secs() -> u64 {
    env_secs("IOLANE_TEST_BENCH_SECS", 5)
}

/// Seconds of each run of the test with the default tiers (`IOLANE_TEST_PRIORITY_SECS`,
/// default 8): its lines are judged from +1 s, and a p99 over 7 s of a streaming job on
/// an 800-IOPS disk is the 56th-slowest of about 5600 IOs, where 4 s gave the 32nd, whose
/// spread between solo runs of one boot was 13-21 ms.
fn priority_secs() -> u64 {
    env_secs("IOLANE_TEST_PRIORITY_SECS", 8)
}

/// One bench run's figures.
pub(super) struct Run {
    pub(super) mean: f64,
    p99_us: f64,
    /// Wall clock of the first IO, ms since the epoch.
    pub(super) start_ms: u64,
    /// IOPS of every 100 ms.
    pub(super) samples: Vec<f64>,
}

/// Writes the first `SPAN` bytes of `p`'s volume, so that the benches' reads reach the
/// disk (a thin LV's unwritten blocks never do).
pub(super) fn prefill(p: &Published) {
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

/// `iolane bench` on `p` from its pod's cgroup, after `delay`.
pub(super) fn load(p: &Published, json: &Path, secs: u64, delay: Duration) -> Run {
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
            // The latency of the steady state: the first second is the reaction window.
            "--latency-from-ms",
            "1000",
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
    Run {
        mean: report["mean_iops"].as_f64().expect("mean_iops"),
        p99_us: report["latency"]["p99_us"].as_f64().expect("p99_us"),
        start_ms: report["started_unix_ms"].as_u64().expect("started_unix_ms"),
        samples,
    }
}

/// The batch class's IOPS per 100 ms slot from `t0_ms` on (the sum of the runs' samples
/// that fall in each slot).
pub(super) fn class_samples(runs: &[Run], t0_ms: u64) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for r in runs {
        for (i, v) in r.samples.iter().enumerate() {
            let at = r.start_ms + 100 * i as u64;
            if at + 50 < t0_ms {
                continue;
            }
            let slot = usize::try_from((at + 50 - t0_ms) / 100).unwrap_or(usize::MAX);
            if out.len() <= slot {
                out.resize(slot + 1, 0.0);
            }
            out[slot] += v;
        }
    }
    out
}

/// Milliseconds from the first sample to the start of the first window of 3 samples whose
/// mean reaches `line`.
fn reaction_ms(samples: &[f64], line: f64) -> Option<usize> {
    samples
        .windows(3)
        .position(|w| w.iter().sum::<f64>() / 3.0 >= line)
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
        format!("[priority.devices.nvme0n1]\niops = {iops}\n")
    } else {
        "[priority]\nenabled = false\n\n[tiers.batch]\npriority = \"batch\"\nread_iops = 2000\n\
         write_iops = 2000\nread_bps = 209715200\nwrite_bps = 209715200\n"
            .to_owned()
    };
    // The default reconcile period (10 s): the pool gauges refresh with it, and their LVM
    // reports would take a vCPU of the emulated guest every 2 s.
    let mut d = Driver::start_with(Options {
        args: vec!["--metrics-address".into(), metrics.clone()],
        // Each pass's inputs and budget (`priority: pass`), printed when the test fails;
        // `IOLANE_TEST_PRIORITY_LOG` sets another filter.
        log: Some(
            std::env::var("IOLANE_TEST_PRIORITY_LOG").unwrap_or_else(|_| {
                "info,csi_driver=debug,iops_controller::priority=debug".to_owned()
            }),
        ),
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
        prefill(p);
    }
    let out = d.root().join("bench");
    fs::create_dir_all(&out).expect("bench dir");
    let s = priority_secs();
    let solo_first = load(&streaming, &out.join("s-solo.json"), s, Duration::ZERO);
    // The batch class alone: all four at once.
    let alone: Vec<Run> = std::thread::scope(|sc| {
        let h: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let json = out.join(format!("b{i}-alone.json"));
                sc.spawn(move || load(p, &json, s, Duration::ZERO))
            })
            .collect();
        h.into_iter()
            .map(|h| h.join().expect("batch bench"))
            .collect()
    });
    let batch_alone: f64 = alone.iter().map(|r| r.mean).sum();
    // Batch saturates the device; streaming joins 1 s later for `s` seconds; batch goes on
    // 3 s after streaming's end.
    let lead = Duration::from_secs(1);
    let (together, batch_runs, timeline) = std::thread::scope(|sc| {
        let b: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let json = out.join(format!("b{i}-together.json"));
                sc.spawn(move || load(p, &json, s + 4, Duration::ZERO))
            })
            .collect();
        let st = sc.spawn(|| load(&streaming, &out.join("s-together.json"), s, lead));
        // The controller's view every second while the load runs (for the record).
        let watch = sc.spawn(|| {
            let t0 = Instant::now();
            let mut lines = Vec::new();
            while t0.elapsed() < Duration::from_secs(s + 4) {
                let text = http_get(&metrics, "/metrics");
                let pick = |name: &str| {
                    text.lines()
                        .find(|l| l.starts_with(name))
                        .and_then(|l| l.rsplit(' ').next())
                        .unwrap_or("-")
                        .to_owned()
                };
                // Processes in each batch pod's cgroup (its bench, while it runs).
                let procs: Vec<String> = batch
                    .iter()
                    .map(|p| {
                        fs::read_to_string(p.cgroup.join("cgroup.procs"))
                            .map(|t| t.lines().count().to_string())
                            .unwrap_or_else(|_| "-".to_owned())
                    })
                    .collect();
                let caps: Vec<String> = batch
                    .iter()
                    .map(|p| {
                        let text = fs::read_to_string(p.cgroup.join("io.max")).unwrap_or_default();
                        line_of(&text, &p.dev)
                            .and_then(|l| {
                                l.split_whitespace()
                                    .find_map(|kv| kv.strip_prefix("riops=").map(str::to_owned))
                            })
                            .unwrap_or_else(|| "none".to_owned())
                    })
                    .collect();
                lines.push(format!(
                    "{:>5} ms batch riops={} procs={} budget={} streaming_active={} streaming_use={} batch_use={}",
                    t0.elapsed().as_millis(),
                    caps.join("/"),
                    procs.join("/"),
                    pick("iolane_priority_batch_budget_ratio"),
                    pick("iolane_priority_streaming_active"),
                    pick("iolane_priority_class_demand_ratio{device=\"nvme0n1\",class=\"streaming\"}"),
                    pick("iolane_priority_class_demand_ratio{device=\"nvme0n1\",class=\"batch\"}"),
                ));
                std::thread::sleep(Duration::from_millis(300));
            }
            lines
        });
        let together = st.join().expect("streaming bench");
        let b: Vec<Run> = b
            .into_iter()
            .map(|h| h.join().expect("batch bench"))
            .collect();
        (together, b, watch.join().expect("watch"))
    });
    // Streaming solo again: the device's rate is the better of the two solo runs (a VM on a
    // loaded host stalls now and then; the better run is the stricter reference). Solo's
    // p99 is the mean of the two runs' p99s: a tail percentile of one run is the noisier
    // figure, and the better run by rate is not the one with the better tail more often
    // than not.
    let solo_last = load(&streaming, &out.join("s-solo-end.json"), s, Duration::ZERO);
    let solo_means = (solo_first.mean, solo_last.mean);
    let solo_p99s = (solo_first.p99_us, solo_last.p99_us);
    let solo_p99_us = (solo_p99s.0 + solo_p99s.1) / 2.0;
    let solo = if solo_last.mean > solo_first.mean {
        solo_last
    } else {
        solo_first
    };
    note(format!(
        "priority timeline (streaming starts at {} ms):\n{}",
        lead.as_millis(),
        timeline.join("\n")
    ));
    let text = http_get(&metrics, "/metrics");
    let prio: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("iolane_priority_"))
        .collect();

    // The figures.
    let device = solo.mean;
    // Streaming's share is judged once the reaction window has passed (from +1 s, as the
    // floor is): the first second is the reaction line's (streaming at 0.90 within 1 s). The
    // whole run's mean, which also counts the reaction, is printed beside it.
    let keep_run = together.mean / solo.mean;
    let steady_s: Vec<f64> = together.samples.iter().copied().skip(10).collect();
    let keep = steady_s.iter().sum::<f64>() / steady_s.len().max(1) as f64 / solo.mean;
    let p99x = together.p99_us / solo_p99_us;
    let share_alone = batch_alone / device;
    let s_start = together.start_ms;
    let s_end = s_start + 100 * together.samples.len() as u64;
    // Batch per 100 ms from streaming's start, and from its end.
    let during = class_samples(&batch_runs, s_start);
    let steady: Vec<f64> = during
        .iter()
        .copied()
        .skip(10)
        .take(together.samples.len().saturating_sub(10))
        .collect();
    let batch_floor = steady.iter().sum::<f64>() / steady.len().max(1) as f64 / device;
    let after = class_samples(&batch_runs, s_end);
    let up = reaction_ms(&together.samples, 0.90 * solo.mean);
    let regain = reaction_ms(&after, 0.85 * device);
    let show = |v: Option<usize>| v.map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms"));
    note(format!(
        "priority {mode} (device throttled to {iops} IOPS, {s} s runs):\n  \
         streaming solo {:.0} IOPS (the better of {:.0} before and {:.0} after), p99 from +1 s {:.1} ms (the mean of {:.1} and {:.1})\n  \
         batch alone (4 volumes) {batch_alone:.0} IOPS = {share_alone:.2} of the device\n  \
         all five: streaming {:.0} IOPS = {keep_run:.2} of solo over its run, {keep:.2} from +1 s, p99 from +1 s {:.1} ms = {p99x:.2}x solo; \
         batch {:.0} IOPS over its whole run ({})\n  \
         batch while streaming ran (from +1 s): {batch_floor:.3} of the device (floor {FLOOR})\n  \
         streaming >= 0.90 of solo after {}; batch >= 0.85 of the device {} after streaming stopped\n  \
         streaming per 100 ms, first 2 s: {}",
        solo.mean,
        solo_means.0,
        solo_means.1,
        solo_p99_us / 1000.0,
        solo_p99s.0 / 1000.0,
        solo_p99s.1 / 1000.0,
        together.mean,
        together.p99_us / 1000.0,
        batch_runs.iter().map(|r| r.mean).sum::<f64>(),
        batch_runs
            .iter()
            .map(|r| format!("{:.0}", r.mean))
            .collect::<Vec<_>>()
            .join(" + "),
        show(up),
        show(regain),
        together
            .samples
            .iter()
            .take(20)
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" "),
    ));
    note(format!("/metrics priority series:\n{}", prio.join("\n")));

    let mut failed = Vec::new();
    let mut check = |ok: bool, line: String| {
        if !ok {
            failed.push(line);
        }
    };
    if enabled {
        check(
            prio.iter()
                .any(|l| l.starts_with("iolane_priority_batch_budget_ratio{device=\"nvme0n1\"}")),
            "/metrics lacks the batch budget of nvme0n1".to_owned(),
        );
    }
    check(
        keep >= 0.90,
        format!(
            "streaming kept {keep:.2} of its solo rate from +1 s with four batch volumes loading; want >= 0.90"
        ),
    );
    check(
        p99x <= 1.5,
        format!(
            "streaming's p99 from +1 s was {p99x:.2}x solo with four batch volumes loading; want <= 1.5x"
        ),
    );
    check(
        share_alone >= 0.85,
        format!("batch alone got {share_alone:.2} of the device; want >= 0.85"),
    );
    // The floor: never starved (at least the floor, within 20 %). Above it, blk-throttle
    // lets a volume held to a few IOPS run at 2-3x its line (the floor of a 400-IOPS disk
    // is 5 IOPS per volume here; a real NVMe's is thousands), so the upper side is printed,
    // and bounded by streaming's own line above.
    check(
        batch_floor >= 0.8 * FLOOR,
        format!(
            "batch got {batch_floor:.3} of the device while streaming saturated it; want at least the floor {FLOOR} (within 20 %)"
        ),
    );
    note(format!(
        "floor: batch {batch_floor:.3} of the device = {:.2}x the floor {FLOOR} (within 20 %: {})",
        batch_floor / FLOOR,
        if (batch_floor / FLOOR - 1.0).abs() <= 0.20 {
            "yes"
        } else {
            "NO"
        }
    ));
    check(
        up.is_some_and(|ms| ms <= 1000),
        format!(
            "streaming reached 0.90 of solo after {}; want <= 1 s",
            show(up)
        ),
    );
    check(
        regain.is_some_and(|ms| ms <= 2000),
        format!(
            "batch regained 0.85 of the device {} after streaming stopped; want <= 2 s",
            show(regain)
        ),
    );
    assert!(
        failed.is_empty(),
        "priority {mode}: lines not met:\n  {}",
        failed.join("\n  ")
    );
    for p in std::iter::once(&streaming).chain(&batch) {
        unpublish_and_delete(&mut d, p).await;
    }
}

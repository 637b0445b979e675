//! `vm_retier_*`: live re-tiering under load, in the VM (`tests/vm/tiers.sh`: the lvm
//! backend, the real cgroup root). A batch volume runs `iolane bench` (random 4 KiB
//! O_DIRECT reads, per-100 ms samples) in its pod's cgroup while ControllerModifyVolume on
//! the node's socket moves it to streaming (uncapped) and back. The node sees the change
//! when the call arrives (in a cluster its PV watch hands it the same request:
//! tests/k8s/retier.sh measures that part); the samples show when the load's rate followed.

use super::vm::{Pods, publish_block, unpublish_and_delete};
use super::*;

/// Length of the load run, seconds: capped, uncapped and capped again, with margin (an
/// `lvchange` can take seconds in the emulated VM on a loaded host).
const LOAD_SECS: u64 = 20;
/// Sampling interval of the load, milliseconds.
const SAMPLE_MS: u64 = 100;
/// How long after the node saw a change the load's rate must have followed.
const FOLLOW_MS: u64 = 1000;

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("milliseconds fit")
}

/// Reads the pod completed on `dev`, from its cgroup's `io.stat`.
fn rios(cgroup: &Path, dev: &str) -> u64 {
    let text = fs::read_to_string(cgroup.join("io.stat")).unwrap_or_default();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(dev))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("rios=").and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// ControllerModifyVolume `{iolane.dev/tier: tier}` on the node socket; returns when the
/// call was sent (ms since the epoch) and how long it took.
async fn modify(d: &mut Driver, id: &str, tier: &str) -> (u64, Duration) {
    let sent = now_ms();
    let start = Instant::now();
    ok(
        d.controller
            .controller_modify_volume(csi::ControllerModifyVolumeRequest {
                volume_id: id.to_owned(),
                mutable_parameters: [(TIER_KEY.to_owned(), tier.to_owned())].into(),
                ..Default::default()
            })
            .await,
        &format!("ControllerModifyVolume {tier}"),
    );
    (sent, start.elapsed())
}

/// The first sample (index) starting at or after `from_ms` whose rate satisfies `ok`,
/// and how long after `from_ms` that sample ended.
fn follow(
    rates: &[f64],
    started: u64,
    from_ms: u64,
    ok: impl Fn(f64) -> bool,
) -> Option<(usize, u64)> {
    rates.iter().enumerate().find_map(|(i, r)| {
        let begin = started + i as u64 * SAMPLE_MS;
        (begin >= from_ms && ok(*r)).then(|| (i, begin + SAMPLE_MS - from_ms))
    })
}

fn mean(rates: &[f64]) -> f64 {
    if rates.is_empty() {
        return 0.0;
    }
    rates.iter().sum::<f64>() / rates.len() as f64
}

#[tokio::test]
async fn vm_retier_moves_a_running_load_to_uncapped_and_back_within_a_second() {
    require_vm!();
    let mut d = Driver::start_with(Options {
        args: vec!["--reconcile-period".into(), RECONCILE_SECS.to_string()],
        config: Some(TIERS.to_owned()),
        ..Options::default()
    })
    .await;
    let mut pods = Pods::new();
    let vol = publish_block(&mut d, "pv-retier", "batch", &mut pods).await;
    let json = d.root().join("retier-bench.json");
    let bin = binary();
    let args: Vec<String> = [
        "--log",
        "warn",
        "bench",
        "--target",
        &vol.target.to_string_lossy(),
        "--pattern",
        "randread",
        "--duration",
        &LOAD_SECS.to_string(),
        "--interval-ms",
        &SAMPLE_MS.to_string(),
        "--cgroup",
        &vol.cgroup.to_string_lossy(),
        "--json",
        &json.to_string_lossy(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let load = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&bin.to_string_lossy(), &args)
    });

    // Capped for about 2 s (400 reads at 200 IOPS), then uncapped.
    let reads = |n: u64| {
        let (cgroup, dev) = (vol.cgroup.clone(), vol.dev.clone());
        let base = rios(&cgroup, &dev);
        move || rios(&cgroup, &dev) >= base + n
    };
    assert!(
        poll(Duration::from_secs(8), reads(2 * BATCH_IOPS)).await,
        "the load did not start"
    );
    let (up, up_rpc) = modify(&mut d, &vol.id, "streaming").await;
    // Uncapped for a while: 8 s of the cap's worth of reads, in at most 6 s (a capped
    // volume could not).
    assert!(
        poll(Duration::from_secs(6), reads(8 * BATCH_IOPS)).await,
        "the load did not speed up after the re-tier to streaming: io.max {:?}",
        cat_io_max(&vol.cgroup)
    );
    let (down, down_rpc) = modify(&mut d, &vol.id, "batch").await;
    let text = cat_io_max(&vol.cgroup);
    assert!(
        line_of(&text, &vol.dev).is_some_and(|l| l.contains("riops=200")),
        "batch caps not back: {text:?}"
    );
    load.join().expect("the load thread");

    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json).expect("read the bench JSON"))
            .expect("bench JSON");
    let started = report["started_unix_ms"].as_u64().expect("started_unix_ms");
    let scale = 1000.0 / SAMPLE_MS as f64;
    let rates: Vec<f64> = report["intervals"]
        .as_array()
        .expect("intervals")
        .iter()
        .map(|s| s["read_iops"].as_f64().unwrap_or(0.0) * scale)
        .collect();
    let cap = BATCH_IOPS as f64;
    let before: Vec<f64> = (0..rates.len())
        .filter(|i| {
            let t = started + *i as u64 * SAMPLE_MS;
            t >= started + 500 && t + SAMPLE_MS <= up
        })
        .map(|i| rates[i])
        .collect();
    let lifted = follow(&rates, started, up, |r| r > 3.0 * cap);
    // Capped again: a sample at or below 1.5x the cap that starts a 500 ms stretch whose
    // mean is too (a lone low sample can be the emulated VM stalling the load).
    let window = |i: usize| mean(&rates[i..rates.len().min(i + 5)]);
    let capped_again = rates.iter().enumerate().find_map(|(i, r)| {
        let begin = started + i as u64 * SAMPLE_MS;
        (begin >= down && *r <= 1.5 * cap && window(i) <= 1.5 * cap)
            .then(|| (i, begin + SAMPLE_MS - down))
    });
    let between: Vec<f64> = match lifted {
        Some((i, _)) => rates[i..]
            .iter()
            .enumerate()
            .take_while(|(j, _)| started + (i + j) as u64 * SAMPLE_MS + SAMPLE_MS <= down)
            .map(|(_, r)| *r)
            .collect(),
        None => Vec::new(),
    };
    let after: Vec<f64> = match capped_again {
        Some((i, _)) => rates[i..].to_vec(),
        None => Vec::new(),
    };
    let around = |t: u64| -> Vec<String> {
        rates
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let b = started + *i as u64 * SAMPLE_MS;
                b + 500 >= t && b <= t + 1500
            })
            .map(|(i, r)| {
                format!(
                    "{:+}ms:{r:.0}",
                    (started + i as u64 * SAMPLE_MS) as i64 - t as i64
                )
            })
            .collect()
    };
    note(format!(
        "figures: capped {:.0} IOPS (mean of {} samples) for a cap of {BATCH_IOPS}; to streaming: RPC {up_rpc:?}, the rate above {:.0} IOPS {} after the node saw it; uncapped {:.0} IOPS (mean of {} samples); to batch: RPC {down_rpc:?}, the rate at or below {:.0} IOPS {} after; capped again {:.0} IOPS (mean of {} samples)",
        mean(&before),
        before.len(),
        3.0 * cap,
        lifted.map_or("never".to_owned(), |(_, ms)| format!("{ms} ms")),
        mean(&between),
        between.len(),
        1.5 * cap,
        capped_again.map_or("never".to_owned(), |(_, ms)| format!("{ms} ms")),
        mean(&after),
        after.len(),
    ));
    note(format!(
        "samples around the change to streaming (IOPS): {}",
        around(up).join(" ")
    ));
    note(format!(
        "samples around the change back to batch (IOPS): {}",
        around(down).join(" ")
    ));
    let m = mean(&before);
    assert!(
        (0.7 * cap..=1.3 * cap).contains(&m),
        "capped before the change: {m:.0} IOPS for a cap of {cap}"
    );
    let (_, up_ms) = lifted.expect("the rate never went above 3x the cap after the change");
    assert!(
        up_ms <= FOLLOW_MS,
        "uncapped {up_ms} ms after the node saw the change"
    );
    let (_, down_ms) = capped_again.expect("the rate never came back to the cap");
    assert!(
        down_ms <= FOLLOW_MS,
        "capped again {down_ms} ms after the node saw the change"
    );
    assert!(
        mean(&between) > 3.0 * cap,
        "uncapped phase averaged {:.0} IOPS",
        mean(&between)
    );
    let m = mean(&after);
    assert!(
        !after.is_empty() && m <= 1.3 * cap,
        "capped again: {m:.0} IOPS for a cap of {cap}"
    );

    unpublish_and_delete(&mut d, &vol).await;
    drop(pods);
    d.assert_no_leaks("after the re-tier test").await;
}

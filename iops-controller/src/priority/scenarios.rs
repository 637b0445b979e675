//! Scenario tests of the priority controller in closed loop with the simulated device
//! (`sim`): the done-when lines of issue 9 as the law promises them, period by period,
//! plus direct tests of the controller's bookkeeping and parameter checks.

use std::time::Duration;

use crate::tier::{Limit, Limits, Priority};

use super::controller::{Counters, DeviceController, Params, PublicationSample};
use super::model::DeviceModel;
use super::sim::{Sim, mean, mean_sum};

const C: f64 = 1000.0;
const INF: f64 = f64::INFINITY;
const S: Priority = Priority::Streaming;
const B: Priority = Priority::Batch;

/// One streaming job (demand `streaming`) and four unbounded batch jobs.
fn five(streaming: f64) -> Sim {
    let mut sim = Sim::new(C, C, Params::default());
    sim.add(S, streaming);
    for _ in 0..4 {
        sim.add(B, INF);
    }
    sim
}

const BATCH: [usize; 4] = [1, 2, 3, 4];

/// The first period (counted from 1) at which `f` holds for this and the next `k - 1`.
fn first_sustained(samples: &[Vec<f64>], k: usize, f: impl Fn(&[f64]) -> bool) -> Option<usize> {
    (0..samples.len().saturating_sub(k - 1))
        .find(|i| samples[*i..*i + k].iter().all(|s| f(s)))
        .map(|i| i + 1)
}

#[test]
fn batch_alone_gets_the_device_and_splits_it_fairly() {
    let mut sim = five(0.0);
    let warm = sim.run(20);
    let first = first_sustained(&warm, 5, |s| {
        BATCH.iter().map(|j| s[*j]).sum::<f64>() >= 0.85 * C
    });
    assert!(
        first.is_some_and(|p| p <= 20),
        "batch never had the device: {first:?}"
    );
    let steady = sim.run(20);
    let total = mean_sum(&steady, &BATCH);
    assert!(total >= 0.95 * C, "batch alone got {total} of {C}");
    for j in BATCH {
        let m = mean(&steady, j);
        assert!(
            (m - total / 4.0).abs() <= 0.05 * total / 4.0,
            "job {j}: {m} of {total}"
        );
    }
}

#[test]
fn streaming_is_protected_within_a_second_and_batch_keeps_its_floor() {
    let mut sim = five(0.0);
    sim.run(30);
    sim.jobs[0].demand = INF;
    // 20 periods to react and settle, then four rotations: at the floor the leftover
    // throttle unit rotates between the batch volumes every `rotate_periods` passes, so
    // four of them are fair to each.
    let rotate = usize::try_from(Params::default().rotate_periods).unwrap();
    let after = sim.run(20 + 4 * rotate);
    // Solo, streaming would get the whole device.
    // One period served under the old limits, the pass that sees streaming drops batch
    // to its floor, the next period is served under the floor.
    let react = first_sustained(&after, 10, |s| s[0] >= 0.90 * C);
    assert!(
        react.is_some_and(|p| p <= 3),
        "streaming back to 0.90 after {react:?} periods"
    );
    let steady = &after[20..];
    let s = mean(steady, 0);
    assert!(s >= 0.90 * C, "streaming kept {s}");
    let batch = mean_sum(steady, &BATCH);
    let floor = Params::default().floor * C;
    assert!(
        (batch - floor).abs() <= 0.2 * floor,
        "batch floor {floor}, got {batch}"
    );
    // The floor is split fairly too.
    for j in BATCH {
        assert!((mean(steady, j) - batch / 4.0).abs() <= 0.1 * batch / 4.0 + 1.0);
    }
}

#[test]
fn batch_regains_the_device_within_two_seconds_of_streaming_stopping() {
    let mut sim = five(INF);
    sim.run(30);
    sim.jobs[0].demand = 0.0;
    let after = sim.run(30);
    let back = first_sustained(&after, 5, |s| {
        BATCH.iter().map(|j| s[*j]).sum::<f64>() >= 0.85 * C
    });
    assert!(
        back.is_some_and(|p| p <= 20),
        "batch regained the device after {back:?} periods"
    );
}

#[test]
fn batch_uses_what_a_partial_streaming_load_leaves() {
    // (streaming demand, least batch total expected)
    let p = Params::default();
    for (demand, batch_min) in [
        (100.0, 0.75),
        (400.0, 0.45),
        (700.0, 0.15),
        (880.0, p.floor),
    ] {
        let mut sim = five(demand);
        sim.run(40);
        let steady = sim.run(20);
        let s = mean(&steady, 0);
        assert!(s >= 0.98 * demand, "streaming wanted {demand}, got {s}");
        let batch = mean_sum(&steady, &BATCH);
        let want = batch_min * C - 0.03 * C;
        assert!(batch >= want, "streaming {demand}: batch {batch} < {want}");
        // Never more than what streaming leaves.
        assert!(batch + s <= C + 1.0);
    }
}

#[test]
fn steady_load_gives_steady_limits() {
    let rotate = u64::from(Params::default().rotate_periods);
    for demand in [0.0, 300.0, 600.0, INF] {
        let mut sim = five(demand);
        sim.run(50);
        let mut before = sim.last.clone().expect("ran");
        let mut changes = 0;
        for n in 0..50 {
            sim.tick();
            let now = sim.last.clone().expect("ran");
            assert_eq!(now.report.batch_budget, before.report.batch_budget);
            if now.limits != before.limits {
                // Only at the floor (streaming saturating: 12.5 IOPS per volume, a
                // throttle unit and a quarter) does the leftover unit move, once per
                // rotation, between volumes, the class total unchanged.
                assert!(
                    demand.is_infinite(),
                    "streaming {demand}: limits moved at pass {n}"
                );
                let total = |d: &super::controller::Decision<usize>| {
                    d.limits
                        .iter()
                        .filter_map(|(_, l)| l.read_iops.get())
                        .sum::<u64>()
                };
                assert_eq!(total(&now), total(&before), "pass {n}");
                changes += 1;
            }
            before = now;
        }
        assert!(
            changes <= 50 / rotate + 1,
            "streaming {demand}: {changes} changes"
        );
    }
}

#[test]
fn a_small_batch_job_gets_its_demand_and_the_others_split_the_rest() {
    let mut sim = Sim::new(C, C, Params::default());
    sim.add(S, 0.0);
    let small = sim.add(B, 50.0);
    let big = [sim.add(B, INF), sim.add(B, INF), sim.add(B, INF)];
    sim.run(30);
    let steady = sim.run(20);
    assert!(
        mean(&steady, small) >= 0.97 * 50.0,
        "small got {}",
        mean(&steady, small)
    );
    let each = (C - 50.0) / 3.0;
    for j in big {
        let m = mean(&steady, j);
        assert!((m - each).abs() <= 0.05 * each, "job {j}: {m}, fair {each}");
    }
}

#[test]
fn ceilings_stay_hard_caps() {
    let ceiling = Limits {
        read_iops: Limit::per_sec(100),
        ..Limits::UNLIMITED
    };
    let mut sim = Sim::new(C, C, Params::default());
    let streaming = sim.add_job(
        S,
        0.0,
        0.0,
        Limits {
            read_iops: Limit::per_sec(300),
            ..Limits::UNLIMITED
        },
    );
    let capped = sim.add_job(B, INF, 0.0, ceiling);
    let free = sim.add(B, INF);
    for n in 0..60 {
        if n == 30 {
            sim.jobs[streaming].demand = INF;
        }
        let served = sim.tick();
        let d = sim.last.as_ref().expect("ran");
        let l = d.limits[capped].1;
        assert!(l.read_iops.get().is_some_and(|v| v <= 100), "pass {n}: {l}");
        assert!(served[capped] <= 100.0 + 1e-9);
        // A streaming ceiling is written as it is, whatever the load.
        assert_eq!(
            d.limits[streaming].1,
            Limits {
                read_iops: Limit::per_sec(300),
                ..Limits::UNLIMITED
            }
        );
        if (20..30).contains(&n) {
            // What the ceiling leaves goes to the other batch job.
            assert!(
                served[free] >= 0.85 * C - 100.0,
                "pass {n}: {}",
                served[free]
            );
        }
    }
}

#[test]
fn writes_are_limited_by_the_write_caps() {
    let mut sim = Sim::new(C, C, Params::default());
    sim.add(S, INF);
    let writer = sim.add_job(B, INF, 1.0, Limits::UNLIMITED);
    sim.run(30);
    let d = sim.last.as_ref().expect("ran");
    let l = d.limits[writer].1;
    let floor = Params::default().floor * C;
    let w = l.write_iops.get().expect("a write cap") as f64;
    let r = l.read_iops.get().expect("a read cap") as f64;
    assert!((w - floor).abs() <= 0.2 * floor, "write cap {w}");
    // The minor direction's minimum share, to the nearest whole throttle unit.
    let p = Params::default();
    assert!(
        r <= p.min_direction * floor + p.throttle_unit,
        "read cap {r}"
    );
}

#[test]
fn capacity_is_corrected_online() {
    // The calibration says twice what the device does: the floor would be twice too big.
    let mut sim = Sim::new(C, 2.0 * C, Params::default());
    sim.add(S, INF);
    for _ in 0..4 {
        sim.add(B, INF);
    }
    sim.run(100);
    let scale = sim.last.as_ref().expect("ran").report.capacity_scale;
    assert!((scale - 0.5).abs() <= 0.06 * 0.5, "scale {scale}");
    let steady = sim.run(20);
    assert!(
        mean(&steady, 0) >= 0.9 * C,
        "streaming {}",
        mean(&steady, 0)
    );
    // The calibration says half: batch alone must still get the device once the model
    // has been raised (the probe lets it do 1.25x the model, one correction per 1 s
    // window; a calibrated device needs none of this).
    let mut sim = Sim::new(C, 0.5 * C, Params::default());
    sim.add(S, 0.0);
    for _ in 0..4 {
        sim.add(B, INF);
    }
    let warm = sim.run(80);
    let first = first_sustained(&warm, 5, |s| {
        BATCH.iter().map(|j| s[*j]).sum::<f64>() >= 0.85 * C
    });
    assert!(
        first.is_some_and(|p| p <= 60),
        "batch reached the device after {first:?}"
    );
}

#[test]
fn an_idle_batch_job_wakes_into_a_fair_share() {
    let mut sim = five(0.0);
    let late = sim.add(B, 0.0);
    sim.run(20);
    let d = sim.last.as_ref().expect("ran");
    let wake = d.limits[late].1.read_iops.get().expect("capped") as f64;
    assert!(
        (wake - Params::default().wake_share * C).abs() <= 1.0,
        "idle cap {wake}"
    );
    sim.jobs[late].demand = INF;
    let after = sim.run(10);
    let fair = C / 5.0;
    assert!(
        after[4][late] >= 0.9 * fair,
        "woken job after 5 periods: {}",
        after[4][late]
    );
}

#[test]
fn a_noisy_device_does_not_hand_streaming_budget_to_batch() {
    // Per period the device serves 0.6-1.4x its capacity, so a saturating streaming
    // job's rate swings; its standing queue still says it wants more: batch stays at
    // its floor, whatever one period's rate suggests.
    let mut sim = five(INF);
    sim.noise = Some(0x2545_f491_4f6c_dd1d);
    sim.run(20);
    let steady = sim.run(100);
    let s = mean(&steady, 0);
    let batch = mean_sum(&steady, &BATCH);
    assert!(s / (s + batch) >= 0.93, "streaming {s}, batch {batch}");
    // Batch holds its floor (within 20 %), no more: without the backlog test the
    // swings read as room for batch (measured: 66 instead of 47 here).
    let floor = Params::default().floor * C;
    assert!(
        (batch - floor).abs() <= 0.2 * floor,
        "batch {batch}, floor {floor}"
    );
    // A paced streaming job on the same noisy device: the rest goes to batch; when the
    // device serves 0.6x, streaming's queue stands and batch is cut again (without the
    // backlog test streaming got 0.85 of its demand here).
    let mut sim = five(300.0);
    sim.noise = Some(0x2545_f491_4f6c_dd1d);
    sim.run(20);
    let steady = sim.run(100);
    assert!(mean(&steady, 0) >= 0.9 * 300.0, "{}", mean(&steady, 0));
    // Batch gets well above its floor, if not all that streaming leaves (~0.55).
    assert!(
        mean_sum(&steady, &BATCH) >= 0.2 * C,
        "{}",
        mean_sum(&steady, &BATCH)
    );
}

#[test]
fn works_from_counters_alone() {
    let mut sim = five(0.0);
    sim.in_flight = false;
    sim.run(30);
    sim.jobs[0].demand = INF;
    let after = sim.run(30);
    let react = first_sustained(&after, 10, |s| s[0] >= 0.90 * C);
    assert!(react.is_some_and(|p| p <= 10), "{react:?}");
}

fn sample(key: &'static str, class: Priority, rios: u64) -> PublicationSample<&'static str> {
    PublicationSample {
        key,
        class,
        counters: Counters {
            rios,
            rbytes: rios * 4096,
            ..Counters::default()
        },
        in_flight: None,
        queue_ms: None,
        ceiling: Limits::UNLIMITED,
    }
}

#[test]
fn bookkeeping_counter_resets_and_forgotten_publications() {
    let mut ctl =
        DeviceController::new(DeviceModel::uniform_iops(C), Params::default()).expect("valid");
    let t = |ms: u64| Duration::from_millis(ms);
    let d = ctl.pass(t(0), &[sample("a", B, 100), sample("s", S, 0)], None);
    assert_eq!(d.limits.iter().map(|l| l.0).collect::<Vec<_>>(), ["a", "s"]);
    assert_eq!(d.limits[1].1, Limits::UNLIMITED);
    let d = ctl.pass(t(100), &[sample("a", B, 150), sample("s", S, 0)], None);
    assert!((d.report.batch_use - 0.5).abs() < 1e-9, "{:?}", d.report);
    // A counter that goes backwards (cgroup recreated) counts as no IO, not a huge one:
    // the smoothed use falls.
    let d = ctl.pass(t(200), &[sample("a", B, 3), sample("s", S, 0)], None);
    assert!(d.report.batch_use < 0.5, "{:?}", d.report);
    // Streaming did IO: the batch budget drops to the floor at once.
    let d = ctl.pass(t(300), &[sample("a", B, 50), sample("s", S, 10)], None);
    assert!(d.report.streaming_active);
    assert_eq!(d.report.batch_budget, Params::default().floor);
    // "a" is gone: forgotten, so when it comes back its first pass is a fresh start.
    let d = ctl.pass(t(400), &[sample("s", S, 20)], None);
    assert_eq!(d.limits.len(), 1);
    let d = ctl.pass(
        t(500),
        &[sample("a", B, 1_000_000), sample("s", S, 30)],
        None,
    );
    assert_eq!(d.report.batch_use, 0.0);
    // The same time twice: no rates, nothing divided by zero.
    let d = ctl.pass(
        t(500),
        &[sample("a", B, 1_000_100), sample("s", S, 30)],
        None,
    );
    assert!(d.report.batch_use.is_finite());
}

#[test]
fn params_are_checked_naming_the_field() {
    let p = Params::default();
    // (params, field named)
    let table = [
        (Params { floor: 1.0, ..p }, "floor"),
        (Params { floor: -0.1, ..p }, "floor"),
        (
            Params {
                headroom: f64::NAN,
                ..p
            },
            "headroom",
        ),
        (
            Params {
                floor: 0.5,
                headroom: 0.5,
                ..p
            },
            "floor",
        ),
        (
            Params {
                demand_margin: 0.5,
                ..p
            },
            "demand_margin",
        ),
        (Params { probe: -1.0, ..p }, "probe"),
        (Params { growth: 2.0, ..p }, "growth"),
    ];
    for (params, field) in table {
        let err = params.validate().expect_err(field);
        assert_eq!(err.field, field, "{err}");
    }
    assert_eq!(p.validate(), Ok(()));
    let bad = DeviceModel {
        read_iops: 0.0,
        ..DeviceModel::uniform_iops(C)
    };
    let err = DeviceController::<u32>::new(bad, p).expect_err("zero capacity");
    assert_eq!(err.field, "capacity");
}

/// The batch class's share of the device and streaming's, one streaming and four batch
/// closed-loop jobs on a `c`-IOPS device whose limits blk-throttle enforces.
fn floor_under_blk_throttle(c: f64, params: Params) -> (f64, f64) {
    let mut sim = Sim::new(c, c, params);
    sim.blk_throttle = true;
    sim.add(S, INF);
    for _ in 0..4 {
        sim.add(B, INF);
    }
    sim.run(40);
    let steady = sim.run(200);
    (mean_sum(&steady, &BATCH) / c, mean(&steady, 0) / c)
}

#[test]
fn the_floor_holds_at_a_few_iops_per_volume_under_blk_throttle() {
    // Without whole throttle units (the law before): 0.05 of 400 IOPS is 5 IOPS per
    // volume, and blk-throttle gives 2.5 (the trim loses the half IO a slice is worth);
    // of 1500, 18 each gives about 10: the class runs at about 0.03, below the floor's
    // 0.04-0.06, as the CI disks showed (0.032).
    let off = Params {
        throttle_unit: 0.0,
        ..Params::default()
    };
    for c in [400.0, 1500.0] {
        let (batch, streaming) = floor_under_blk_throttle(c, off);
        println!("blk-throttle, {c} IOPS, no units: batch {batch:.4}, streaming {streaming:.3}");
        assert!(batch < 0.04, "{c} IOPS, no units: batch {batch:.3}");
        assert!(
            streaming >= 0.90,
            "{c} IOPS, no units: streaming {streaming:.3}"
        );
    }
    // With them: within 20 % of the floor, streaming keeps its 0.90.
    for c in [400.0, 1500.0, 10_000.0] {
        let (batch, streaming) = floor_under_blk_throttle(c, Params::default());
        println!("blk-throttle, {c} IOPS, whole units: batch {batch:.4}, streaming {streaming:.3}");
        assert!(
            (0.04..=0.06).contains(&batch),
            "{c} IOPS: batch {batch:.4} of the device, floor 0.05"
        );
        assert!(streaming >= 0.90, "{c} IOPS: streaming {streaming:.3}");
    }
}

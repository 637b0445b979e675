//! A simulated device for the priority controller's scenario tests (test-only): jobs with
//! a class, a demand (IOPS, or unbounded like fio at a fixed queue depth) and a read/write
//! mix share a device of fixed true capacity, each held by the `io.max` limits the
//! controller gave it at the previous pass. When the jobs want more than the device
//! serves, it serves them max-min fairly (equal queue depths), as the throttled NVMe in
//! the lab VM does within a few percent.

use std::time::Duration;

use crate::tier::{Limits, Priority};

use super::controller::{
    Counters, Decision, DeviceController, DeviceSample, Params, PublicationSample,
};
use super::model::DeviceModel;
use super::split::water_fill;

/// The sampling period of the scenarios.
pub const PERIOD: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Job {
    pub class: Priority,
    /// IOPS wanted; `f64::INFINITY` for a closed-loop job that takes all it is given.
    pub demand: f64,
    pub write_fraction: f64,
    pub ceiling: Limits,
    pub limits: Limits,
    counters: Counters,
    carry: (f64, f64),
    queue_ms: f64,
    /// blk-throttle's state for reads and writes (with [`Sim::blk_throttle`]).
    throttle: [Throttle; 2],
}

/// Jiffies per second and per blk-throttle slice (Debian's HZ = 250; 100 ms slices).
const HZ: u64 = 250;
const SLICE: u64 = 25;

/// blk-throttle's IOPS accounting for one direction of a group that always has IO
/// queued (a closed-loop job), as Linux 6.1 does it: the IOs allowed since the slice
/// start are `limit x elapsed / HZ` with the elapsed time rounded up to whole slices,
/// rounded down; after each dispatch the whole slices elapsed are trimmed off the start
/// and `limit x slice x n / HZ` IOs (rounded down) off the count, so the fraction of an
/// IO a slice is worth is lost at each trim; a new limit starts a new slice.
#[derive(Debug, Clone, Copy, Default)]
struct Throttle {
    limit: Option<u64>,
    start: u64,
    disp: u64,
}

impl Throttle {
    fn set(&mut self, limit: Option<u64>, now: u64) {
        if limit != self.limit {
            self.limit = limit;
            self.start = now;
            self.disp = 0;
        }
    }

    /// IOs released in jiffies `[from, to)`; `None` when unlimited.
    fn release(&mut self, from: u64, to: u64) -> Option<u64> {
        let limit = self.limit?;
        let mut n = 0;
        for j in from..to {
            loop {
                let elapsed = j - self.start;
                let rounded = (elapsed + 1).div_ceil(SLICE) * SLICE;
                if self.disp + 1 > limit * rounded / HZ {
                    break;
                }
                self.disp += 1;
                n += 1;
                let slices = (j - self.start) / SLICE;
                if slices > 0 {
                    self.disp = self.disp.saturating_sub(limit * SLICE * slices / HZ);
                    self.start += slices * SLICE;
                }
            }
        }
        Some(n)
    }
}

#[derive(Debug)]
pub struct Sim {
    /// What the device really serves, IOPS (4 KiB IOs, reads and writes alike).
    pub true_iops: f64,
    pub jobs: Vec<Job>,
    pub ctl: DeviceController<usize>,
    /// Report in-flight IO per job (as `/sys/block/dm-N/stat` would), or counters only.
    pub in_flight: bool,
    pub now: Duration,
    /// When set, each period the device serves `true_iops` times a factor in
    /// [0.6, 1.4) drawn from this xorshift state (a device, or a VM, that stalls and
    /// bursts).
    pub noise: Option<u64>,
    device: DeviceSample,
    pub last: Option<Decision<usize>>,
    /// Enforce IOPS limits as blk-throttle does (whole IOs per 100 ms slice, fractions
    /// lost at each trim) instead of exactly.
    pub blk_throttle: bool,
    jiffies: u64,
}

impl Sim {
    pub fn new(true_iops: f64, model_iops: f64, params: Params) -> Sim {
        Sim {
            true_iops,
            jobs: Vec::new(),
            ctl: DeviceController::new(DeviceModel::uniform_iops(model_iops), params)
                .expect("valid params"),
            in_flight: true,
            noise: None,
            now: Duration::from_secs(1),
            device: DeviceSample::default(),
            last: None,
            blk_throttle: false,
            jiffies: 0,
        }
    }

    /// Adds a job; returns its index (also its publication key).
    pub fn add(&mut self, class: Priority, demand: f64) -> usize {
        self.add_job(class, demand, 0.0, Limits::UNLIMITED)
    }

    pub fn add_job(
        &mut self,
        class: Priority,
        demand: f64,
        write_fraction: f64,
        ceiling: Limits,
    ) -> usize {
        self.jobs.push(Job {
            class,
            demand,
            write_fraction,
            ceiling,
            limits: ceiling,
            counters: Counters::default(),
            carry: (0.0, 0.0),
            queue_ms: 0.0,
            throttle: [Throttle::default(); 2],
        });
        self.jobs.len() - 1
    }

    /// One period: the device serves the jobs under their current limits, then the
    /// controller passes and the jobs get its limits. Returns each job's IOPS served.
    pub fn tick(&mut self) -> Vec<f64> {
        let dt = PERIOD.as_secs_f64();
        let cap = |l: crate::tier::Limit, bytes: crate::tier::Limit| {
            let iops = l.get().map_or(f64::INFINITY, |v| v as f64);
            let by_bytes = bytes.get().map_or(f64::INFINITY, |v| v as f64 / 4096.0);
            iops.min(by_bytes)
        };
        let (from, to) = (self.jiffies, self.jiffies + SLICE);
        self.jiffies = to;
        let blk = self.blk_throttle;
        let wanted: Vec<(f64, f64)> = self
            .jobs
            .iter_mut()
            .map(|j| {
                let limits = j.limits;
                let mut released = |d: usize, l: crate::tier::Limit| {
                    j.throttle[d].set(l.get(), from);
                    j.throttle[d]
                        .release(from, to)
                        .map_or(f64::INFINITY, |n| n as f64 / dt)
                };
                let (rel_r, rel_w) = if blk {
                    (
                        released(0, limits.read_iops),
                        released(1, limits.write_iops),
                    )
                } else {
                    (f64::INFINITY, f64::INFINITY)
                };
                // INFINITY * 0.0 is NaN: a direction the job does not use wants nothing.
                let part = |f: f64| if f > 0.0 { j.demand * f } else { 0.0 };
                let r = part(1.0 - j.write_fraction)
                    .min(cap(j.limits.read_iops, j.limits.read_bps))
                    .min(rel_r);
                let w = part(j.write_fraction)
                    .min(cap(j.limits.write_iops, j.limits.write_bps))
                    .min(rel_w);
                // A closed-loop job with a cap runs at the cap.
                (
                    if r.is_finite() { r } else { 1e12 },
                    if w.is_finite() { w } else { 1e12 },
                )
            })
            .collect();
        let totals: Vec<f64> = wanted.iter().map(|(r, w)| r + w).collect();
        let capacity = match &mut self.noise {
            Some(x) => {
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                self.true_iops * (0.6 + 0.8 * (*x % 1000) as f64 / 1000.0)
            }
            None => self.true_iops,
        };
        let served = water_fill(capacity, &totals);
        let saturated = totals.iter().sum::<f64>() > capacity * 0.999;
        let mut ios = 0.0;
        for ((job, (r, w)), s) in self.jobs.iter_mut().zip(&wanted).zip(&served) {
            let total = r + w;
            let (rf, wf) = if total > 0.0 {
                (r / total, w / total)
            } else {
                (0.0, 0.0)
            };
            // A closed-loop job (fio at queue depth 8) always has 8 IOs in flight; a paced
            // one that gets what it wants has a short queue, one held back a long one.
            let depth = if job.demand.is_infinite() || *s < total * 0.99 {
                8.0
            } else if total > 0.0 {
                0.2
            } else {
                0.0
            };
            job.queue_ms += depth * dt * 1000.0;
            job.carry.0 += s * rf * dt;
            job.carry.1 += s * wf * dt;
            let (rn, wn) = (job.carry.0.floor(), job.carry.1.floor());
            job.carry.0 -= rn;
            job.carry.1 -= wn;
            job.counters.rios += rn as u64;
            job.counters.wios += wn as u64;
            job.counters.rbytes += rn as u64 * 4096;
            job.counters.wbytes += wn as u64 * 4096;
            ios += rn + wn;
        }
        let depth = if saturated {
            16.0
        } else {
            served.iter().sum::<f64>() / capacity
        };
        self.device.ios += ios as u64;
        self.device.weighted_ms += (depth * dt * 1000.0) as u64;
        self.now += PERIOD;
        let in_flight = self.in_flight;
        let samples: Vec<_> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| PublicationSample {
                key: i,
                class: j.class,
                counters: j.counters,
                in_flight: in_flight.then_some(if j.demand > 0.0 { 8 } else { 0 }),
                queue_ms: in_flight.then_some(j.queue_ms as u64),
                ceiling: j.ceiling,
            })
            .collect();
        let decision = self.ctl.pass(self.now, &samples, Some(self.device));
        for (key, limits) in &decision.limits {
            self.jobs[*key].limits = *limits;
        }
        self.last = Some(decision);
        served
    }

    /// `n` periods; each period's served IOPS per job.
    pub fn run(&mut self, n: usize) -> Vec<Vec<f64>> {
        (0..n).map(|_| self.tick()).collect()
    }
}

/// The mean over periods of job `i`'s IOPS.
pub fn mean(samples: &[Vec<f64>], i: usize) -> f64 {
    samples.iter().map(|s| s[i]).sum::<f64>() / samples.len().max(1) as f64
}

/// The mean over periods of the IOPS of jobs `js` together.
pub fn mean_sum(samples: &[Vec<f64>], js: &[usize]) -> f64 {
    js.iter().map(|j| mean(samples, *j)).sum()
}

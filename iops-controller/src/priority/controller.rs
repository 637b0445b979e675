//! The control law of one physical device: from each publication's cumulative IO counters
//! and class, the `io.max` limits of every publication for the next period.
//!
//! One [`DeviceController`] per physical device (the NVMe under a thin pool, the disk under
//! the loop backend's state directory). Each pass (every 100 ms in the lab; a pass sooner
//! than `min_window` after the last repeats the last limits):
//!
//! 1. Per publication: the IO done since the last pass (counter differences; a counter
//!    that went backwards, a recreated cgroup, restarts from there), its cost under the
//!    device model as a fraction of the device (smoothed over `smoothing` seconds),
//!    whether it is active (did IO, or has IO in flight) and its average queue depth
//!    (from its volume's weighted in-flight milliseconds, when known).
//! 2. Capacity: the device's utilisation (the sum of the costs) and saturation (the
//!    device's average queue depth from its `/sys/block/<dev>/stat`), averaged over
//!    1 s windows, correct the model's scale ([`Capacity::observe`]).
//! 3. The batch class budget, a fraction of the device:
//!    - no streaming publication active for `hold_periods`: `1 + probe` (work
//!      conserving; the probe above 1.0 lets the device show more than the model);
//!    - streaming becomes active after such an idle spell: `floor` at once (protection
//!      within one period);
//!    - an active streaming publication is backlogged (queue depth at least
//!      `backlog_depth`: it would take more than it gets): `floor`;
//!    - streaming active otherwise: `1 - streaming use - headroom`.
//!
//!    The budget falls to its target at once and rises at most `growth` per pass, only
//!    `hold_periods` passes after the last fall, never below `floor`; changes smaller
//!    than `dead_band` are not made (no churn on steady load).
//! 4. The budget is split max-min fairly between active batch publications
//!    ([`water_fill`]): one pushing against its last share wants without bound, one
//!    below it wants `demand_margin` times its use; a want never exceeds the hard ceiling.
//!    An idle batch publication gets `wake_share`, outside the budget, so that it can
//!    show activity and claim a share at the next pass.
//! 5. A share becomes `io.max` limits split between reads and writes by the
//!    publication's recent mix (at least `min_direction` of the share each way), then the
//!    tier ceiling is applied on top. Streaming publications get their ceiling only.
//!
//! No IO here: the caller reads the counters and writes the limits.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::tier::{Limits, MIN_CAP, Priority};

use super::model::{Capacity, Correction, DeviceModel, Usage};
use super::split::{quantize, water_fill};

/// The tunables of the law. Fractions are of the device's capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// The batch class never gets less than this while streaming is active.
    pub floor: f64,
    /// Kept free beyond what active streaming uses, so that it can grow.
    pub headroom: f64,
    /// The most the batch budget rises per pass while streaming is active.
    pub growth: f64,
    /// The batch budget while streaming idles is `1 + probe`.
    pub probe: f64,
    /// Passes without streaming activity before batch gets the whole device.
    pub hold_periods: u32,
    /// The share an idle batch publication gets, outside the budget.
    pub wake_share: f64,
    /// A batch publication using at least this of its last share is held by it.
    pub limited_ratio: f64,
    /// An unheld batch publication wants its use times this.
    pub demand_margin: f64,
    /// Budget changes smaller than this are not made.
    pub dead_band: f64,
    /// Each direction gets at least this fraction of a publication's share.
    pub min_direction: f64,
    /// Active batch publications' IOPS limits are whole multiples of this (blk-throttle
    /// counts IOs per 100 ms slice: a limit that is not a whole number of IOs per slice
    /// loses the fraction at every slice trim, so a volume held to 5 IOPS does 2.5-3.3);
    /// the batch class total stays the nearest multiple to its budget ([`super::split::quantize`]).
    /// 0 turns it off.
    pub throttle_unit: f64,
    /// When fewer units than volumes share the budget, which volumes get the leftover
    /// units rotates every this many passes (600: a minute at 100 ms). Rarely: each
    /// rotation lowers the line of a throttled volume, which on Linux 6.1 (Debian 12's kernel) lets one
    /// burst of its IO through (docs/priority.md, *blk-throttle's carryover*).
    pub rotate_periods: u32,
    /// The device counts as saturated at or above this average queue depth.
    pub saturation_depth: f64,
    /// A streaming publication whose average queue depth over a pass is at least this
    /// is backlogged (a closed-loop reader always has IO in flight): batch is held at
    /// its floor. `f64::INFINITY` turns the test off.
    pub backlog_depth: f64,
    /// Time constant (seconds) of the smoothing of each publication's use; 0: none.
    pub smoothing: f64,
    /// A pass sooner than this (seconds) after the last one measures nothing.
    pub min_window: f64,
    pub correction: Correction,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            floor: 0.05,
            headroom: 0.10,
            growth: 0.10,
            probe: 0.25,
            hold_periods: 3,
            wake_share: 0.01,
            limited_ratio: 0.85,
            demand_margin: 1.25,
            dead_band: 0.02,
            min_direction: 0.10,
            throttle_unit: 10.0,
            rotate_periods: 600,
            saturation_depth: 8.0,
            backlog_depth: 1.0,
            smoothing: 0.15,
            min_window: 0.05,
            correction: Correction::default(),
        }
    }
}

/// A parameter out of its range: the field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority parameter {field}: {reason}")]
pub struct ParamsError {
    pub field: &'static str,
    pub reason: String,
}

impl Params {
    /// Checks every field's range, naming the first that is out of it.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let unit = |field: &'static str, v: f64, hi_open: bool| {
            let ok = v.is_finite() && v >= 0.0 && if hi_open { v < 1.0 } else { v <= 1.0 };
            if ok {
                Ok(())
            } else {
                let range = if hi_open { "[0, 1)" } else { "[0, 1]" };
                Err(ParamsError {
                    field,
                    reason: format!("must be in {range}, got {v}"),
                })
            }
        };
        unit("floor", self.floor, true)?;
        unit("headroom", self.headroom, true)?;
        unit("growth", self.growth, false)?;
        unit("wake_share", self.wake_share, false)?;
        unit("limited_ratio", self.limited_ratio, false)?;
        unit("dead_band", self.dead_band, true)?;
        unit("min_direction", self.min_direction, false)?;
        unit("correction.gain", self.correction.gain, false)?;
        unit("correction.dead_band", self.correction.dead_band, true)?;
        let positive = |field: &'static str, v: f64, min: f64| {
            if v.is_finite() && v >= min {
                Ok(())
            } else {
                Err(ParamsError {
                    field,
                    reason: format!("must be at least {min}, got {v}"),
                })
            }
        };
        positive("probe", self.probe, 0.0)?;
        positive("throttle_unit", self.throttle_unit, 0.0)?;
        positive("demand_margin", self.demand_margin, 1.0)?;
        positive("saturation_depth", self.saturation_depth, 0.0)?;
        positive("smoothing", self.smoothing, 0.0)?;
        if self.backlog_depth.is_nan() || self.backlog_depth <= 0.0 {
            return Err(ParamsError {
                field: "backlog_depth",
                reason: format!("must be above 0 (inf: off), got {}", self.backlog_depth),
            });
        }
        positive("min_window", self.min_window, 0.0)?;
        positive("correction.window", self.correction.window, 0.0)?;
        positive("correction.max_ratio", self.correction.max_ratio, 1.0)?;
        if self.floor + self.headroom >= 1.0 {
            return Err(ParamsError {
                field: "floor",
                reason: format!(
                    "floor + headroom must leave streaming some of the device, got {} + {}",
                    self.floor, self.headroom
                ),
            });
        }
        Ok(())
    }
}

/// Cumulative IO counters of one publication on its volume's device (`io.stat` of the
/// pod cgroup for that device, or the volume's own `/sys/block/<dev>/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rios: u64,
    pub wios: u64,
    pub rbytes: u64,
    pub wbytes: u64,
}

impl Counters {
    /// `self - earlier`, or `None` when a counter went backwards.
    fn since(&self, earlier: &Counters) -> Option<Usage> {
        Some(Usage {
            rios: self.rios.checked_sub(earlier.rios)?,
            wios: self.wios.checked_sub(earlier.wios)?,
            rbytes: self.rbytes.checked_sub(earlier.rbytes)?,
            wbytes: self.wbytes.checked_sub(earlier.wbytes)?,
        })
    }
}

/// One publication as the pass sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationSample<K> {
    pub key: K,
    pub class: Priority,
    pub counters: Counters,
    /// IOs in flight on the volume's device, when known (`/sys/block/dm-N/stat`).
    pub in_flight: Option<u64>,
    /// Cumulative milliseconds its IOs spent in flight (weighted: field 11 of the
    /// volume's `/sys/block/dm-N/stat`), when known: the difference over a period is the
    /// publication's average queue depth.
    pub queue_ms: Option<u64>,
    /// The tier's hard caps (`Limits::UNLIMITED` when it has none).
    pub ceiling: Limits,
}

/// Cumulative counters of the physical device (`/sys/block/<dev>/stat`: completed reads
/// plus writes, and the weighted time in queue in milliseconds, field 11).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceSample {
    pub ios: u64,
    pub weighted_ms: u64,
}

/// What a pass decided, for `/metrics` and `iolane status`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceReport {
    /// The model in force (calibration times the online scale).
    pub capacity: DeviceModel,
    pub capacity_scale: f64,
    /// Measured use, as fractions of the device.
    pub streaming_use: f64,
    pub batch_use: f64,
    pub streaming_active: bool,
    /// An active streaming publication had a standing queue.
    pub streaming_backlogged: bool,
    /// The batch class budget in force for the next period.
    pub batch_budget: f64,
    /// The device showed a standing queue.
    pub saturated: bool,
}

/// A pass's result: every publication's limits for the next period, in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision<K> {
    pub limits: Vec<(K, Limits)>,
    pub report: DeviceReport,
}

#[derive(Debug, Clone)]
struct PublicationState {
    counters: Counters,
    queue_ms: Option<u64>,
    /// Use as a fraction of the device, smoothed over `smoothing` seconds.
    smooth_use: Option<f64>,
    share: Option<f64>,
    read_fraction: f64,
    /// Mean bytes per IO (reads, writes), smoothed like the use; `None` until seen.
    io_size: (Option<f64>, Option<f64>),
    limits: Limits,
}

/// The controller of one physical device.
#[derive(Debug, Clone)]
pub struct DeviceController<K> {
    params: Params,
    capacity: Capacity,
    last: Option<(Duration, Option<DeviceSample>)>,
    publications: BTreeMap<K, PublicationState>,
    budget: f64,
    streaming_idle: u32,
    /// Passes since the budget last fell (no growth before `hold_periods`).
    settled: u32,
    /// Passes made (the rotation of leftover units).
    passes: u64,
    report: Option<DeviceReport>,
}

impl<K: Ord + Clone> DeviceController<K> {
    /// A controller for a device with the calibrated `model`.
    pub fn new(model: DeviceModel, params: Params) -> Result<Self, ParamsError> {
        params.validate()?;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if ![
            model.read_iops,
            model.write_iops,
            model.read_bps,
            model.write_bps,
        ]
        .into_iter()
        .all(positive)
        {
            return Err(ParamsError {
                field: "capacity",
                reason: format!("every rate must be positive, got {model:?}"),
            });
        }
        Ok(DeviceController {
            params,
            capacity: Capacity::new(model, params.correction),
            last: None,
            publications: BTreeMap::new(),
            budget: 1.0 + params.probe,
            streaming_idle: params.hold_periods,
            settled: params.hold_periods,
            passes: 0,
            report: None,
        })
    }

    /// The model in force.
    pub fn capacity(&self) -> DeviceModel {
        self.capacity.model()
    }

    /// The limits of a publication the controller has no decision for yet.
    fn initial(&self, s: &PublicationSample<K>) -> Limits {
        match s.class {
            Priority::Streaming => s.ceiling,
            Priority::Batch => {
                let w = self.params.wake_share;
                self.capacity
                    .model()
                    .limits_for_sized(w, w, &s.ceiling, (None, None))
            }
        }
        .canonical()
    }

    /// One pass at monotonic time `now`: `publications` is every publication on the
    /// device, each key once (one missing is forgotten), `device` the physical device's
    /// counters when known. A pass less than `min_window` after the last one measures
    /// nothing and repeats the last limits.
    pub fn pass(
        &mut self,
        now: Duration,
        publications: &[PublicationSample<K>],
        device: Option<DeviceSample>,
    ) -> Decision<K> {
        let p = self.params;
        let dt = match self.last {
            Some((then, _)) if now > then => Some((now - then).as_secs_f64()),
            _ => None,
        };
        if self.last.is_some() && dt.is_none_or(|dt| dt < p.min_window) {
            return self.repeat(publications);
        }
        let depth = match (self.last.and_then(|(_, d)| d), device, dt) {
            (Some(before), Some(after), Some(dt)) => {
                after.weighted_ms.saturating_sub(before.weighted_ms) as f64 / (dt * 1000.0)
            }
            _ => 0.0,
        };
        let saturated = depth >= p.saturation_depth;
        self.last = Some((now, device));

        // 1. What each publication did since the last pass.
        let mut seen: BTreeMap<K, PublicationState> = BTreeMap::new();
        let mut usage: Vec<Usage> = Vec::with_capacity(publications.len());
        let mut depths: Vec<f64> = Vec::with_capacity(publications.len());
        for s in publications {
            let prev = self.publications.remove(&s.key);
            let u = match (&prev, dt) {
                (Some(prev), Some(_)) => s.counters.since(&prev.counters).unwrap_or_default(),
                _ => Usage::default(),
            };
            usage.push(u);
            let queued = match (prev.as_ref().and_then(|p| p.queue_ms), s.queue_ms, dt) {
                (Some(before), Some(after), Some(dt)) => {
                    after.saturating_sub(before) as f64 / (dt * 1000.0)
                }
                _ => 0.0,
            };
            depths.push(queued);
            let state = match prev {
                Some(prev) => PublicationState {
                    counters: s.counters,
                    queue_ms: s.queue_ms,
                    ..prev
                },
                None => PublicationState {
                    counters: s.counters,
                    queue_ms: s.queue_ms,
                    smooth_use: None,
                    share: None,
                    read_fraction: 0.5,
                    io_size: (None, None),
                    limits: self.initial(s),
                },
            };
            seen.insert(s.key.clone(), state);
        }
        self.publications = seen;
        let active: Vec<bool> = publications
            .iter()
            .zip(&usage)
            .map(|(s, u)| u.ios() > 0 || s.in_flight.unwrap_or(0) > 0)
            .collect();

        // 2. Capacity correction (over whole windows), then each publication's use under
        // the model in force, smoothed.
        let secs = dt.unwrap_or(1.0);
        if let Some(dt) = dt {
            let model = self.capacity.model();
            let cost: f64 = usage.iter().map(|u| model.cost(u).total()).sum();
            let ios: u64 = usage.iter().map(Usage::ios).sum();
            self.capacity.observe(dt, cost, saturated, ios);
        }
        let model = self.capacity.model();
        let costs: Vec<_> = usage.iter().map(|u| model.cost(u)).collect();
        let alpha = if p.smoothing > 0.0 {
            1.0 - (-secs / p.smoothing).exp()
        } else {
            1.0
        };
        // Smoothed use (for the streaming target and the batch totals) and, for batch
        // demand, the larger of it and this pass's use (a batch volume that starts or
        // reaches its share is seen at once).
        let mut uses = Vec::with_capacity(publications.len());
        let mut peaks = Vec::with_capacity(publications.len());
        for (i, s) in publications.iter().enumerate() {
            let raw = costs[i].total() / secs;
            let state = self.publications.get_mut(&s.key).expect("inserted above");
            if dt.is_some() {
                state.smooth_use = Some(match state.smooth_use {
                    Some(before) => before + alpha * (raw - before),
                    None => raw,
                });
                let u = &usage[i];
                let mean = |ios: u64, bytes: u64, before: Option<f64>| {
                    if ios == 0 {
                        return before;
                    }
                    let now = bytes as f64 / ios as f64;
                    Some(before.map_or(now, |b| b + alpha * (now - b)))
                };
                state.io_size = (
                    mean(u.rios, u.rbytes, state.io_size.0),
                    mean(u.wios, u.wbytes, state.io_size.1),
                );
            }
            let smooth = state.smooth_use.unwrap_or(0.0);
            uses.push(smooth);
            peaks.push(smooth.max(raw));
        }

        // 3. The batch class budget.
        let streaming: Vec<usize> = (0..publications.len())
            .filter(|i| publications[*i].class == Priority::Streaming)
            .collect();
        let streaming_use: f64 = streaming.iter().map(|i| uses[*i]).sum();
        let streaming_active = streaming.iter().any(|i| active[*i]);
        // A streaming publication with a standing queue would take more than it gets:
        // its use says nothing about its demand, so batch gets no more than its floor.
        let streaming_backlogged = streaming
            .iter()
            .any(|i| active[*i] && depths[*i] >= p.backlog_depth);
        let top = 1.0 + p.probe;
        if streaming_active {
            if self.streaming_idle >= p.hold_periods {
                self.budget = p.floor;
                self.settled = 0;
            } else {
                let target = if streaming_backlogged {
                    p.floor
                } else {
                    1.0 - streaming_use - p.headroom
                };
                let mut next = target.clamp(p.floor, top);
                if next > self.budget {
                    // Grow only once settled since the last cut, and by `growth` at most.
                    next = if self.settled >= p.hold_periods {
                        next.min(self.budget + p.growth)
                    } else {
                        self.budget
                    };
                }
                let to_bound = next != self.budget && (next == p.floor || next == top);
                if to_bound || (next - self.budget).abs() >= p.dead_band {
                    if next < self.budget {
                        self.settled = 0;
                    }
                    self.budget = next;
                }
            }
            self.streaming_idle = 0;
        } else {
            self.streaming_idle = self.streaming_idle.saturating_add(1);
            if self.streaming_idle >= p.hold_periods {
                self.budget = top;
            }
        }
        self.settled = self.settled.saturating_add(1);

        // 4. The split between active batch publications.
        let batch: Vec<usize> = (0..publications.len())
            .filter(|i| publications[*i].class == Priority::Batch)
            .collect();
        let batch_use: f64 = batch.iter().map(|i| uses[*i]).sum();
        let claimants: Vec<usize> = batch.iter().copied().filter(|i| active[*i]).collect();
        let wants: Vec<f64> = claimants
            .iter()
            .map(|i| {
                let s = &publications[*i];
                let used = peaks[*i];
                let held = match self.publications[&s.key].share {
                    Some(share) => used >= p.limited_ratio * share,
                    None => true,
                };
                let want = if held {
                    f64::INFINITY
                } else {
                    used * p.demand_margin + p.wake_share
                };
                want.min(model.ceiling_share(&s.ceiling))
            })
            .collect();
        let shares = water_fill(self.budget, &wants);
        let mut share_of: BTreeMap<usize, f64> = claimants.into_iter().zip(shares).collect();

        // 5. Limits: each active batch publication's share split between reads and
        // writes by its cost mix, the class's IOPS in whole throttle units.
        self.passes += 1;
        let mut dir_shares: Vec<(f64, f64)> = vec![(0.0, 0.0); publications.len()];
        for (i, s) in publications.iter().enumerate() {
            if s.class != Priority::Batch {
                continue;
            }
            let state = self.publications.get_mut(&s.key).expect("inserted above");
            let share = share_of.remove(&i).unwrap_or(p.wake_share);
            let c = costs[i];
            if c.total() > 0.0 {
                state.read_fraction = c.read / c.total();
            }
            state.share = Some(share);
            dir_shares[i] = if active[i] {
                (
                    share * state.read_fraction.max(p.min_direction),
                    share * (1.0 - state.read_fraction).max(p.min_direction),
                )
            } else {
                // Waking up, it may read or write: the wake share each way.
                (share, share)
            };
        }
        let quantized: Vec<usize> = (0..publications.len())
            .filter(|i| publications[*i].class == Priority::Batch && active[*i])
            .collect();
        if p.throttle_unit > 0.0 && !quantized.is_empty() {
            let rotation =
                usize::try_from(self.passes / u64::from(p.rotate_periods.max(1))).unwrap_or(0);
            let min = MIN_CAP as f64;
            let reads: Vec<f64> = quantized.iter().map(|i| dir_shares[*i].0).collect();
            let writes: Vec<f64> = quantized.iter().map(|i| dir_shares[*i].1).collect();
            // The leftover units rotate in the class's main direction only: the other
            // one holds the `min_direction` slack, whose rotation would only rewrite lines.
            let reads_lead = reads.iter().sum::<f64>() >= writes.iter().sum::<f64>();
            let (rr, wr) = if reads_lead {
                (rotation, 0)
            } else {
                (0, rotation)
            };
            let reads = quantize(&reads, model.read_iops, p.throttle_unit, min, rr);
            let writes = quantize(&writes, model.write_iops, p.throttle_unit, min, wr);
            for ((i, r), w) in quantized.iter().zip(reads).zip(writes) {
                dir_shares[*i] = (r, w);
            }
        }
        for (i, s) in publications.iter().enumerate() {
            let state = self.publications.get_mut(&s.key).expect("inserted above");
            state.limits = match s.class {
                Priority::Streaming => s.ceiling,
                Priority::Batch => {
                    let (read, write) = dir_shares[i];
                    model.limits_for_sized(read, write, &s.ceiling, state.io_size)
                }
            }
            .canonical();
        }
        let report = DeviceReport {
            capacity: model,
            capacity_scale: self.capacity.scale(),
            streaming_use,
            batch_use,
            streaming_active,
            streaming_backlogged,
            batch_budget: self.budget,
            saturated,
        };
        self.report = Some(report);
        self.decision(publications, report)
    }

    /// The last limits again (a pass too soon after the previous one).
    fn repeat(&mut self, publications: &[PublicationSample<K>]) -> Decision<K> {
        let report = self.report.unwrap_or(DeviceReport {
            capacity: self.capacity.model(),
            capacity_scale: self.capacity.scale(),
            streaming_use: 0.0,
            batch_use: 0.0,
            streaming_active: false,
            streaming_backlogged: false,
            batch_budget: self.budget,
            saturated: false,
        });
        self.decision(publications, report)
    }

    fn decision(&self, publications: &[PublicationSample<K>], report: DeviceReport) -> Decision<K> {
        let mut limits: Vec<(K, Limits)> = publications
            .iter()
            .map(|s| {
                let l = match self.publications.get(&s.key) {
                    Some(state) => state.limits,
                    None => self.initial(s),
                };
                (s.key.clone(), l)
            })
            .collect();
        limits.sort_by(|a, b| a.0.cmp(&b.0));
        Decision { limits, report }
    }
}

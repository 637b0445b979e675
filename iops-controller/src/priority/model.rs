//! The device cost model of the priority controller: what one period of IO costs a
//! physical device, as a fraction of the device's capacity, and the online correction of
//! that capacity.
//!
//! A device's capacity is four calibrated rates ([`DeviceModel`]: read and write IOPS,
//! read and write bytes/s, from `iolane bench` or the node config). The cost of some IO is
//! the device time it takes at those rates: for each direction, the larger of its IO count
//! over the IOPS rate and its bytes over the bandwidth, and reads plus writes. One second
//! of cost per second of wall time is a saturated device: utilisation 1.0.
//!
//! [`Capacity`] multiplies the model by a scale (1.0 = as calibrated) that the controller
//! corrects online, in the manner of iocost's `vrate`: when the device completed more than
//! the model allows, the model was too low; when the device shows saturation (a standing
//! queue) while completing less, it was too high. The scale moves a fraction of the error
//! per period, only outside a dead band, and stays within bounds around the calibration.

use crate::tier::{Limit, Limits, MIN_CAP};

/// A device's calibrated capacity: the rates it sustains for each kind of IO alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceModel {
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_bps: f64,
    pub write_bps: f64,
}

impl DeviceModel {
    /// A model where reads and writes cost the same and the bandwidth is `iops` 4 KiB IOs.
    pub fn uniform_iops(iops: f64) -> DeviceModel {
        DeviceModel {
            read_iops: iops,
            write_iops: iops,
            read_bps: iops * 4096.0,
            write_bps: iops * 4096.0,
        }
    }

    /// The same model with every rate multiplied by `scale`.
    pub fn scaled(&self, scale: f64) -> DeviceModel {
        DeviceModel {
            read_iops: self.read_iops * scale,
            write_iops: self.write_iops * scale,
            read_bps: self.read_bps * scale,
            write_bps: self.write_bps * scale,
        }
    }

    /// Device seconds that `usage` takes on this model (split into reads and writes).
    pub fn cost(&self, usage: &Usage) -> Cost {
        let read = (usage.rios as f64 / self.read_iops).max(usage.rbytes as f64 / self.read_bps);
        let write = (usage.wios as f64 / self.write_iops).max(usage.wbytes as f64 / self.write_bps);
        Cost { read, write }
    }

    /// `io.max` limits that let a volume use `read_share` of the device for reads and
    /// `write_share` for writes, each limit at least [`MIN_CAP`] (the kernel refuses 0 and
    /// some kernels 1), then capped by `ceiling`.
    pub fn limits_for(&self, read_share: f64, write_share: f64, ceiling: &Limits) -> Limits {
        let cap = |rate: f64, share: f64, ceiling: Limit| {
            // Nearest, not down: a share that is a whole number of IOs (quantized by
            // the law) must not lose one to float error.
            let dynamic = ((rate * share).round() as u64).max(MIN_CAP);
            match ceiling.get() {
                Some(c) => Limit::per_sec(dynamic.min(c)),
                None => Limit::per_sec(dynamic),
            }
        };
        Limits {
            read_bps: cap(self.read_bps, read_share, ceiling.read_bps),
            write_bps: cap(self.write_bps, write_share, ceiling.write_bps),
            read_iops: cap(self.read_iops, read_share, ceiling.read_iops),
            write_iops: cap(self.write_iops, write_share, ceiling.write_iops),
        }
    }

    /// Like [`limits_for`](Self::limits_for), but each direction caps IOPS only:
    /// bandwidth is left at the ceiling's cap (or none). A direction whose mean IO
    /// (`io_size`: reads, writes; `None`: none seen) is over [`LARGE_IO`] times the bytes
    /// per IO where the model's two rates meet gets its share of the bandwidth as IOPS of that size,
    /// `share x rate_bps / size`, so large IO still gets only its share of the device. The
    /// tier ceiling stays a hard bound on both rates.
    ///
    /// Why (docs/priority.md, *blk-throttle's carryover*): Linux 6.1 keeps the
    /// "carryover" of a group whose `io.max` changes while it has IO queued in unsigned
    /// fields. A lowered cap the group had run ahead of wraps them around, and the group
    /// is not throttled at all until a slice trim clears them, which happens only when
    /// one of the two rates allows something over the elapsed time: with bandwidth open,
    /// the first trim does. Capped in both rates at once, a volume was measured at the
    /// device's full rate for 0.8 s after one write of a line of 10 IOPS (for whole runs
    /// under repeated writes); capped in IOPS only, for 0.2 s. A line that switches which
    /// rate it caps is worse still (the unused allowance of the other becomes credit).
    pub fn limits_for_sized(
        &self,
        read_share: f64,
        write_share: f64,
        ceiling: &Limits,
        io_size: (Option<f64>, Option<f64>),
    ) -> Limits {
        // IOPS per unit of share for IOs of `size` bytes.
        let per_share = |rate_iops: f64, rate_bps: f64, size: Option<f64>| match size {
            Some(z) if z * rate_iops > LARGE_IO * rate_bps => rate_bps / z,
            _ => rate_iops,
        };
        let iops = |rate: f64, share: f64, ceiling: Limit| {
            let dynamic = ((rate * share).round() as u64).max(MIN_CAP);
            min_limit(Limit::per_sec(dynamic), ceiling)
        };
        Limits {
            read_bps: ceiling.read_bps,
            write_bps: ceiling.write_bps,
            read_iops: iops(
                per_share(self.read_iops, self.read_bps, io_size.0),
                read_share,
                ceiling.read_iops,
            ),
            write_iops: iops(
                per_share(self.write_iops, self.write_bps, io_size.1),
                write_share,
                ceiling.write_iops,
            ),
        }
    }

    /// The largest fraction of the device a volume capped by `ceiling` can use in one
    /// direction: the tightest of its caps over the device's rates (`f64::INFINITY` when
    /// uncapped). Reads and writes are capped independently, so the volume as a whole can
    /// use up to the sum of the two.
    pub fn ceiling_share(&self, ceiling: &Limits) -> f64 {
        let share = |c: Limit, rate: f64| c.get().map_or(f64::INFINITY, |c| c as f64 / rate);
        let read =
            share(ceiling.read_iops, self.read_iops).min(share(ceiling.read_bps, self.read_bps));
        let write = share(ceiling.write_iops, self.write_iops)
            .min(share(ceiling.write_bps, self.write_bps));
        read + write
    }
}

/// How far above the bytes per IO where a model's two rates meet a direction's mean IO
/// must be before its IOPS cap is scaled to its bandwidth share: below, the mean moves
/// with small things (the reads udev makes of a device just written, the last pass's mix)
/// and each move would rewrite the line.
pub const LARGE_IO: f64 = 2.0;

/// The lower of two caps (`max` is no cap).
fn min_limit(a: Limit, b: Limit) -> Limit {
    match (a.get(), b.get()) {
        (Some(x), Some(y)) => Limit::per_sec(x.min(y)),
        (Some(_), None) => a,
        (None, _) => b,
    }
}

/// IO done in one period (differences of cumulative counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub rios: u64,
    pub wios: u64,
    pub rbytes: u64,
    pub wbytes: u64,
}

impl Usage {
    pub fn ios(&self) -> u64 {
        self.rios + self.wios
    }
}

/// Device seconds, by direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    pub read: f64,
    pub write: f64,
}

impl Cost {
    pub fn total(&self) -> f64 {
        self.read + self.write
    }
}

/// How the capacity scale is corrected online.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correction {
    /// Fraction of the error corrected per period (0 turns correction off).
    pub gain: f64,
    /// No correction while the measured utilisation is within this of 1.0.
    pub dead_band: f64,
    /// The scale stays within `[1 / max_ratio, max_ratio]` of the calibration.
    pub max_ratio: f64,
    /// Windows with fewer completed IOs than this on the device say nothing.
    pub min_ios: u64,
    /// Seconds of passes averaged into one correction: per-pass rates of a device that
    /// completes in bursts (a stalled VM, a device's internal garbage collection) would
    /// read as capacity swings.
    pub window: f64,
}

impl Default for Correction {
    fn default() -> Self {
        Correction {
            gain: 0.5,
            dead_band: 0.05,
            max_ratio: 4.0,
            min_ios: 20,
            window: 1.0,
        }
    }
}

/// The calibrated model and its online scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    calibrated: DeviceModel,
    scale: f64,
    correction: Correction,
    /// The window being accumulated: seconds, device seconds of cost, saturated
    /// seconds, IOs.
    window: (f64, f64, f64, u64),
}

impl Capacity {
    pub fn new(calibrated: DeviceModel, correction: Correction) -> Capacity {
        Capacity {
            calibrated,
            scale: 1.0,
            correction,
            window: (0.0, 0.0, 0.0, 0),
        }
    }

    /// Adds one pass to the correction window: `dt` seconds in which the IO cost
    /// `cost` device seconds under [`Capacity::model`], `ios` IOs completed, the device
    /// saturated or not. When the window is full, corrects the scale from its averages
    /// (saturated if it was for at least half the window) and starts the next one.
    pub fn observe(&mut self, dt: f64, cost: f64, saturated: bool, ios: u64) {
        if !(dt.is_finite() && dt > 0.0 && cost.is_finite()) {
            return;
        }
        let w = &mut self.window;
        w.0 += dt;
        w.1 += cost;
        if saturated {
            w.2 += dt;
        }
        w.3 += ios;
        if w.0 >= self.correction.window {
            let (secs, cost, sat, ios) = std::mem::take(w);
            self.correct(cost / secs, sat >= secs / 2.0, ios);
        }
    }

    /// The model in force: the calibration times the scale.
    pub fn model(&self) -> DeviceModel {
        self.calibrated.scaled(self.scale)
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Corrects the scale from one period: `utilisation` is the device's measured cost per
    /// second under [`Capacity::model`], `saturated` whether the device showed a standing
    /// queue, `ios` how many IOs it completed. Returns whether the scale changed.
    pub fn correct(&mut self, utilisation: f64, saturated: bool, ios: u64) -> bool {
        let c = self.correction;
        if c.gain <= 0.0 || ios < c.min_ios || !utilisation.is_finite() {
            return false;
        }
        let error = utilisation - 1.0;
        let above = error > c.dead_band;
        let below_while_saturated = saturated && error < -c.dead_band;
        if !above && !below_while_saturated {
            return false;
        }
        let next = (self.scale * (1.0 + c.gain * error)).clamp(1.0 / c.max_ratio, c.max_ratio);
        let changed = next != self.scale;
        self.scale = next;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(rios: u64, wios: u64, rbytes: u64, wbytes: u64) -> Usage {
        Usage {
            rios,
            wios,
            rbytes,
            wbytes,
        }
    }

    #[test]
    fn cost_is_the_larger_of_iops_and_bandwidth_per_direction() {
        let m = DeviceModel {
            read_iops: 1000.0,
            write_iops: 500.0,
            read_bps: 100.0 * 1024.0 * 1024.0,
            write_bps: 50.0 * 1024.0 * 1024.0,
        };
        // (usage, read seconds, write seconds)
        let table = [
            (usage(0, 0, 0, 0), 0.0, 0.0),
            (usage(100, 0, 100 * 4096, 0), 0.1, 0.0),
            (usage(0, 100, 0, 100 * 4096), 0.0, 0.2),
            // 10 IOs of 1 MiB: bandwidth-bound.
            (usage(10, 0, 10 << 20, 0), 0.1, 0.0),
            (usage(500, 250, 500 * 4096, 250 * 4096), 0.5, 0.5),
        ];
        for (u, read, write) in table {
            let c = m.cost(&u);
            assert!(
                (c.read - read).abs() < 1e-9,
                "{u:?}: read {} != {read}",
                c.read
            );
            assert!(
                (c.write - write).abs() < 1e-9,
                "{u:?}: write {} != {write}",
                c.write
            );
        }
    }

    #[test]
    fn sized_limits_cap_iops_only_scaled_by_the_io_size() {
        // 1000 IOPS and 4 MiB/s: 4 KiB per IO is where the two rates meet.
        let m = DeviceModel::uniform_iops(1000.0);
        let none = Limits::UNLIMITED;
        // Small IO, or none seen: the share of the IOPS; bandwidth open.
        let l = m.limits_for_sized(0.25, 0.1, &none, (Some(4096.0), None));
        assert_eq!(l.read_iops, Limit::per_sec(250));
        assert_eq!(l.read_bps, Limit::Max);
        assert_eq!(l.write_iops, Limit::per_sec(100));
        assert_eq!(l.write_bps, Limit::Max);
        let l = m.limits_for_sized(0.25, 0.1, &none, (Some(512.0), None));
        assert_eq!(l.read_iops, Limit::per_sec(250));
        // Up to twice the meeting point: the IOPS share still.
        let l = m.limits_for_sized(0.25, 0.1, &none, (Some(8192.0), None));
        assert_eq!(l.read_iops, Limit::per_sec(250));
        // Reads of 128 KiB: the share of the bandwidth, as IOPS of that size.
        let l = m.limits_for_sized(0.25, 0.1, &none, (Some(131_072.0), None));
        assert_eq!(l.read_iops, Limit::per_sec(8));
        assert_eq!(l.read_bps, Limit::Max);
        // The ceiling stays a hard bound on both.
        let ceiling = Limits {
            read_iops: Limit::per_sec(40),
            write_bps: Limit::per_sec(50_000),
            ..Limits::UNLIMITED
        };
        let l = m.limits_for_sized(0.5, 0.5, &ceiling, (None, Some(4096.0)));
        assert_eq!(l.read_iops, Limit::per_sec(40));
        assert_eq!(l.read_bps, Limit::Max);
        assert_eq!(l.write_iops, Limit::per_sec(500));
        assert_eq!(l.write_bps, Limit::per_sec(50_000));
    }

    #[test]
    fn limits_for_a_share_respect_min_cap_and_ceiling() {
        let m = DeviceModel::uniform_iops(1000.0);
        let none = Limits::UNLIMITED;
        let l = m.limits_for(0.25, 0.1, &none);
        assert_eq!(l.read_iops, Limit::per_sec(250));
        assert_eq!(l.write_iops, Limit::per_sec(100));
        assert_eq!(l.read_bps, Limit::per_sec(250 * 4096));
        // A vanishing share is still a valid cap.
        let l = m.limits_for(0.0, 0.0, &none);
        assert_eq!(l.read_iops, Limit::per_sec(MIN_CAP));
        assert_eq!(l.write_bps, Limit::per_sec(MIN_CAP));
        // The ceiling wins where it is lower, and only there.
        let ceiling = Limits {
            read_iops: Limit::per_sec(40),
            ..Limits::UNLIMITED
        };
        let l = m.limits_for(0.5, 0.5, &ceiling);
        assert_eq!(l.read_iops, Limit::per_sec(40));
        assert_eq!(l.write_iops, Limit::per_sec(500));
    }

    #[test]
    fn ceiling_share() {
        let m = DeviceModel::uniform_iops(1000.0);
        assert_eq!(m.ceiling_share(&Limits::UNLIMITED), f64::INFINITY);
        let l = Limits {
            read_iops: Limit::per_sec(100),
            write_iops: Limit::per_sec(50),
            read_bps: Limit::Max,
            write_bps: Limit::per_sec(4096 * 10),
        };
        assert!((m.ceiling_share(&l) - (0.1 + 0.01)).abs() < 1e-9);
    }

    #[test]
    fn correction_table() {
        // (utilisation, saturated, ios, scale after one correction from 1.0)
        let table = [
            (1.0, true, 1000, 1.0),   // on the model
            (1.04, false, 1000, 1.0), // within the dead band
            (0.5, false, 1000, 1.0),  // idle device says nothing
            (1.2, false, 1000, 1.1),  // did more than the model: raise by half the error
            (0.6, true, 1000, 0.8),   // saturated below the model: lower
            (1.2, false, 5, 1.0),     // too few IOs to judge
            (9.0, false, 1000, 4.0),  // bounded above
            (f64::NAN, true, 1000, 1.0),
        ];
        for (u, sat, ios, want) in table {
            let mut c = Capacity::new(DeviceModel::uniform_iops(1000.0), Correction::default());
            c.correct(u, sat, ios);
            assert!(
                (c.scale() - want).abs() < 1e-9,
                "{u} {sat} {ios}: {} != {want}",
                c.scale()
            );
        }
    }

    #[test]
    fn observe_averages_bursts_over_the_window() {
        let mut c = Capacity::new(DeviceModel::uniform_iops(1000.0), Correction::default());
        // A device that stalls and then completes a burst: 0, 0, 0, then 4x the model,
        // saturated throughout (passes of 1/8 s, exact in binary). Per pass this reads
        // as 0 and 4.0; over the 1 s window it is exactly the model: the scale stays.
        for _ in 0..6 {
            for u in [0.0, 0.0, 0.0, 4.0] {
                c.observe(0.125, u * 0.125, true, 40);
            }
        }
        assert_eq!(c.scale(), 1.0);
        // Saturated at 0.6 of the model over a whole window: lowered.
        for _ in 0..8 {
            c.observe(0.125, 0.6 * 0.125, true, 60);
        }
        assert!(c.scale() < 1.0, "{}", c.scale());
        // Nonsense passes are ignored.
        let before = c.scale();
        c.observe(0.0, 1.0, true, 10);
        c.observe(f64::NAN, 1.0, true, 10);
        c.observe(0.1, f64::INFINITY, true, 10);
        assert_eq!(c.scale(), before);
    }

    #[test]
    fn correction_converges_to_the_real_capacity_and_is_bounded_below() {
        // The model says 2000, the device does 1000: saturated periods at 1000 IOPS.
        let mut c = Capacity::new(DeviceModel::uniform_iops(2000.0), Correction::default());
        for _ in 0..30 {
            let real = 1000.0;
            let u = real / c.model().read_iops;
            c.correct(u, true, 100);
        }
        let m = c.model().read_iops;
        assert!((m - 1000.0).abs() <= 0.06 * 1000.0, "model {m}");
        let mut c = Capacity::new(DeviceModel::uniform_iops(2000.0), Correction::default());
        for _ in 0..100 {
            c.correct(0.0, true, 100);
        }
        assert!((c.scale() - 0.25).abs() < 1e-9);
    }
}

//! The node's priority controllers: the control law ([`DeviceController`]) fed with the
//! node's publications, one controller per physical device, each pass writing the limits
//! that changed into the pods' `io.max` (issue 9; opt-in through the node config's
//! `[priority]`).
//!
//! A pass ([`NodePriority::pass`], every `period`, run by the enforcement controller under
//! its lock, see [`crate::enforcement::Enforcement::with_priority`]):
//!
//! 1. every publication whose pod cgroup is found is one controller input, keyed on
//!    (pod cgroup, volume device): its class from its tier's priority, its ceiling the
//!    tier's caps recorded at publish ([`NodePriority::record`]), its counters, in-flight
//!    count and weighted milliseconds from the volume device's own sysfs `stat` (split
//!    evenly when the volume is in several pods; not the pod's `io.stat`, which Linux 6.1
//!    was seen to leave empty for a throttled pod); a publication also counts as active
//!    while its counters moved within the last second (IO held in blk-throttle is in no
//!    in-flight count);
//! 2. publications are grouped by the physical devices under their volume device
//!    ([`Topology::physical`], looked up once per volume device); each group has its own
//!    [`DeviceController`], created with the configured capacity of the device (by
//!    `MAJ:MIN` or kernel name) or the conservative default, which the law corrects
//!    online; a controller whose device has no publication left is dropped;
//! 3. each returned limit that differs from what the reconciler holds is written (through
//!    [`CgroupFs`]) and becomes the reconciler's desired limit
//!    ([`Reconciler::set_limits`]), so the periodic reconcile pass keeps it rather than
//!    "repairing" it back to the tier's caps.
//!
//! The tier's caps stay the hard ceiling: the law never returns more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apply::{self, CgroupFs};
use crate::device::DeviceNumber;
use crate::reconcile::Reconciler;
use crate::tier::{Limits, Priority, TierSet};

use super::calibration::CalibrationStore;
use super::controller::{Counters, DeviceController, DeviceReport, DeviceSample, Params};
use super::model::DeviceModel;
use super::topology::{StatFiles, Topology};

/// The IOPS a device with no configured capacity starts from: low enough that batch
/// cannot flood a slow disk before the online correction (up to `max_ratio` times this)
/// has seen it.
pub const DEFAULT_START_IOPS: f64 = 2000.0;

/// A publication whose counters moved within this long counts as active.
const ACTIVE_WINDOW: Duration = Duration::from_secs(1);

/// The longest a changed line waits for its group to come back within the line in force
/// (see [`Written::over`]): a burst of 100 IOs let through a line of 10 IOPS takes 10 s
/// to pay back.
const MAX_DEFER: Duration = Duration::from_secs(30);

/// One blk-throttle slice (Linux's default `throtl_slice`): a group may run this far
/// ahead of its line.
const SLICE: f64 = 0.1;

/// The bytes one IO in flight at a write may carry (its bytes complete after).
const MAX_IO_BYTES: f64 = 131_072.0;

/// The last line the law wrote for an input: when, and the input's counters then.
#[derive(Debug, Clone, Copy)]
struct Written {
    at: Duration,
    counters: Counters,
    /// The volume device's IO in flight when it was written (it completes after).
    in_flight: u64,
    limits: Limits,
    /// The line this one replaced, when the law wrote it.
    prior: Option<Limits>,
    /// Changes held back: since when, and when last (a hold that ended without a write,
    /// the law having come back to the line in force, does not count towards the next).
    deferred: Option<(Duration, Duration)>,
}

impl Written {
    /// The input did more IO since the line was written than the line allows over that
    /// time (plus one slice, and the IO that was in flight at the device at the write, of
    /// slack): blk-throttle holds the excess as a
    /// debt, and on Linux 6.1 (Debian 12's kernel) an `io.max` write while it is in debt wraps its
    /// unsigned carryover and lifts the throttling altogether for a while
    /// (docs/priority.md, *blk-throttle's carryover*). Its line is not changed then.
    ///
    /// A lowered line also starts with a credit: a group that had IO queued under the
    /// higher line it replaced carries over what that line still allowed in its slice, up
    /// to about two slices of the difference, and runs that far ahead legitimately. Read
    /// as debt, it held the raise of a volume lowered to the wake share for a whole run
    /// (the 800-IOPS run k3 of docs/priority.md).
    fn over(&self, now: Duration, counters: &Counters) -> bool {
        let secs = now.saturating_sub(self.at).as_secs_f64() + SLICE;
        let ios = self.in_flight as f64 + 1.0;
        let bytes = ios * MAX_IO_BYTES;
        let exceeds = |done: u64, pick: fn(&Limits) -> crate::tier::Limit, unit: f64| {
            pick(&self.limits).get().is_some_and(|c| {
                let credit = self
                    .prior
                    .and_then(|p| pick(&p).get())
                    .map_or(0.0, |p| p.saturating_sub(c) as f64 * 2.0 * SLICE);
                done as f64 > c as f64 * secs + unit + credit
            })
        };
        let c = &self.counters;
        exceeds(counters.rios.saturating_sub(c.rios), |l| l.read_iops, ios)
            || exceeds(counters.wios.saturating_sub(c.wios), |l| l.write_iops, ios)
            || exceeds(
                counters.rbytes.saturating_sub(c.rbytes),
                |l| l.read_bps,
                bytes,
            )
            || exceeds(
                counters.wbytes.saturating_sub(c.wbytes),
                |l| l.write_bps,
                bytes,
            )
    }
}

/// What the node config says about priority.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityConfig {
    pub params: Params,
    /// How often the law runs.
    pub period: Duration,
    /// Capacity overrides, by `MAJ:MIN` or kernel name (`nvme0n1`).
    pub devices: BTreeMap<String, DeviceModel>,
    /// The capacity of a device with no override.
    pub default_model: DeviceModel,
    /// Where `iolane bench --calibrate` stored device capacities (the node's state
    /// directory), read when a device's controller is created; `None`: no calibrations.
    pub calibrations: Option<CalibrationStore>,
}

/// Where the capacity a device's controller started from came from, in precedence order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacitySource {
    /// The node config's `[priority.devices.*]`.
    Config,
    /// `iolane bench --calibrate`, stored in the state directory.
    Calibrated,
    /// `default_iops`.
    Default,
}

impl CapacitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            CapacitySource::Config => "config",
            CapacitySource::Calibrated => "calibrated",
            CapacitySource::Default => "default",
        }
    }
}

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            params: Params::default(),
            period: Duration::from_millis(100),
            devices: BTreeMap::new(),
            default_model: DeviceModel::uniform_iops(DEFAULT_START_IOPS),
            calibrations: None,
        }
    }
}

/// One controller input (a pod's cgroup and the volume device in it), as an id interned
/// by [`Interned`]: the controllers' maps and sorts compare integers, not paths.
type Key = u64;

/// The ids of (pod cgroup, volume device) pairs, both ways.
#[derive(Debug, Default)]
struct Interned {
    ids: HashMap<PathBuf, Vec<(DeviceNumber, Key)>>,
    keys: HashMap<Key, (PathBuf, DeviceNumber)>,
    next: Key,
}

impl Interned {
    fn id(&mut self, cgroup: &Path, dev: DeviceNumber) -> Key {
        if let Some(k) = self
            .ids
            .get(cgroup)
            .and_then(|v| v.iter().find(|(d, _)| *d == dev))
        {
            return k.1;
        }
        let k = self.next;
        self.next += 1;
        self.ids
            .entry(cgroup.to_owned())
            .or_default()
            .push((dev, k));
        self.keys.insert(k, (cgroup.to_owned(), dev));
        k
    }

    fn get(&self, k: Key) -> Option<&(PathBuf, DeviceNumber)> {
        self.keys.get(&k)
    }

    /// Forgets every id not in `live`.
    fn retain(&mut self, live: &HashSet<Key>) {
        if self.keys.len() == live.len() {
            return;
        }
        self.keys.retain(|k, _| live.contains(k));
        self.ids.retain(|_, v| {
            v.retain(|(_, k)| live.contains(k));
            !v.is_empty()
        });
    }
}

/// A physical device (or the set a volume spans) as a controller's key.
pub type DeviceSet = Vec<DeviceNumber>;

/// What one device's controller decided in the last pass, for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    /// The device's kernel name (or `MAJ:MIN`), `+`-joined when a volume spans several.
    pub name: String,
    pub report: DeviceReport,
    /// Where the capacity the controller started from came from.
    pub source: CapacitySource,
    /// Publications on the device by class: (streaming, batch).
    pub publications: (usize, usize),
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriorityPass {
    /// `io.max` lines written.
    pub written: usize,
    /// Changed lines held back this pass: their group ran over its line in force.
    pub deferred: usize,
    /// Failures (lowercase reasons), logged already.
    pub errors: Vec<String>,
    pub devices: Vec<DeviceState>,
}

/// One physical device's controller, with what is looked up once when it is created.
struct Device {
    controller: DeviceController<Key>,
    name: String,
    source: CapacitySource,
}

/// The per-device controllers of a node and what they need across passes.
pub struct NodePriority {
    config: PriorityConfig,
    topology: Topology,
    /// Tier name -> class.
    classes: BTreeMap<String, Priority>,
    /// Target path -> the tier's caps at publish (the ceiling).
    ceilings: HashMap<PathBuf, Limits>,
    /// Volume device -> the physical devices under it.
    physical: HashMap<DeviceNumber, Arc<DeviceSet>>,
    keys: Interned,
    controllers: BTreeMap<DeviceSet, Device>,
    epoch: Instant,
    /// Each input's counters and when they last moved: a batch volume held to a few IOPS
    /// completes nothing in most periods, and would flip between active and idle (and its
    /// line be rewritten) every pass.
    /// The volume device's in-flight count as of the last pass rides along (the IO that
    /// completes after a line is written without being charged to it).
    moved: HashMap<Key, (Counters, Duration, u64)>,
    /// The volume and physical devices' `stat` files, kept open between passes.
    stats: StatFiles,
    /// The last line written for each input.
    written: HashMap<Key, Written>,
}

impl std::fmt::Debug for NodePriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePriority")
            .field("config", &self.config)
            .field("devices", &self.controllers.len())
            .finish_non_exhaustive()
    }
}

impl NodePriority {
    /// Controllers for `tiers`' classes, devices found under `topology`.
    pub fn new(config: PriorityConfig, tiers: &TierSet, topology: Topology) -> NodePriority {
        NodePriority {
            classes: tiers.iter().map(|t| (t.name.clone(), t.priority)).collect(),
            config,
            topology,
            ceilings: HashMap::new(),
            physical: HashMap::new(),
            keys: Interned::default(),
            controllers: BTreeMap::new(),
            epoch: Instant::now(),
            moved: HashMap::new(),
            stats: StatFiles::default(),
            written: HashMap::new(),
        }
    }

    pub fn period(&self) -> Duration {
        self.config.period
    }

    /// Remembers a publication's tier caps as its ceiling (at publish, before the law
    /// replaces the reconciler's desired limits).
    pub fn record(&mut self, target: &Path, ceiling: Limits) {
        self.ceilings.insert(target.to_owned(), ceiling);
    }

    /// The capacity a new controller for `set` starts from, and where it came from: the
    /// node config (by `MAJ:MIN` or kernel name, the first member with one), else the
    /// calibrations of the set's devices (summed: a pool over several PVs), all of them
    /// needed, else the default.
    fn model_for(&self, set: &DeviceSet) -> (DeviceModel, CapacitySource) {
        for dev in set {
            if let Some(m) = self.config.devices.get(&dev.to_string()) {
                return (*m, CapacitySource::Config);
            }
            if let Some(m) = self
                .topology
                .name(*dev)
                .and_then(|n| self.config.devices.get(&n))
            {
                return (*m, CapacitySource::Config);
            }
        }
        if let Some(store) = &self.config.calibrations {
            let mut sum: Option<DeviceModel> = None;
            for dev in set {
                let Some(id) = self.topology.identity(*dev) else {
                    sum = None;
                    break;
                };
                match store.load(&id) {
                    Ok(Some(c)) => {
                        let m = c.model;
                        sum = Some(match sum {
                            None => m,
                            Some(s) => DeviceModel {
                                read_iops: s.read_iops + m.read_iops,
                                write_iops: s.write_iops + m.write_iops,
                                read_bps: s.read_bps + m.read_bps,
                                write_bps: s.write_bps + m.write_bps,
                            },
                        });
                    }
                    Ok(None) => {
                        sum = None;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(device = %dev, identity = %id, error = %e, "priority: calibration not read");
                        sum = None;
                        break;
                    }
                }
            }
            if let Some(m) = sum {
                return (m, CapacitySource::Calibrated);
            }
        }
        (self.config.default_model, CapacitySource::Default)
    }

    fn set_name(&self, set: &DeviceSet) -> String {
        set.iter()
            .map(|d| self.topology.name(*d).unwrap_or_else(|| d.to_string()))
            .collect::<Vec<_>>()
            .join("+")
    }

    /// One pass at the current time; see the module docs.
    pub fn pass(&mut self, reconciler: &mut Reconciler, fs: &dyn CgroupFs) -> PriorityPass {
        self.pass_at(self.epoch.elapsed(), reconciler, fs)
    }

    /// One pass at monotonic time `now` (tests drive the clock).
    pub fn pass_at(
        &mut self,
        now: Duration,
        reconciler: &mut Reconciler,
        fs: &dyn CgroupFs,
    ) -> PriorityPass {
        let mut out = PriorityPass::default();
        let mut count = 0;
        // 1. Inputs, grouped by physical device. Targets: (key, target, desired limits
        // now), borrowed from the reconciler until the writes.
        let mut groups: BTreeMap<Arc<DeviceSet>, Vec<super::PublicationSample<Key>>> =
            BTreeMap::new();
        let mut targets: Vec<(Key, &Path, Limits)> = Vec::new();
        let mut live: HashSet<Key> = HashSet::new();
        let mut volume_devs: HashSet<DeviceNumber> = HashSet::new();
        let mut vstats: HashMap<DeviceNumber, super::topology::BlockStat> = HashMap::new();
        let mut keys_of_dev: HashMap<DeviceNumber, u64> = HashMap::new();
        for p in reconciler.publications() {
            count += 1;
            let (Some(cgroup), Some(ceiling)) = (
                p.cgroup,
                self.ceilings.get(&p.publication.target_path).copied(),
            ) else {
                continue;
            };
            if p.enforced.is_none() {
                continue; // pending or failed: the reconciler deals with it first
            }
            let dev = p.publication.device;
            let key = self.keys.id(cgroup, dev);
            targets.push((key, &p.publication.target_path, p.publication.limits));
            if !live.insert(key) {
                continue; // the same volume in the same pod twice: one input
            }
            let set = match self.physical.get(&dev) {
                Some(set) => Arc::clone(set),
                None => match self.topology.physical(dev) {
                    Ok(set) if !set.is_empty() => {
                        let set = Arc::new(set);
                        self.physical.insert(dev, Arc::clone(&set));
                        set
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let reason = format!("physical device of {dev}: {e}");
                        tracing::warn!(device = %dev, error = %e, "priority: physical device not found");
                        out.errors.push(reason);
                        continue;
                    }
                },
            };
            // The volume's own device counters (`/sys/block/dm-N/stat`), read once per
            // pass per volume device. Not the pod's `io.stat`: on Linux 6.1 a pod cgroup's
            // `io.stat` line for a throttled dm device was seen to stay absent for whole
            // runs while the pod did hundreds of IOPS through it (docs/priority.md,
            // *What is measured*), which left batch looking idle and unthrottled.
            if let std::collections::hash_map::Entry::Vacant(slot) = vstats.entry(dev) {
                match self.stats.stat(&self.topology, dev) {
                    Ok(st) => {
                        slot.insert(st);
                    }
                    Err(e) => {
                        out.errors.push(format!("stat of volume device {dev}: {e}"));
                        continue;
                    }
                }
            }
            let Some(vstat) = vstats.get(&dev).copied() else {
                continue;
            };
            *keys_of_dev.entry(dev).or_insert(0u64) += 1;
            let counters = Counters {
                rios: vstat.reads,
                wios: vstat.writes,
                rbytes: vstat.read_sectors * 512,
                wbytes: vstat.write_sectors * 512,
            };
            let class = self
                .classes
                .get(&p.publication.tier)
                .copied()
                .unwrap_or(Priority::Streaming);
            let vstat = Some(vstat);
            let last_moved = match self.moved.get(&key) {
                Some((before, at, _)) if *before == counters => *at,
                _ => now,
            };
            let device_in_flight = vstat.map_or(0, |s| s.in_flight);
            self.moved
                .insert(key, (counters, last_moved, device_in_flight));
            // Recent IO counts as IO in flight (queued in blk-throttle, which the
            // device's in-flight count does not see).
            let recent = u64::from(now.saturating_sub(last_moved) < ACTIVE_WINDOW);
            volume_devs.insert(dev);
            groups
                .entry(set)
                .or_default()
                .push(super::PublicationSample {
                    key,
                    class,
                    counters,
                    in_flight: Some(device_in_flight + recent),
                    queue_ms: vstat.map(|s| s.weighted_ms),
                    ceiling,
                });
        }
        // A volume published into several pods: its device's counters are split evenly
        // between its inputs (each pod is one input of the law).
        if keys_of_dev.values().any(|n| *n > 1) {
            for samples in groups.values_mut() {
                for s in samples.iter_mut() {
                    let n = self
                        .keys
                        .get(s.key)
                        .and_then(|(_, dev)| keys_of_dev.get(dev))
                        .copied()
                        .unwrap_or(1)
                        .max(1);
                    s.counters = Counters {
                        rios: s.counters.rios / n,
                        wios: s.counters.wios / n,
                        rbytes: s.counters.rbytes / n,
                        wbytes: s.counters.wbytes / n,
                    };
                }
            }
        }
        // Forget what went (sizes first: usually nothing did).
        if self.ceilings.len() > count {
            let targets_now: HashSet<&Path> = reconciler
                .publications()
                .map(|p| p.publication.target_path.as_path())
                .collect();
            self.ceilings
                .retain(|t, _| targets_now.contains(t.as_path()));
        }
        if self.physical.len() > volume_devs.len() {
            self.physical.retain(|d, _| volume_devs.contains(d));
            // A volume device went: close its `stat` file, and those of physical devices
            // no volume is on any more.
            let physical = &self.physical;
            self.stats.retain(|d| {
                volume_devs.contains(d) || physical.values().any(|set| set.contains(d))
            });
        }
        if self.moved.len() > live.len() {
            self.moved.retain(|k, _| live.contains(k));
        }
        if self.written.len() > live.len() {
            self.written.retain(|k, _| live.contains(k));
        }
        self.keys.retain(&live);
        if self.controllers.len() > groups.len() {
            self.controllers
                .retain(|set, _| groups.keys().any(|g| g.as_ref() == set));
        }
        targets.sort_unstable_by_key(|t| t.0);

        // 2. One pass per device.
        let mut writes: Vec<(Key, Limits)> = Vec::new();
        // Inputs on devices where streaming is active: their lines are held while their
        // group runs over them (on a device where streaming idles, a burst harms nobody,
        // and batch must get the device back at once).
        let mut guarded: HashSet<Key> = HashSet::new();
        for (set, samples) in &groups {
            let set: &DeviceSet = set;
            if !self.controllers.contains_key(set) {
                let (model, source) = self.model_for(set);
                let name = self.set_name(set);
                match DeviceController::new(model, self.config.params) {
                    Ok(controller) => {
                        tracing::info!(device = %name, read_iops = model.read_iops, write_iops = model.write_iops, read_bps = model.read_bps, write_bps = model.write_bps, source = source.as_str(), "priority: controlling a device");
                        self.controllers.insert(
                            set.clone(),
                            Device {
                                controller,
                                name,
                                source,
                            },
                        );
                    }
                    Err(e) => {
                        out.errors.push(format!("device {name}: {e}"));
                        continue;
                    }
                }
            }
            let Some(entry) = self.controllers.get_mut(set) else {
                continue;
            };
            let device = set.iter().try_fold(DeviceSample::default(), |acc, d| {
                let s = self.stats.stat(&self.topology, *d).ok()?;
                Some(DeviceSample {
                    ios: acc.ios + s.ios,
                    weighted_ms: acc.weighted_ms + s.weighted_ms,
                })
            });
            let decision = entry.controller.pass(now, samples, device);
            if tracing::enabled!(tracing::Level::DEBUG) {
                // One line per device and pass (debug only): what the law saw and chose.
                let seen: Vec<String> = samples
                    .iter()
                    .map(|s| {
                        format!(
                            "{}:{}/{}",
                            if s.class == Priority::Streaming {
                                's'
                            } else {
                                'b'
                            },
                            s.counters.rios + s.counters.wios,
                            s.in_flight
                                .map_or_else(|| "-".to_owned(), |n| n.to_string())
                        )
                    })
                    .collect();
                let r = &decision.report;
                tracing::debug!(device = %entry.name, budget = r.batch_budget, streaming_active = r.streaming_active, backlogged = r.streaming_backlogged, saturated = r.saturated, streaming_use = r.streaming_use, batch_use = r.batch_use, inputs = %seen.join(" "), "priority: pass");
            }
            let streaming = samples
                .iter()
                .filter(|s| s.class == Priority::Streaming)
                .count();
            out.devices.push(DeviceState {
                name: entry.name.clone(),
                report: decision.report,
                source: entry.source,
                publications: (streaming, samples.len() - streaming),
            });
            if decision.report.streaming_active {
                guarded.extend(samples.iter().map(|s| s.key));
            }
            writes.extend(decision.limits);
        }

        // 3. Write what changed: the targets of each changed input (cloned, the borrow of
        // the reconciler ends here), then the lines, then the reconciler's desired limits.
        let mut changed: Vec<(Key, Limits, Vec<PathBuf>)> = Vec::new();
        for (key, limits) in writes {
            let from = targets.partition_point(|t| t.0 < key);
            let ts = &targets[from..targets.partition_point(|t| t.0 <= key)];
            if ts.is_empty() || ts.iter().all(|(_, _, held)| held.canonical() == limits) {
                continue;
            }
            changed.push((key, limits, ts.iter().map(|t| t.1.to_owned()).collect()));
        }
        for (key, limits, ts) in changed {
            let Some((cgroup, dev)) = self.keys.get(key) else {
                continue;
            };
            let dev = *dev;
            let seen = self.moved.get(&key).map(|(c, _, f)| (*c, *f));
            let counters = seen.map(|(c, _)| c);
            if let (Some(w), Some(c)) = (self.written.get_mut(&key), counters)
                && guarded.contains(&key)
                && w.over(now, &c)
            {
                let since = match w.deferred {
                    Some((since, last)) if now.saturating_sub(last) <= ACTIVE_WINDOW => since,
                    _ => now,
                };
                w.deferred = Some((since, now));
                if now.saturating_sub(since) < MAX_DEFER {
                    out.deferred += 1;
                    tracing::debug!(cgroup = %cgroup.display(), device = %dev, limits = %limits, "priority: io.max change held (the group is over its line)");
                    continue;
                }
            }
            match apply::apply(fs, cgroup, dev, &limits) {
                Ok(()) => {
                    out.written += 1;
                    if let Some((counters, in_flight)) = seen {
                        let prior = self.written.get(&key).map(|w| w.limits);
                        self.written.insert(
                            key,
                            Written {
                                at: now,
                                counters,
                                in_flight,
                                limits,
                                prior,
                                deferred: None,
                            },
                        );
                    }
                    for t in &ts {
                        reconciler.set_limits(t, limits);
                    }
                    tracing::debug!(cgroup = %cgroup.display(), device = %dev, limits = %limits, "priority: io.max set");
                }
                // The pod is going: the reconciler's next pass forgets it.
                Err(e) if e.is_not_found() => {
                    tracing::debug!(cgroup = %cgroup.display(), device = %dev, "priority: pod cgroup gone");
                }
                Err(e) => {
                    tracing::warn!(cgroup = %cgroup.display(), device = %dev, error = %e, "priority: io.max not written");
                    out.errors.push(e.to_string());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;

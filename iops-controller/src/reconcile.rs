//! The `io.max` reconciler: keeps every publication's caps true for as long as its pod
//! lives.
//!
//! The reconciler keeps the set of publications (volume, kubelet target path, pod UID,
//! device number, desired [`Limits`]): the enforcement controller
//! ([`crate::enforcement`]) adds and removes them one at a time ([`Reconciler::upsert`],
//! [`Reconciler::release`], [`Reconciler::forget_unless`]), writes a new one's line alone
//! ([`Reconciler::enforce_one`]) and runs [`Reconciler::pass_kept`]; [`Reconciler::pass`]
//! takes the whole set at once instead.
//! For each publication a pass
//!
//! 1. finds the pod's cgroup under the injected cgroup root with [`find_pod_cgroup`]
//!    (systemd and cgroupfs layouts, any QoS class), once, then remembers the path;
//! 2. checks that the io controller is enabled there;
//! 3. reads the device's `io.max` line and, when it differs from the desired limits, writes
//!    the whole line (all four keys, [`apply::apply`]);
//! 4. reads the device's `io.stat` counters and keeps them for metrics.
//!
//! Each publication ends the pass with one [`Outcome`]: in sync, applied (first write, a
//! tier change, or after a restart that found the line wrong), repaired (a line this
//! reconciler had written or confirmed was changed behind its back), pending (the pod's
//! cgroup does not exist yet, or has no io controller), gone (the pod's cgroup existed and
//! is now removed: the publication is forgotten without error and its cgroup is never
//! searched for again, since a pod UID's cgroup never comes back) or failed (the reason
//! is in [`PassReport::errors`] and logged).
//!
//! The reconciler holds no state that matters across restarts: a new one re-finds each
//! cgroup, finds lines already right in sync, and applies the rest.
//!
//! **Architecture Invariant:** the reconciler never creates or removes a cgroup, and writes
//! only the `io.max` line of a device it was given. A publication that leaves the desired
//! set has its line reset: at once by [`Reconciler::release`], or by the next pass for one
//! forgotten (its mount gone) and for a release whose write failed; a pass retries every
//! reset still owed until it succeeds or the cgroup is gone (see `lifts`).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::apply::{self, ApplyError, CgroupFs};
use crate::cgroup::{PodUid, find_pod_cgroup};
use crate::device::DeviceNumber;
use crate::iostat::IoStat;
use crate::tier::Limits;

mod lifts;

/// One volume published to one pod: what the reconciler is asked to keep true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// The CSI volume ID.
    pub volume_id: String,
    /// kubelet's target path for this pod; identifies the publication.
    pub target_path: PathBuf,
    /// The pod the volume is published to.
    pub pod_uid: PodUid,
    /// The volume's block device (thin LV or loop device), as `io.max` keys it.
    pub device: DeviceNumber,
    /// The volume's resolved tier name, for metrics and status output.
    pub tier: String,
    /// The caps the pod must have on `device`.
    pub limits: Limits,
}

/// Why a publication is not enforced yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// No cgroup for the pod under the cgroup root (yet).
    NoCgroup,
    /// The pod's cgroup exists, but the io controller is not enabled in it.
    NoIoController,
}

/// What one pass did with one publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The line already held the desired limits; nothing written.
    InSync,
    /// The line was written: the first time, after a tier change, or after a restart.
    Applied,
    /// A line this reconciler had written (or found right) had changed; written again.
    Repaired,
    /// Not enforceable yet; see [`Pending`].
    Pending(Pending),
    /// The pod's cgroup is gone; the publication's cgroup state is forgotten.
    Gone,
    /// Something failed; the reason is in [`PassReport::errors`].
    Failed,
}

impl std::fmt::Display for Outcome {
    /// The outcome as `/status` and `iolane status` show it: `InSync`, `Applied`,
    /// `Repaired`, `Pending(NoCgroup)`, `Pending(NoIoController)`, `Gone`, `Failed`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::InSync => "InSync",
            Outcome::Applied => "Applied",
            Outcome::Repaired => "Repaired",
            Outcome::Pending(Pending::NoCgroup) => "Pending(NoCgroup)",
            Outcome::Pending(Pending::NoIoController) => "Pending(NoIoController)",
            Outcome::Gone => "Gone",
            Outcome::Failed => "Failed",
        })
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;

    /// The inverse of the `Display` form.
    fn from_str(s: &str) -> Result<Outcome, String> {
        Ok(match s {
            "InSync" => Outcome::InSync,
            "Applied" => Outcome::Applied,
            "Repaired" => Outcome::Repaired,
            "Pending(NoCgroup)" => Outcome::Pending(Pending::NoCgroup),
            "Pending(NoIoController)" => Outcome::Pending(Pending::NoIoController),
            "Gone" => Outcome::Gone,
            "Failed" => Outcome::Failed,
            other => return Err(format!("unknown reconcile outcome {other:?}")),
        })
    }
}

/// A failure during a pass, for one publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassError {
    pub volume_id: String,
    pub target_path: PathBuf,
    /// Lowercase, with the cause chain (paths and lines written included).
    pub reason: String,
}

/// What one [`Reconciler::pass`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Publications whose line already held the desired limits.
    pub in_sync: usize,
    /// Lines written for the first time, after a tier change or after a restart.
    pub applied: usize,
    /// Lines written again after they had been changed behind the reconciler's back.
    pub repaired: usize,
    /// Publications whose pod cgroup does not exist yet or has no io controller.
    pub pending: usize,
    /// Publications whose pod cgroup has gone.
    pub gone: usize,
    /// Publications known from the previous pass and no longer desired.
    pub forgotten: usize,
    /// Lines of publications no longer desired reset by this pass (a failed release
    /// retried, a forgotten publication's caps lifted).
    pub lifted: usize,
    /// Every failure: enforcement (outcome [`Outcome::Failed`]) and `io.stat` reads
    /// (the publication keeps its enforcement outcome).
    pub errors: Vec<PassError>,
    /// Each desired publication's outcome, by target path.
    pub outcomes: BTreeMap<PathBuf, Outcome>,
    /// How long the pass took.
    pub duration: Duration,
}

/// Where a publication's pod cgroup is, as far as the reconciler knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CgroupState {
    /// Not found yet: search on every pass.
    Unknown,
    Found(PathBuf),
    /// Found once and removed since: never searched again.
    Gone,
}

#[derive(Debug)]
struct Tracked {
    publication: Publication,
    cgroup: CgroupState,
    /// The (canonical) limits this reconciler last wrote or found in the line.
    enforced: Option<Limits>,
    stats: Option<IoStat>,
    outcome: Outcome,
}

impl Tracked {
    fn new(publication: Publication) -> Tracked {
        Tracked {
            publication,
            cgroup: CgroupState::Unknown,
            enforced: None,
            stats: None,
            outcome: Outcome::Pending(Pending::NoCgroup),
        }
    }

    fn cgroup_gone(&mut self) -> Outcome {
        self.cgroup = CgroupState::Gone;
        self.enforced = None;
        self.stats = None;
        Outcome::Gone
    }
}

/// A publication as the reconciler last saw it, for metrics and status output.
#[derive(Debug, Clone, Copy)]
pub struct PublicationState<'a> {
    pub publication: &'a Publication,
    /// The pod's cgroup directory, once found (and until it is gone).
    pub cgroup: Option<&'a Path>,
    /// The limits in force on the device, as last written or read back; `None` until the
    /// line has been enforced (and after the cgroup is gone).
    pub enforced: Option<Limits>,
    /// The pod's IO counters on the device from the last pass; `None` before the first
    /// read, and while the pod has done no IO on it.
    pub stats: Option<IoStat>,
    /// The last pass's outcome.
    pub outcome: Outcome,
}

/// Keeps desired and actual `io.max` lines equal; see the module docs.
#[derive(Debug, Default)]
pub struct Reconciler {
    tracked: BTreeMap<PathBuf, Tracked>,
    /// Publications forgotten by [`Reconciler::forget_unless`] since the last pass.
    forgotten: usize,
    /// Lines still to reset, by (cgroup, device): see `lifts`.
    lifts: BTreeMap<(PathBuf, DeviceNumber), lifts::Lift>,
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one pass over `desired`, the complete set of current publications, with pod
    /// cgroups searched under `cgroup_root`. Publications from earlier passes that are not
    /// in `desired` are forgotten and their lines reset.
    pub fn pass(
        &mut self,
        desired: Vec<Publication>,
        cgroup_root: &Path,
        fs: &dyn CgroupFs,
    ) -> PassReport {
        let start = Instant::now();
        let mut report = PassReport::default();

        let mut next = BTreeMap::new();
        for publication in desired {
            let key = publication.target_path.clone();
            if next.contains_key(&key) {
                report.errors.push(PassError {
                    reason: format!(
                        "target path {} is listed twice; the first publication is kept",
                        key.display()
                    ),
                    volume_id: publication.volume_id,
                    target_path: key,
                });
                continue;
            }
            let tracked = self.take_for(publication);
            next.insert(key, tracked);
        }
        let old = std::mem::replace(&mut self.tracked, next);
        report.forgotten = old.len() + std::mem::take(&mut self.forgotten);
        for t in old.into_values() {
            log_forgotten(&t.publication);
            self.queue_lift(t, 0);
        }
        self.enforce_all(&mut report, cgroup_root, fs);
        report.duration = start.elapsed();
        report
    }

    /// Adds `publication` to the set this reconciler keeps, replacing one at the same
    /// target path (keeping what is known of its cgroup when pod and device are the same).
    /// Nothing is written until the next pass.
    pub fn upsert(&mut self, publication: Publication) {
        let key = publication.target_path.clone();
        let tracked = self.take_for(publication);
        self.tracked.insert(key, tracked);
    }

    /// Whether a publication at `target_path` is in the set.
    pub fn contains(&self, target_path: &Path) -> bool {
        self.tracked.contains_key(target_path)
    }

    /// Forgets every publication whose target path `keep` rejects (their mounts are
    /// gone); the next pass counts them as forgotten and resets their lines. Returns them.
    pub fn forget_unless(&mut self, mut keep: impl FnMut(&Path) -> bool) -> Vec<Publication> {
        let gone: Vec<PathBuf> = self.tracked.keys().filter(|t| !keep(t)).cloned().collect();
        let mut removed = Vec::with_capacity(gone.len());
        for key in &gone {
            let Some(t) = self.tracked.remove(key) else {
                continue;
            };
            log_forgotten(&t.publication);
            removed.push(t.publication.clone());
            self.queue_lift(t, 0);
        }
        self.forgotten += removed.len();
        removed
    }

    /// Runs one pass over the set this reconciler keeps (see [`Reconciler::upsert`]), with
    /// pod cgroups searched under `cgroup_root`.
    pub fn pass_kept(&mut self, cgroup_root: &Path, fs: &dyn CgroupFs) -> PassReport {
        let start = Instant::now();
        let mut report = PassReport {
            forgotten: std::mem::take(&mut self.forgotten),
            ..PassReport::default()
        };
        self.enforce_all(&mut report, cgroup_root, fs);
        report.duration = start.elapsed();
        report
    }

    /// The tracked state for `publication`: the one kept at its target path when it is for
    /// the same pod and device, a new one otherwise (the same target path for another pod
    /// or device is another publication).
    fn take_for(&mut self, publication: Publication) -> Tracked {
        match self.tracked.remove(&publication.target_path) {
            Some(mut t)
                if t.publication.pod_uid == publication.pod_uid
                    && t.publication.device == publication.device =>
            {
                t.publication = publication;
                t
            }
            _ => Tracked::new(publication),
        }
    }

    /// Brings every tracked publication's line to its limits, counting into `report`.
    fn enforce_all(&mut self, report: &mut PassReport, cgroup_root: &Path, fs: &dyn CgroupFs) {
        self.retry_lifts(report, fs);
        // (cgroup, device) -> (target path, limits) of the first publication enforcing it.
        let mut claims: BTreeMap<(PathBuf, DeviceNumber), (PathBuf, Limits)> = BTreeMap::new();
        for t in self.tracked.values_mut() {
            let outcome = match enforce(t, cgroup_root, fs, &mut claims) {
                Ok(outcome) => outcome,
                Err(reason) => {
                    tracing::warn!(
                        volume.id = %t.publication.volume_id,
                        pod.uid = %t.publication.pod_uid,
                        target = %t.publication.target_path.display(),
                        error = %reason,
                        "io.max not enforced"
                    );
                    report.errors.push(PassError {
                        volume_id: t.publication.volume_id.clone(),
                        target_path: t.publication.target_path.clone(),
                        reason,
                    });
                    Outcome::Failed
                }
            };
            if let Err(reason) = refresh_stats(t, outcome, fs) {
                tracing::warn!(
                    volume.id = %t.publication.volume_id,
                    pod.uid = %t.publication.pod_uid,
                    error = %reason,
                    "io.stat not read"
                );
                report.errors.push(PassError {
                    volume_id: t.publication.volume_id.clone(),
                    target_path: t.publication.target_path.clone(),
                    reason,
                });
            }
            t.outcome = outcome;
            match outcome {
                Outcome::InSync => report.in_sync += 1,
                Outcome::Applied => report.applied += 1,
                Outcome::Repaired => report.repaired += 1,
                Outcome::Pending(_) => report.pending += 1,
                Outcome::Gone => report.gone += 1,
                Outcome::Failed => {}
            }
            report
                .outcomes
                .insert(t.publication.target_path.clone(), outcome);
        }
    }

    /// Brings the line of the publication at `target_path`, alone, to its limits: a
    /// publish writes its own line and leaves the others to the next pass. Returns its
    /// outcome and, when it failed, the reason. As in a pass, a publication of the same
    /// device in the same cgroup that comes first in target order keeps its limits.
    pub fn enforce_one(
        &mut self,
        target_path: &Path,
        cgroup_root: &Path,
        fs: &dyn CgroupFs,
    ) -> (Outcome, Option<String>) {
        let Some(dev) = self.tracked.get(target_path).map(|t| t.publication.device) else {
            let reason = format!("{} is not a known publication", target_path.display());
            return (Outcome::Failed, Some(reason));
        };
        let mut claims: BTreeMap<(PathBuf, DeviceNumber), (PathBuf, Limits)> = BTreeMap::new();
        for (key, other) in self
            .tracked
            .range::<Path, _>((Bound::Unbounded, Bound::Excluded(target_path)))
        {
            if let CgroupState::Found(cgroup) = &other.cgroup
                && other.publication.device == dev
            {
                claims
                    .entry((cgroup.clone(), dev))
                    .or_insert_with(|| (key.clone(), other.publication.limits.canonical()));
            }
        }
        let Some(t) = self.tracked.get_mut(target_path) else {
            return (Outcome::Failed, None);
        };
        let (outcome, reason) = match enforce(t, cgroup_root, fs, &mut claims) {
            Ok(outcome) => (outcome, None),
            Err(reason) => {
                tracing::warn!(
                    volume.id = %t.publication.volume_id,
                    pod.uid = %t.publication.pod_uid,
                    target = %t.publication.target_path.display(),
                    error = %reason,
                    "io.max not enforced"
                );
                (Outcome::Failed, Some(reason))
            }
        };
        t.outcome = outcome;
        (outcome, reason)
    }

    /// Forgets the publication at `target_path` and lifts its caps (writes the device's
    /// all-`max` line), for NodeUnpublishVolume. Returns whether it wrote: `false` when the
    /// publication is unknown, its cgroup was never found or is gone, or another tracked
    /// publication still enforces the same device in the same cgroup. When the write fails
    /// the reset is queued and every pass retries it until it succeeds.
    pub fn release(&mut self, target_path: &Path, fs: &dyn CgroupFs) -> Result<bool, ApplyError> {
        let Some(t) = self.tracked.remove(target_path) else {
            return Ok(false);
        };
        let CgroupState::Found(cgroup) = &t.cgroup else {
            return Ok(false);
        };
        let dev = t.publication.device;
        if self.enforced_elsewhere(cgroup, dev) {
            return Ok(false);
        }
        match apply::reset(fs, cgroup, dev) {
            Ok(()) => {
                self.lifts.remove(&(cgroup.clone(), dev));
                tracing::info!(
                    volume.id = %t.publication.volume_id,
                    pod.uid = %t.publication.pod_uid,
                    device = %dev,
                    "io.max caps lifted"
                );
                Ok(true)
            }
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => {
                self.queue_lift(t, 1);
                Err(e)
            }
        }
    }

    /// Makes `limits` the desired limits of the publication at `target_path`, already
    /// written to its line (the priority controller's dynamic limits): the next pass finds
    /// them in sync. Returns whether the publication is known.
    pub fn set_limits(&mut self, target_path: &Path, limits: Limits) -> bool {
        let Some(t) = self.tracked.get_mut(target_path) else {
            return false;
        };
        t.publication.limits = limits;
        t.enforced = Some(limits.canonical());
        true
    }

    /// Every publication of the last pass, by target path.
    pub fn publications(&self) -> impl Iterator<Item = PublicationState<'_>> {
        self.tracked.values().map(|t| PublicationState {
            publication: &t.publication,
            cgroup: match &t.cgroup {
                CgroupState::Found(p) => Some(p.as_path()),
                CgroupState::Unknown | CgroupState::Gone => None,
            },
            enforced: t.enforced,
            stats: t.stats,
            outcome: t.outcome,
        })
    }

    /// The publication at `target_path`, as of the last pass.
    pub fn get(&self, target_path: &Path) -> Option<PublicationState<'_>> {
        self.publications()
            .find(|p| p.publication.target_path == target_path)
    }
}

/// Brings one publication's line to its desired limits. `Err` carries the reason.
fn enforce(
    t: &mut Tracked,
    cgroup_root: &Path,
    fs: &dyn CgroupFs,
    claims: &mut BTreeMap<(PathBuf, DeviceNumber), (PathBuf, Limits)>,
) -> Result<Outcome, String> {
    let p = &t.publication;
    let cgroup = match &t.cgroup {
        CgroupState::Gone => return Ok(Outcome::Gone),
        CgroupState::Found(path) => path.clone(),
        CgroupState::Unknown => match find_pod_cgroup(cgroup_root, &p.pod_uid) {
            Ok(Some(path)) => {
                tracing::debug!(
                    volume.id = %p.volume_id,
                    pod.uid = %p.pod_uid,
                    cgroup = %path.display(),
                    "pod cgroup found"
                );
                t.cgroup = CgroupState::Found(path.clone());
                path
            }
            Ok(None) => {
                tracing::debug!(
                    volume.id = %p.volume_id,
                    pod.uid = %p.pod_uid,
                    "pod cgroup not there yet"
                );
                return Ok(Outcome::Pending(Pending::NoCgroup));
            }
            Err(e) => return Err(e.to_string()),
        },
    };
    match fs.io_enabled(&cgroup) {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(
                volume.id = %p.volume_id,
                cgroup = %cgroup.display(),
                "io controller not enabled in the pod cgroup"
            );
            return Ok(Outcome::Pending(Pending::NoIoController));
        }
        Err(e) if e.is_not_found() => return Ok(pod_gone(t, &cgroup)),
        Err(e) => return Err(e.to_string()),
    }

    let p = &t.publication;
    let (dev, desired) = (p.device, p.limits.canonical());
    match claims.entry((cgroup.clone(), dev)) {
        Entry::Vacant(slot) => {
            slot.insert((p.target_path.clone(), desired));
        }
        Entry::Occupied(claim) => {
            let (other, limits) = claim.get();
            if *limits != desired {
                return Err(format!(
                    "device {dev} in {} is also published at {} with other limits ({limits}, \
                     not {desired}); the first publication's limits are kept",
                    cgroup.display(),
                    other.display()
                ));
            }
        }
    }

    let current = match apply::current(fs, &cgroup, dev) {
        Ok(current) => current,
        Err(e) if e.is_not_found() => return Ok(pod_gone(t, &cgroup)),
        Err(e) => return Err(e.to_string()),
    };
    if current == desired {
        t.enforced = Some(desired);
        return Ok(Outcome::InSync);
    }
    let outcome = if t.enforced == Some(desired) {
        Outcome::Repaired
    } else {
        Outcome::Applied
    };
    match apply::apply(fs, &cgroup, dev, &desired) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => return Ok(pod_gone(t, &cgroup)),
        Err(e) => return Err(e.to_string()),
    }
    let p = &t.publication;
    match outcome {
        Outcome::Repaired => tracing::warn!(
            volume.id = %p.volume_id,
            pod.uid = %p.pod_uid,
            device = %dev,
            found = %current,
            limits = %desired,
            "io.max changed behind iolane's back; repaired"
        ),
        _ => tracing::info!(
            volume.id = %p.volume_id,
            pod.uid = %p.pod_uid,
            tier = %p.tier,
            device = %dev,
            limits = %desired,
            "io.max applied"
        ),
    }
    t.enforced = Some(desired);
    Ok(outcome)
}

fn log_forgotten(p: &Publication) {
    tracing::debug!(
        volume.id = %p.volume_id,
        pod.uid = %p.pod_uid,
        target = %p.target_path.display(),
        "publication no longer desired, forgotten"
    );
}

fn pod_gone(t: &mut Tracked, cgroup: &Path) -> Outcome {
    tracing::info!(
        volume.id = %t.publication.volume_id,
        pod.uid = %t.publication.pod_uid,
        cgroup = %cgroup.display(),
        "pod cgroup gone, publication forgotten"
    );
    t.cgroup_gone()
}

/// Re-reads the publication's `io.stat` counters when this pass enforced its line;
/// otherwise leaves them as they were (cleared already when the cgroup went).
fn refresh_stats(t: &mut Tracked, outcome: Outcome, fs: &dyn CgroupFs) -> Result<(), String> {
    let CgroupState::Found(cgroup) = &t.cgroup else {
        return Ok(());
    };
    if !matches!(
        outcome,
        Outcome::InSync | Outcome::Applied | Outcome::Repaired
    ) {
        return Ok(());
    }
    match apply::stats(fs, cgroup, t.publication.device) {
        Ok(stats) => {
            t.stats = stats;
            Ok(())
        }
        Err(e) => {
            t.stats = None;
            if e.is_not_found() {
                Ok(())
            } else {
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests;

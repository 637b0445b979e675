//! The enforcement controller: the one copy of this node's desired publications, kept true
//! in each pod's cgroup v2 `io.max` by the [`Reconciler`].
//!
//! A *publication* is one NodePublishVolume target of a volume for one pod: the volume's
//! own block device number (the thin LV's device-mapper node, or the loop device) and the
//! caps of its tier. The driver records it at publish ([`Enforcement::publish`], which
//! writes the line at once when the pod's cgroup exists), forgets it at unpublish
//! ([`Enforcement::unpublish`], which lifts the caps), and before every pass of the loop
//! ([`Enforcement::run`]) feeds in what the mount table says (publications adopted after a
//! restart, mounts gone behind its back).
//!
//! Enforcement never fails a publish: a pod's cgroup may appear after its volumes are
//! published, and a node without the io controller still runs pods. What did not apply is
//! logged, counted and retried by the next pass. [`Enforcement::snapshot`] is what `/status`
//! shows of each publication.
//!
//! One lock guards the set, the reconciler's state and the mounts known not to be iolane's;
//! cgroup files are read and written under it.

mod run;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use snapshot::{Counters, PublicationSnapshot, text};

use crate::apply::{self, ApplyError, CgroupFs};
use crate::cgroup::{PodUid, find_pod_cgroup};
use crate::device::DeviceNumber;
use crate::metrics::{EnforcementMetrics, PriorityMetrics};
use crate::priority::{DeviceState, NodePriority, PriorityPass};
use crate::reconcile::{Outcome, PassReport, Publication, Reconciler};

/// The publications of this node, the reconciler that enforces them, and the cgroup tree.
pub struct Enforcement {
    root: PathBuf,
    fs: Arc<dyn CgroupFs>,
    state: Mutex<State>,
    /// Every pass's report and state go here when metrics are served.
    metrics: Option<Arc<EnforcementMetrics>>,
    /// Every priority pass's device states go here when metrics are served.
    priority_metrics: Option<Arc<PriorityMetrics>>,
}

#[derive(Default)]
struct State {
    /// Every publication iolane knows, by target path (the desired set), with what each
    /// pass found.
    reconciler: Reconciler,
    /// Kubelet-shaped mounts found not to be iolane volumes (other drivers'), so the
    /// mount table is not looked up for them again on every pass.
    foreign: BTreeSet<PathBuf>,
    /// The priority controllers, when the node config enables them.
    priority: Option<NodePriority>,
    /// What each device's controller decided in the last priority pass (for `/status`).
    devices: Vec<DeviceState>,
}

impl std::fmt::Debug for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcement")
            .field("root", &self.root)
            .field(
                "publications",
                &self.lock().reconciler.publications().count(),
            )
            .finish_non_exhaustive()
    }
}

impl Enforcement {
    /// `root` is the cgroup v2 mount (`/sys/fs/cgroup`; a tempdir in tests).
    pub fn new(root: PathBuf, fs: Arc<dyn CgroupFs>) -> Self {
        Enforcement {
            root,
            fs,
            state: Mutex::new(State::default()),
            metrics: None,
            priority_metrics: None,
        }
    }

    /// Runs the priority controllers (issue 9) over the publications: see
    /// [`crate::priority::node`] and [`Enforcement::run_priority`].
    #[must_use]
    pub fn with_priority(
        self,
        priority: NodePriority,
        metrics: Option<Arc<PriorityMetrics>>,
    ) -> Self {
        self.lock().priority = Some(priority);
        Enforcement {
            priority_metrics: metrics,
            ..self
        }
    }

    /// The priority law's period, when it is enabled.
    pub fn priority_period(&self) -> Option<std::time::Duration> {
        self.lock().priority.as_ref().map(NodePriority::period)
    }

    /// One pass of the priority controllers; `None` when they are not enabled.
    pub fn priority_pass(&self) -> Option<PriorityPass> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let priority = state.priority.as_mut()?;
        let pass = priority.pass(&mut state.reconciler, self.fs.as_ref());
        if let Some(m) = &self.priority_metrics {
            m.observe(&pass);
        }
        state.devices.clone_from(&pass.devices);
        Some(pass)
    }

    /// Each controlled device as of the last priority pass (empty while priority is off).
    pub fn priority_devices(&self) -> Vec<DeviceState> {
        self.lock().devices.clone()
    }

    /// Feeds every pass to `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<EnforcementMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The cgroup v2 mount pod cgroups are searched under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every publication known now, in target order.
    pub fn publications(&self) -> Vec<Publication> {
        self.lock()
            .reconciler
            .publications()
            .map(|p| p.publication.clone())
            .collect()
    }

    /// Whether `target` is a known publication, or known not to be one of iolane's.
    pub fn knows(&self, target: &Path) -> bool {
        let state = self.lock();
        state.reconciler.contains(target) || state.foreign.contains(target)
    }

    /// Remembers that the mount at `target` is not an iolane volume.
    pub fn mark_foreign(&self, target: &Path) {
        self.lock().foreign.insert(target.to_owned());
    }

    /// Records a publication (replacing one at the same target) and runs a pass, so its
    /// line is written now if its pod's cgroup is there. Returns its outcome and the
    /// reason when it failed.
    pub fn publish(&self, p: Publication) -> (Outcome, Option<String>) {
        let target = p.target_path.clone();
        let mut state = self.lock();
        if let Some(priority) = state.priority.as_mut() {
            priority.record(&target, p.limits);
        }
        state.reconciler.upsert(p);
        let report = self.pass_locked(&mut state);
        let outcome = report
            .outcomes
            .get(&target)
            .copied()
            .unwrap_or(Outcome::Failed);
        let reason = report
            .errors
            .into_iter()
            .find(|e| e.target_path == target)
            .map(|e| e.reason);
        (outcome, reason)
    }

    /// Forgets the publication at `target` and lifts its caps. `Ok(None)` when there was
    /// no such publication; `Ok(Some(wrote))` otherwise (see [`Reconciler::release`]).
    /// When the write fails the error is returned and every pass retries the reset.
    pub fn unpublish(&self, target: &Path) -> Result<Option<bool>, ApplyError> {
        let mut state = self.lock();
        if !state.reconciler.contains(target) {
            return Ok(None);
        }
        state.reconciler.release(target, self.fs.as_ref()).map(Some)
    }

    /// Lifts the caps of `dev` in pod `pod`'s cgroup unless a known publication enforces
    /// that device there. For a NodeUnpublishVolume whose publication this process never
    /// recorded: the process restarted between the publish and the unpublish (before a
    /// pass adopted the mount), or between an earlier attempt's unmount and its lift.
    /// Returns whether a capped line was reset; an error says why it could not be.
    pub fn lift_unknown(&self, pod: &PodUid, dev: DeviceNumber) -> Result<bool, String> {
        let Some(cgroup) = find_pod_cgroup(&self.root, pod).map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let state = self.lock();
        if state.reconciler.enforces(&cgroup, dev) {
            return Ok(false);
        }
        let fs = self.fs.as_ref();
        match apply::current(fs, &cgroup, dev) {
            Ok(l) if l.is_unlimited() => return Ok(false),
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
        match apply::reset(fs, &cgroup, dev) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Forgets publications whose targets `keep` rejects (their mounts are gone: the pod
    /// is gone or kubelet cleaned up); the next pass resets their lines.
    pub fn retain(&self, mut keep: impl FnMut(&Path) -> bool) -> Vec<Publication> {
        let mut state = self.lock();
        state.foreign.retain(|t| keep(t));
        state.reconciler.forget_unless(keep)
    }

    /// One reconciler pass over every known publication.
    pub fn pass(&self) -> PassReport {
        let mut state = self.lock();
        self.pass_locked(&mut state)
    }

    fn pass_locked(&self, state: &mut State) -> PassReport {
        let report = state.reconciler.pass_kept(&self.root, self.fs.as_ref());
        if let Some(m) = &self.metrics {
            m.observe(&report, &state.reconciler);
        }
        report
    }

    /// Every publication as of the last pass, by volume ID, with the caps in its pod's
    /// `io.max` and its `io.stat` counters read now.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<PublicationSnapshot>> {
        let state = self.lock();
        let fs = self.fs.as_ref();
        let mut out: BTreeMap<String, Vec<PublicationSnapshot>> = BTreeMap::new();
        for p in state.reconciler.publications() {
            let dev = p.publication.device;
            let io_max = p.cgroup.and_then(|c| apply::current(fs, c, dev).ok());
            let stats = p
                .cgroup
                .and_then(|c| apply::stats(fs, c, dev).ok().flatten())
                .map(Counters::from);
            out.entry(p.publication.volume_id.clone())
                .or_default()
                .push(PublicationSnapshot {
                    target: p.publication.target_path.clone(),
                    pod_uid: p.publication.pod_uid.clone(),
                    device: dev,
                    cgroup: p.cgroup.map(Path::to_owned),
                    io_max,
                    outcome: p.outcome,
                    stats,
                });
        }
        out
    }
}

#[cfg(test)]
mod tests;

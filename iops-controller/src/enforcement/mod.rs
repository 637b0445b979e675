//! The enforcement controller: the one copy of this node's desired publications, kept true
//! in each pod's cgroup v2 `io.max` by the [`Reconciler`].
//!
//! A *publication* is one NodePublishVolume target of a volume for one pod: the volume's
//! own block device number (the thin LV's device-mapper node, or the loop device) and the
//! caps of its tier. The driver records it at publish ([`Enforcement::publish`], which
//! writes its own line at once when the pod's cgroup exists: one publication, not a pass),
//! forgets it at unpublish ([`Enforcement::unpublish`], which lifts the caps), and before
//! every pass of the loop ([`Enforcement::run`]) feeds in what the mount table says
//! (publications adopted after a restart, mounts gone behind its back).
//!
//! Enforcement never fails a publish: a pod's cgroup may appear after its volumes are
//! published, and a node without the io controller still runs pods. What did not apply is
//! logged, counted and retried by the next pass. [`Enforcement::snapshot`] is what `/status`
//! shows of each publication.
//!
//! One lock guards the set, the reconciler's state and the mounts known not to be iolane's:
//! an async (tokio) mutex, so a call waiting for it holds no runtime worker. Cgroup files
//! are read and written on the blocking pool, by a task that owns the lock until its IO is
//! done, also when the caller that started it gave up (`Enforcement::blocking`); calls that
//! only look at the set hold it for a copy, and [`Enforcement::snapshot`] reads the files
//! after copying the set, without the lock.

mod run;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{Mutex, MutexGuard};

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
    state: Arc<Mutex<State>>,
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
    /// How many publishes were recorded, and when each publication last was (see
    /// [`Epoch`]).
    published: u64,
    recorded: BTreeMap<PathBuf, u64>,
}

/// A point in the sequence of publishes. The driver takes one before it reads the mount
/// table and hands it to [`Enforcement::retain`], which forgets only publications recorded
/// before it: one published while the table was read is not in it, and must not be taken
/// for a mount gone behind iolane's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(u64);

impl std::fmt::Debug for Enforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Enforcement");
        d.field("root", &self.root);
        if let Ok(state) = self.state.try_lock() {
            d.field("publications", &state.reconciler.publications().count());
        }
        d.finish_non_exhaustive()
    }
}

impl Enforcement {
    /// `root` is the cgroup v2 mount (`/sys/fs/cgroup`; a tempdir in tests).
    pub fn new(root: PathBuf, fs: Arc<dyn CgroupFs>) -> Self {
        Enforcement {
            root,
            fs,
            state: Arc::new(Mutex::new(State::default())),
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
        self.state
            .try_lock()
            .expect("nothing else holds the state of an enforcer being built")
            .priority = Some(priority);
        Enforcement {
            priority_metrics: metrics,
            ..self
        }
    }

    /// The priority law's period, when it is enabled.
    pub async fn priority_period(&self) -> Option<std::time::Duration> {
        let state = self.state.lock().await;
        state.priority.as_ref().map(NodePriority::period)
    }

    /// One pass of the priority controllers; `None` when they are not enabled. Blocking:
    /// runs on the blocking pool ([`Enforcement::run_priority`]), never in async code.
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
    pub async fn priority_devices(&self) -> Vec<DeviceState> {
        self.state.lock().await.devices.clone()
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

    /// The state, from the blocking pool (the priority pass); async code awaits the lock
    /// or goes through [`Enforcement::blocking`].
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.blocking_lock()
    }

    /// Runs `f` with the state on the blocking pool once the lock is free: every cgroup
    /// file the driver's calls and the loop touch is read and written through here. The
    /// task owns the lock until `f` returns, also when the caller stops waiting for it, so
    /// no other call sees its IO half done.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State, &Io) -> T + Send + 'static,
    ) -> T {
        let mut state = Arc::clone(&self.state).lock_owned().await;
        let io = Io {
            root: self.root.clone(),
            fs: Arc::clone(&self.fs),
            metrics: self.metrics.clone(),
        };
        match tokio::task::spawn_blocking(move || f(&mut state, &io)).await {
            Ok(value) => value,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("enforcement task did not finish: {e}"),
        }
    }

    /// Every publication known now, in target order.
    pub async fn publications(&self) -> Vec<Publication> {
        let state = self.state.lock().await;
        state
            .reconciler
            .publications()
            .map(|p| p.publication.clone())
            .collect()
    }

    /// The mounts (mount point, anything) whose mount points are neither known
    /// publications nor known not to be iolane's, in their order: one look at the set for
    /// the whole mount table.
    pub async fn unknown<T>(&self, mounts: Vec<(PathBuf, T)>) -> Vec<(PathBuf, T)> {
        let state = self.state.lock().await;
        mounts
            .into_iter()
            .filter(|(t, _)| !state.reconciler.contains(t) && !state.foreign.contains(t))
            .collect()
    }

    /// Whether `target` is a known publication, or known not to be one of iolane's.
    pub async fn knows(&self, target: &Path) -> bool {
        let state = self.state.lock().await;
        state.reconciler.contains(target) || state.foreign.contains(target)
    }

    /// Remembers that the mount at `target` is not an iolane volume.
    pub async fn mark_foreign(&self, target: &Path) {
        self.state.lock().await.foreign.insert(target.to_owned());
    }

    /// Records a publication (replacing one at the same target) and writes its own line
    /// now if its pod's cgroup is there; the other publications wait for the next pass.
    /// Returns its outcome and the reason when it failed.
    pub async fn publish(&self, p: Publication) -> (Outcome, Option<String>) {
        self.blocking(move |state, io| {
            let target = p.target_path.clone();
            if let Some(priority) = state.priority.as_mut() {
                priority.record(&target, p.limits);
            }
            state.published += 1;
            state.recorded.insert(target.clone(), state.published);
            state.reconciler.upsert(p);
            let done = state
                .reconciler
                .enforce_one(&target, &io.root, io.fs.as_ref());
            if let Some(m) = &io.metrics {
                m.observe_publish(done.0, &state.reconciler);
            }
            done
        })
        .await
    }

    /// Forgets the publication at `target` and lifts its caps. `Ok(None)` when there was
    /// no such publication; `Ok(Some(wrote))` otherwise (see [`Reconciler::release`]).
    /// When the write fails the error is returned and every pass retries the reset.
    pub async fn unpublish(&self, target: &Path) -> Result<Option<bool>, ApplyError> {
        let target = target.to_owned();
        self.blocking(move |state, io| {
            if !state.reconciler.contains(&target) {
                return Ok(None);
            }
            state.reconciler.release(&target, io.fs.as_ref()).map(Some)
        })
        .await
    }

    /// Lifts the caps of `dev` in pod `pod`'s cgroup unless a known publication enforces
    /// that device there. For a NodeUnpublishVolume whose publication this process never
    /// recorded: the process restarted between the publish and the unpublish (before a
    /// pass adopted the mount), or between an earlier attempt's unmount and its lift.
    /// Returns whether a capped line was reset; an error says why it could not be.
    pub async fn lift_unknown(&self, pod: &PodUid, dev: DeviceNumber) -> Result<bool, String> {
        let pod = pod.clone();
        self.blocking(move |state, io| {
            let found = find_pod_cgroup(&io.root, &pod).map_err(|e| e.to_string())?;
            let Some(cgroup) = found else {
                return Ok(false);
            };
            if state.reconciler.enforces(&cgroup, dev) {
                return Ok(false);
            }
            let fs = io.fs.as_ref();
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
        })
        .await
    }

    /// Now, in the sequence of publishes: see [`Epoch`].
    pub async fn epoch(&self) -> Epoch {
        Epoch(self.state.lock().await.published)
    }

    /// Forgets publications recorded before `before` whose targets `keep` rejects (their
    /// mounts are gone: the pod is gone or kubelet cleaned up); the next pass resets their
    /// lines.
    pub async fn retain(
        &self,
        before: Epoch,
        mut keep: impl FnMut(&Path) -> bool,
    ) -> Vec<Publication> {
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        state.foreign.retain(|t| keep(t));
        let recorded = &state.recorded;
        let gone = state
            .reconciler
            .forget_unless(|t| keep(t) || recorded.get(t).is_some_and(|&n| n > before.0));
        let reconciler = &state.reconciler;
        state.recorded.retain(|t, _| reconciler.contains(t));
        gone
    }

    /// One reconciler pass over every known publication.
    pub async fn pass(&self) -> PassReport {
        self.blocking(|state, io| {
            let report = state.reconciler.pass_kept(&io.root, io.fs.as_ref());
            if let Some(m) = &io.metrics {
                m.observe(&report, &state.reconciler);
            }
            report
        })
        .await
    }

    /// Every publication as of the last pass, by volume ID, with the caps in its pod's
    /// `io.max` and its `io.stat` counters read now (on the blocking pool, after the set
    /// was copied: a snapshot never holds the lock across IO).
    pub async fn snapshot(&self) -> BTreeMap<String, Vec<PublicationSnapshot>> {
        let rows: Vec<(String, PublicationSnapshot)> = self
            .state
            .lock()
            .await
            .reconciler
            .publications()
            .map(|p| {
                let snapshot = PublicationSnapshot {
                    target: p.publication.target_path.clone(),
                    pod_uid: p.publication.pod_uid.clone(),
                    device: p.publication.device,
                    cgroup: p.cgroup.map(Path::to_owned),
                    io_max: None,
                    outcome: p.outcome,
                    stats: None,
                };
                (p.publication.volume_id.clone(), snapshot)
            })
            .collect();
        let fs = Arc::clone(&self.fs);
        let read = move || {
            let fs = fs.as_ref();
            let mut out: BTreeMap<String, Vec<PublicationSnapshot>> = BTreeMap::new();
            for (volume_id, mut s) in rows {
                if let Some(c) = &s.cgroup {
                    s.io_max = apply::current(fs, c, s.device).ok();
                    s.stats = apply::stats(fs, c, s.device)
                        .ok()
                        .flatten()
                        .map(Counters::from);
                }
                out.entry(volume_id).or_default().push(s);
            }
            out
        };
        match tokio::task::spawn_blocking(read).await {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("snapshot task did not finish: {e}"),
        }
    }
}

/// What a task on the blocking pool reads and writes cgroup files with.
struct Io {
    root: PathBuf,
    fs: Arc<dyn CgroupFs>,
    /// Every pass's report and state go here when metrics are served.
    metrics: Option<Arc<EnforcementMetrics>>,
}

#[cfg(test)]
mod tests;

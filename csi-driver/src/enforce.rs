//! Keeping each publication's tier in its pod's cgroup v2 `io.max`.
//!
//! A *publication* is one NodePublishVolume target of a volume for one pod: the volume's
//! own block device number (the thin LV's device-mapper node, or the loop device) and the
//! caps of its tier. NodePublishVolume records it and writes the line at once when the
//! pod's cgroup exists; NodeUnpublishVolume forgets it and lifts the caps (`max`). The
//! reconciler (`Driver::reconcile`) rebuilds the set from the mount table after a restart
//! (kubelet's target paths carry the pod UID, see [`pod_uid_from_target`]) and repairs
//! drift on every pass.
//!
//! Enforcement never fails a publish: a pod's cgroup may appear after its volumes are
//! published, and a node without the io controller still runs pods. What did not apply is
//! logged, counted and retried by the next pass. The passes themselves are
//! `iops_controller::reconcile`'s; this module owns the desired set.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use iops_controller::metrics::Metrics;
use iops_controller::reconcile::{Outcome, PassReport, Publication, Reconciler};
use iops_controller::{CgroupFs, PodUid};

/// The publications of this node, the reconciler that enforces them, and the cgroup tree.
pub struct Enforcer {
    root: PathBuf,
    fs: Arc<dyn CgroupFs>,
    state: Mutex<State>,
    /// Every pass's report and state go here when metrics are served.
    metrics: Option<Arc<Metrics>>,
}

#[derive(Default)]
struct State {
    /// Every publication iolane knows, by target path: the reconciler's desired set.
    desired: BTreeMap<PathBuf, Publication>,
    reconciler: Reconciler,
    /// Kubelet-shaped mounts found not to be iolane volumes (other drivers'), so the
    /// reconciler does not look them up again on every pass.
    foreign: BTreeSet<PathBuf>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("root", &self.root)
            .field("publications", &self.lock().desired.len())
            .finish_non_exhaustive()
    }
}

impl Enforcer {
    /// `root` is the cgroup v2 mount (`/sys/fs/cgroup`; a tempdir in tests).
    pub fn new(root: PathBuf, fs: Arc<dyn CgroupFs>) -> Self {
        Enforcer {
            root,
            fs,
            state: Mutex::new(State::default()),
            metrics: None,
        }
    }

    /// Feeds every pass to `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cgroup_fs(&self) -> &dyn CgroupFs {
        self.fs.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every publication known now, in target order.
    pub fn publications(&self) -> Vec<Publication> {
        self.lock().desired.values().cloned().collect()
    }

    /// Whether `target` is a known publication, or known not to be one of iolane's.
    pub fn knows(&self, target: &Path) -> bool {
        let state = self.lock();
        state.desired.contains_key(target) || state.foreign.contains(target)
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
        state.desired.insert(target.clone(), p);
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
    pub fn unpublish(&self, target: &Path) -> Result<Option<bool>, iops_controller::ApplyError> {
        let mut state = self.lock();
        if state.desired.remove(target).is_none() {
            return Ok(None);
        }
        state.reconciler.release(target, self.fs.as_ref()).map(Some)
    }

    /// Forgets publications whose targets `keep` rejects, without touching their lines
    /// (their mounts are gone: the pod is gone or kubelet cleaned up).
    pub fn retain(&self, mut keep: impl FnMut(&Path) -> bool) -> Vec<Publication> {
        let mut state = self.lock();
        state.foreign.retain(|t| keep(t));
        let gone: Vec<PathBuf> = state.desired.keys().filter(|t| !keep(t)).cloned().collect();
        gone.iter()
            .filter_map(|t| state.desired.remove(t))
            .collect()
    }

    /// One reconciler pass over every known publication.
    pub fn pass(&self) -> PassReport {
        let mut state = self.lock();
        self.pass_locked(&mut state)
    }

    fn pass_locked(&self, state: &mut State) -> PassReport {
        let desired = state.desired.values().cloned().collect();
        let report = state.reconciler.pass(desired, &self.root, self.fs.as_ref());
        if let Some(m) = &self.metrics {
            m.observe(&report, &state.reconciler);
        }
        report
    }

    /// Runs `f` with the reconciler (for metrics and status), under the lock.
    pub fn with_reconciler<T>(&self, f: impl FnOnce(&Reconciler) -> T) -> T {
        f(&self.lock().reconciler)
    }
}

/// The pod UID in a kubelet target path:
/// `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount` (filesystem volumes) or
/// `<kubelet>/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<uid>` (raw block).
pub fn pod_uid_from_target(target: &Path) -> Option<PodUid> {
    let parts: Vec<&str> = target
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let n = parts.len();
    if n >= 6
        && parts[n - 1] == "mount"
        && parts[n - 3] == "kubernetes.io~csi"
        && parts[n - 4] == "volumes"
        && parts[n - 6] == "pods"
    {
        return PodUid::parse(parts[n - 5]).ok();
    }
    if n >= 4 && parts[n - 3] == "publish" && parts[n - 4] == "volumeDevices" {
        return PodUid::parse(parts[n - 1]).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use iops_controller::reconcile::Pending;
    use iops_controller::{DeviceNumber, FakeCgroupFs, Limit, Limits};

    const UID: &str = "0b6e7f9a-3c1d-4e2f-8a9b-1c2d3e4f5a6b";
    const DEV: DeviceNumber = DeviceNumber {
        major: 254,
        minor: 3,
    };

    fn publication(target: &str, limits: Limits) -> Publication {
        Publication {
            volume_id: "iol-1".to_owned(),
            target_path: PathBuf::from(target),
            pod_uid: PodUid::parse(UID).unwrap(),
            device: DEV,
            tier: "batch".to_owned(),
            limits,
        }
    }

    fn capped() -> Limits {
        Limits {
            read_iops: Limit::per_sec(200),
            ..Limits::UNLIMITED
        }
    }

    fn setup() -> (Arc<FakeCgroupFs>, Enforcer, PathBuf, tempfile::TempDir) {
        let fs = Arc::new(FakeCgroupFs::new());
        let root = tempfile::tempdir().unwrap();
        let cgroup = root
            .path()
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!(
                "kubepods-burstable-pod{}.slice",
                UID.replace('-', "_")
            ));
        std::fs::create_dir_all(&cgroup).unwrap();
        let e = Enforcer::new(root.path().to_owned(), fs.clone());
        (fs, e, cgroup, root)
    }

    fn current(fs: &FakeCgroupFs, cgroup: &Path) -> Limits {
        iops_controller::apply::current(fs, cgroup, DEV).unwrap()
    }

    #[test]
    fn publish_applies_a_pass_repairs_unpublish_resets() {
        let (fs, e, cgroup, _root) = setup();
        fs.add_cgroup(&cgroup);
        assert_eq!(e.publish(publication("/t/a", capped())).0, Outcome::Applied);
        assert_eq!(current(&fs, &cgroup), capped().canonical());
        assert_eq!(e.pass().in_sync, 1);
        iops_controller::apply::reset(fs.as_ref(), &cgroup, DEV).unwrap();
        assert_eq!(e.pass().repaired, 1);
        assert_eq!(current(&fs, &cgroup), capped().canonical());
        assert_eq!(e.unpublish(Path::new("/t/a")).unwrap(), Some(true));
        assert_eq!(current(&fs, &cgroup), Limits::UNLIMITED);
        assert_eq!(e.unpublish(Path::new("/t/a")).unwrap(), None);
        assert!(e.publications().is_empty());
    }

    #[test]
    fn a_cgroup_that_appears_later_is_applied_by_a_pass() {
        let (fs, e, cgroup, _root) = setup();
        std::fs::remove_dir(&cgroup).unwrap();
        assert_eq!(
            e.publish(publication("/t/a", capped())).0,
            Outcome::Pending(Pending::NoCgroup)
        );
        std::fs::create_dir_all(&cgroup).unwrap();
        fs.add_cgroup(&cgroup);
        assert_eq!(e.pass().applied, 1);
        assert_eq!(current(&fs, &cgroup), capped().canonical());
    }

    #[test]
    fn retain_forgets_without_writing() {
        let (fs, e, cgroup, _root) = setup();
        fs.add_cgroup(&cgroup);
        e.publish(publication("/t/a", capped()));
        let before = fs.writes().len();
        e.mark_foreign(Path::new("/t/c"));
        assert!(e.knows(Path::new("/t/c")));
        let gone = e.retain(|t| t == Path::new("/t/b"));
        assert_eq!(gone.len(), 1);
        assert!(!e.knows(Path::new("/t/c")));
        assert!(!e.knows(Path::new("/t/a")));
        assert_eq!(e.pass().forgotten, 1);
        assert_eq!(fs.writes().len(), before);
    }

    #[test]
    fn kubelet_target_paths_name_the_pod() {
        let fs = format!("/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~csi/pvc-1/mount");
        assert_eq!(
            pod_uid_from_target(Path::new(&fs)).map(|u| u.to_string()),
            Some(UID.to_owned())
        );
        let block =
            format!("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1/{UID}");
        assert_eq!(
            pod_uid_from_target(Path::new(&block)).map(|u| u.to_string()),
            Some(UID.to_owned())
        );
        for other in [
            "/mnt/x",
            "/var/lib/kubelet/pods/not-a-uid/volumes/kubernetes.io~csi/pvc-1/mount",
            "/var/lib/kubelet/pods/x/volumes/kubernetes.io~empty-dir/pvc-1/mount",
            "/mount",
        ] {
            assert_eq!(pod_uid_from_target(Path::new(other)), None, "{other}");
        }
    }
}

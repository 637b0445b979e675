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
//! logged, counted and retried by the next pass.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use iops_controller::{CgroupFs, DeviceNumber, Limits, PodUid};

/// One volume published to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub volume_id: String,
    pub target: PathBuf,
    pub pod: PodUid,
    pub device: DeviceNumber,
    pub tier: String,
    pub limits: Limits,
}

/// What happened to one publication's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The line was already right.
    Unchanged { cgroup: PathBuf },
    /// The line was written (the first time, or after a tier change).
    Applied { cgroup: PathBuf },
    /// The line had been right and was changed behind iolane's back; written again.
    Repaired { cgroup: PathBuf },
    /// Not written now; the reconciler retries (no pod cgroup yet, no io controller).
    Pending(String),
    /// Writing or reading the cgroup failed.
    Failed(String),
}

/// The publications of this node and the cgroup tree they are enforced in.
pub struct Enforcer {
    root: PathBuf,
    fs: Arc<dyn CgroupFs>,
    publications: Mutex<BTreeMap<PathBuf, Entry>>,
    /// Kubelet-shaped mounts found not to be iolane volumes (other drivers'), so the
    /// reconciler does not look them up again on every pass.
    foreign: Mutex<std::collections::BTreeSet<PathBuf>>,
}

/// A publication and what iolane last wrote for it.
#[derive(Debug, Clone)]
struct Entry {
    publication: Publication,
    /// The caps iolane last saw in place (written or found right), if any.
    in_place: Option<Limits>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("root", &self.root)
            .field("publications", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl Enforcer {
    /// `root` is the cgroup v2 mount (`/sys/fs/cgroup`; a tempdir in tests).
    pub fn new(root: PathBuf, fs: Arc<dyn CgroupFs>) -> Self {
        Enforcer {
            root,
            fs,
            publications: Mutex::new(BTreeMap::new()),
            foreign: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cgroup_fs(&self) -> &dyn CgroupFs {
        self.fs.as_ref()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<PathBuf, Entry>> {
        // A panic while holding the lock leaves a plain map behind: still usable.
        self.publications
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every publication known now, in target order.
    pub fn publications(&self) -> Vec<Publication> {
        self.lock()
            .values()
            .map(|e| e.publication.clone())
            .collect()
    }

    /// Whether `target` is a known publication, or known not to be one of iolane's.
    pub fn knows(&self, target: &Path) -> bool {
        self.lock().contains_key(target) || self.foreign().contains(target)
    }

    fn foreign(&self) -> MutexGuard<'_, std::collections::BTreeSet<PathBuf>> {
        self.foreign
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers that the mount at `target` is not an iolane volume.
    pub fn mark_foreign(&self, target: &Path) {
        self.foreign().insert(target.to_owned());
    }

    /// Records a publication (replacing one at the same target) and enforces it now.
    pub fn publish(&self, p: Publication) -> Outcome {
        let target = p.target.clone();
        self.lock().insert(
            target.clone(),
            Entry {
                publication: p,
                in_place: None,
            },
        );
        self.enforce(&target).unwrap_or_else(|| {
            Outcome::Failed("the publication was removed while it was applied".to_owned())
        })
    }

    /// Forgets the publication at `target` and lifts its caps; `None` when there was none.
    pub fn unpublish(&self, target: &Path) -> Option<Outcome> {
        let e = self.lock().remove(target)?;
        Some(self.release(&e.publication))
    }

    /// Forgets publications whose targets `keep` rejects, without touching their lines
    /// (their mounts are gone: the pod is gone or kubelet cleaned up).
    pub fn retain(&self, mut keep: impl FnMut(&Path) -> bool) -> Vec<Publication> {
        self.foreign().retain(|t| keep(t));
        let mut map = self.lock();
        let gone: Vec<PathBuf> = map
            .values()
            .filter(|e| !keep(&e.publication.target))
            .map(|e| e.publication.target.clone())
            .collect();
        gone.iter()
            .filter_map(|t| map.remove(t))
            .map(|e| e.publication)
            .collect()
    }

    /// Makes the line of the publication at `target` match its caps; `None` when no
    /// publication is recorded there. The caller serialises calls on one volume.
    pub fn enforce(&self, target: &Path) -> Option<Outcome> {
        let entry = self.lock().get(target).cloned()?;
        let p = &entry.publication;
        let want = p.limits.canonical();
        let outcome = self.write(p, want, entry.in_place);
        if matches!(
            outcome,
            Outcome::Applied { .. } | Outcome::Repaired { .. } | Outcome::Unchanged { .. }
        ) && let Some(e) = self.lock().get_mut(target)
            && e.publication == *p
        {
            e.in_place = Some(want);
        }
        Some(outcome)
    }

    fn write(&self, p: &Publication, want: Limits, in_place: Option<Limits>) -> Outcome {
        let cgroup = match self.cgroup_of(&p.pod) {
            Ok(c) => c,
            Err(o) => return o,
        };
        match iops_controller::apply::current(self.fs.as_ref(), &cgroup, p.device) {
            Ok(now) if now == want => return Outcome::Unchanged { cgroup },
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                return Outcome::Pending(format!("cgroup {} went away", cgroup.display()));
            }
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        match iops_controller::apply::apply(self.fs.as_ref(), &cgroup, p.device, &want) {
            Ok(()) if in_place == Some(want) => Outcome::Repaired { cgroup },
            Ok(()) => Outcome::Applied { cgroup },
            Err(e) if e.is_not_found() => {
                Outcome::Pending(format!("cgroup {} went away", cgroup.display()))
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Lifts every cap of `p`'s device in its pod's cgroup (if the cgroup still exists).
    pub fn release(&self, p: &Publication) -> Outcome {
        let cgroup = match self.cgroup_of(&p.pod) {
            Ok(c) => c,
            Err(o) => return o,
        };
        // Another publication of the same device in the same pod keeps its caps.
        let shared = self.lock().values().any(|o| {
            let o = &o.publication;
            o.pod == p.pod && o.device == p.device && o.target != p.target
        });
        if shared {
            return Outcome::Unchanged { cgroup };
        }
        match iops_controller::apply::reset(self.fs.as_ref(), &cgroup, p.device) {
            Ok(()) => Outcome::Applied { cgroup },
            Err(e) if e.is_not_found() => Outcome::Pending("the pod's cgroup is gone".to_owned()),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// The pod's cgroup, or why there is none to write now.
    pub fn cgroup_of(&self, pod: &PodUid) -> Result<PathBuf, Outcome> {
        let cgroup = match iops_controller::find_pod_cgroup(&self.root, pod) {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(Outcome::Pending(format!(
                    "no cgroup for pod {pod} under {} yet",
                    self.root.display()
                )));
            }
            Err(e) => return Err(Outcome::Failed(e.to_string())),
        };
        match self.fs.io_enabled(&cgroup) {
            Ok(true) => Ok(cgroup),
            Ok(false) => Err(Outcome::Pending(format!(
                "the io controller is not enabled for {} (cgroup.controllers has no io)",
                cgroup.display()
            ))),
            Err(e) if e.is_not_found() => Err(Outcome::Pending(format!(
                "cgroup {} went away",
                cgroup.display()
            ))),
            Err(e) => Err(Outcome::Failed(e.to_string())),
        }
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
    use iops_controller::{FakeCgroupFs, Limit};

    const UID: &str = "0b6e7f9a-3c1d-4e2f-8a9b-1c2d3e4f5a6b";

    fn publication(target: &str, limits: Limits) -> Publication {
        Publication {
            volume_id: "iol-1".to_owned(),
            target: PathBuf::from(target),
            pod: PodUid::parse(UID).unwrap(),
            device: DeviceNumber {
                major: 254,
                minor: 3,
            },
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

    fn setup() -> (Arc<FakeCgroupFs>, Enforcer, PathBuf) {
        let fs = Arc::new(FakeCgroupFs::new());
        let root = tempfile::tempdir().unwrap().keep();
        let cgroup = root
            .join("kubepods.slice/kubepods-burstable.slice")
            .join(format!(
                "kubepods-burstable-pod{}.slice",
                UID.replace('-', "_")
            ));
        std::fs::create_dir_all(&cgroup).unwrap();
        let e = Enforcer::new(root, fs.clone());
        (fs, e, cgroup)
    }

    #[test]
    fn publish_applies_unpublish_resets() {
        let (fs, e, cgroup) = setup();
        fs.add_cgroup(&cgroup);
        let p = publication("/t/a", capped());
        assert_eq!(
            e.publish(p.clone()),
            Outcome::Applied {
                cgroup: cgroup.clone()
            }
        );
        assert_eq!(
            iops_controller::apply::current(fs.as_ref(), &cgroup, p.device).unwrap(),
            capped().canonical()
        );
        // Enforcing again changes nothing.
        assert!(matches!(
            e.enforce(Path::new("/t/a")),
            Some(Outcome::Unchanged { .. })
        ));
        assert_eq!(fs.writes().len(), 1);
        // A line changed behind iolane's back is a repair.
        iops_controller::apply::reset(fs.as_ref(), &cgroup, p.device).unwrap();
        assert_eq!(
            e.enforce(Path::new("/t/a")),
            Some(Outcome::Repaired {
                cgroup: cgroup.clone()
            })
        );
        assert_eq!(
            e.unpublish(Path::new("/t/a")),
            Some(Outcome::Applied {
                cgroup: cgroup.clone()
            })
        );
        assert_eq!(
            iops_controller::apply::current(fs.as_ref(), &cgroup, p.device).unwrap(),
            Limits::UNLIMITED
        );
        assert_eq!(e.unpublish(Path::new("/t/a")), None);
    }

    #[test]
    fn a_missing_cgroup_is_pending_and_applied_later() {
        let (fs, e, cgroup) = setup();
        // The directory exists on disk but the fake has no cgroup files yet: the search
        // finds it, the io controller check reports it missing.
        let p = publication("/t/a", capped());
        assert!(matches!(e.publish(p.clone()), Outcome::Pending(_)));
        assert!(e.knows(Path::new("/t/a")));
        fs.add_cgroup(&cgroup);
        assert!(matches!(
            e.enforce(&p.target),
            Some(Outcome::Applied { .. })
        ));
        assert_eq!(e.enforce(Path::new("/t/other")), None);
    }

    #[test]
    fn no_io_controller_is_pending_with_the_reason() {
        let (fs, e, cgroup) = setup();
        fs.add_cgroup_without_io(&cgroup);
        match e.publish(publication("/t/a", capped())) {
            Outcome::Pending(why) => assert!(why.contains("io controller"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(fs.writes().is_empty());
    }

    #[test]
    fn a_shared_device_keeps_its_caps_until_the_last_publication_goes() {
        let (fs, e, cgroup) = setup();
        fs.add_cgroup(&cgroup);
        e.publish(publication("/t/a", capped()));
        e.publish(publication("/t/b", capped()));
        assert!(matches!(
            e.unpublish(Path::new("/t/a")),
            Some(Outcome::Unchanged { .. })
        ));
        let dev = DeviceNumber {
            major: 254,
            minor: 3,
        };
        assert_eq!(
            iops_controller::apply::current(fs.as_ref(), &cgroup, dev).unwrap(),
            capped().canonical()
        );
        assert!(matches!(
            e.unpublish(Path::new("/t/b")),
            Some(Outcome::Applied { .. })
        ));
        assert_eq!(
            iops_controller::apply::current(fs.as_ref(), &cgroup, dev).unwrap(),
            Limits::UNLIMITED
        );
    }

    #[test]
    fn retain_forgets_without_writing() {
        let (fs, e, cgroup) = setup();
        fs.add_cgroup(&cgroup);
        e.publish(publication("/t/a", capped()));
        e.publish(publication("/t/b", capped()));
        let before = fs.writes().len();
        e.mark_foreign(Path::new("/t/c"));
        assert!(e.knows(Path::new("/t/c")));
        let gone = e.retain(|t| t == Path::new("/t/b"));
        assert!(!e.knows(Path::new("/t/c")));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].target, Path::new("/t/a"));
        assert_eq!(fs.writes().len(), before);
        assert_eq!(e.publications().len(), 1);
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

//! The node side's idempotency matrix, without root: NodeStage and NodePublish repeated,
//! conflicting and half-done, and their undoing of what was never done, on a
//! [`FakeMounter`] mount table and a fake backend. Paths are real tempdir paths, so the
//! directories and files the calls create are checked too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use iops_controller::{DeviceNumber, FakeCgroupFs};

use super::{Driver, Settings};
use crate::backend::{Backend, Created};
use crate::error::{Error, Result};
use crate::os::command::RecordingRunner;
use crate::os::mounter::FakeMounter;
use crate::os::{FsType, Output, Roots};
use crate::status::PoolStatus;
use crate::tiering::Tiering;
use crate::volume::{AccessMode, AccessType, Capability, Capacity, CreateSpec, Parameters, Volume};
use iops_controller::Enforcement;

const A: &str = "iol-a";
const B: &str = "iol-b";

/// A backend of two volumes whose devices are plain files with fake device numbers.
#[derive(Debug)]
struct FakeBackend {
    dir: PathBuf,
    attached: Mutex<BTreeSet<String>>,
    read_only: Mutex<BTreeSet<PathBuf>>,
    /// Volumes whose device is released right after `attach` returns it (a loop device
    /// whose deferred detach finishes then).
    released: Mutex<BTreeSet<String>>,
}

impl FakeBackend {
    fn dev(&self, id: &str) -> PathBuf {
        self.dir.join(format!("dev-{id}"))
    }
    fn ro_dev(&self, id: &str) -> PathBuf {
        self.dir.join(format!("ro-{id}"))
    }
    fn unsupported<T>() -> Result<T> {
        Err(Error::Unsupported(
            "not part of the node-side fake".to_owned(),
        ))
    }
}

#[async_trait::async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn granularity(&self) -> u64 {
        1 << 20
    }
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    async fn get(&self, id: &str) -> Result<Option<Volume>> {
        Ok([A, B].contains(&id).then(|| Volume {
            id: id.to_owned(),
            name: id.to_owned(),
            capacity_bytes: 64 << 20,
            fs_type: None,
            parameters: Parameters::default(),
            tier: None,
            source: None,
        }))
    }
    async fn list(&self) -> Result<Vec<Volume>> {
        Self::unsupported()
    }
    async fn create(&self, _: &CreateSpec) -> Result<Created> {
        Self::unsupported()
    }
    async fn delete(&self, _: &str) -> Result<bool> {
        Self::unsupported()
    }
    async fn capacity(&self, _: &Parameters) -> Result<Capacity> {
        Self::unsupported()
    }
    async fn expand(&self, _: &str, _: u64) -> Result<u64> {
        Self::unsupported()
    }
    async fn set_tier(&self, _: &str, _: &iops_controller::ResolvedTier) -> Result<Volume> {
        Self::unsupported()
    }
    async fn pools(&self) -> Result<Vec<PoolStatus>> {
        Self::unsupported()
    }
    async fn condition(&self, _: &str) -> Result<Option<String>> {
        Ok(None)
    }
    async fn attach(&self, id: &str) -> Result<PathBuf> {
        if !self.released.lock().unwrap().contains(id) {
            self.attached.lock().unwrap().insert(id.to_owned());
        }
        Ok(self.dev(id))
    }
    async fn attached(&self, id: &str) -> Result<Option<PathBuf>> {
        Ok(self
            .attached
            .lock()
            .unwrap()
            .contains(id)
            .then(|| self.dev(id)))
    }
    async fn devices(&self, id: &str) -> Result<Vec<PathBuf>> {
        let mut out: Vec<PathBuf> = self.attached(id).await?.into_iter().collect();
        let ro = self.ro_dev(id);
        if self.read_only.lock().unwrap().contains(&ro) {
            out.push(ro);
        }
        Ok(out)
    }
    async fn attach_read_only(&self, id: &str) -> Result<PathBuf> {
        let ro = self.ro_dev(id);
        self.read_only.lock().unwrap().insert(ro.clone());
        Ok(ro)
    }
    async fn release_read_only(&self, _: &str, device: &Path) -> Result<()> {
        self.read_only.lock().unwrap().remove(device);
        Ok(())
    }
    async fn detach(&self, id: &str) -> Result<()> {
        self.attached.lock().unwrap().remove(id);
        Ok(())
    }
}

/// A driver on the fakes, with the paths a kubelet would use.
struct Node {
    driver: Driver,
    backend: Arc<FakeBackend>,
    mounter: Arc<FakeMounter>,
    runner: Arc<RecordingRunner>,
    cgroups: Arc<FakeCgroupFs>,
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn number(minor: u32) -> DeviceNumber {
    DeviceNumber { major: 7, minor }
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let mounter = Arc::new(FakeMounter::default());
        for (i, id) in [A, B].into_iter().enumerate() {
            let minor = u32::try_from(i).unwrap();
            for (name, n) in [
                (format!("dev-{id}"), number(minor)),
                (format!("ro-{id}"), number(minor + 10)),
            ] {
                std::fs::write(root.join(&name), b"").unwrap();
                mounter.device(&root.join(name), n);
            }
        }
        let runner = Arc::new(RecordingRunner::default());
        let os = crate::os::Os::new(runner.clone(), Roots::default());
        let backend = Arc::new(FakeBackend {
            dir: root.clone(),
            attached: Mutex::default(),
            read_only: Mutex::default(),
            released: Mutex::default(),
        });
        // A batch tier with explicit caps (the built-in has none), so publish writes a line.
        let tiers = crate::config::NodeConfig::parse(
            "[tiers.batch]\npriority = \"batch\"\nread_iops = 2000\nwrite_iops = 2000\n\
             read_bps = \"max\"\nwrite_bps = \"max\"\n",
        )
        .and_then(|c| c.tier_set())
        .unwrap();
        let tiering = Tiering::new(tiers, None);
        let cgroups = Arc::new(FakeCgroupFs::new());
        let enforcement = Arc::new(Enforcement::new(root.join("cgroup"), cgroups.clone()));
        let settings = Settings {
            node_id: "n1".to_owned(),
            path_root: None,
            max_volumes_per_node: 0,
        };
        let driver = Driver::new(backend.clone(), os, settings, tiering, enforcement)
            .with_mounter(mounter.clone());
        Node {
            driver,
            backend,
            mounter,
            runner,
            cgroups,
            _dir: dir,
            root,
        }
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    /// The next `blkid` finds nothing on the device (so staging makes a filesystem).
    fn blank(&self) {
        self.runner.answer(
            "blkid",
            Output {
                status: Some(2),
                ..Output::default()
            },
        );
    }

    async fn stage(&self, id: &str, staging: &str, cap: &Capability) -> Result<()> {
        self.driver.node_stage(id, &self.path(staging), cap).await
    }

    async fn publish(
        &self,
        id: &str,
        staging: &str,
        target: &str,
        cap: &Capability,
        read_only: bool,
    ) -> Result<()> {
        self.driver
            .node_publish(
                id,
                &self.path(staging),
                &self.path(target),
                cap,
                read_only,
                None,
            )
            .await
    }

    /// The mounts so far, relative to the tempdir.
    fn calls(&self) -> Vec<String> {
        let prefix = format!("{}/", self.root.display());
        self.mounter
            .calls()
            .iter()
            .map(|c| c.replace(&prefix, ""))
            .collect()
    }
}

fn mount(fs: Option<FsType>, mode: AccessMode) -> Capability {
    Capability {
        access: AccessType::Mount {
            fs,
            flags: Vec::new(),
        },
        mode,
    }
}

fn fs_rw() -> Capability {
    mount(None, AccessMode::SingleNodeWriter)
}

fn block() -> Capability {
    Capability {
        access: AccessType::Block,
        mode: AccessMode::SingleNodeWriter,
    }
}

#[track_caller]
fn already_exists(r: Result<()>, what: &str) {
    assert!(
        matches!(r, Err(Error::AlreadyExists(_))),
        "{what}: want ALREADY_EXISTS, got {r:?}"
    );
}

#[track_caller]
fn failed_precondition(r: Result<()>, what: &str) {
    assert!(
        matches!(r, Err(Error::FailedPrecondition(_))),
        "{what}: want FAILED_PRECONDITION, got {r:?}"
    );
}

#[tokio::test]
async fn stage_repeated_is_ok_and_mounts_once() {
    let n = Node::new();
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.stage(B, "raw", &block()).await.unwrap();
    n.stage(B, "raw", &block()).await.unwrap();
    assert_eq!(n.calls(), ["mount fs", "bind raw/iol-b"]);
    let mkfs = n.runner.calls();
    assert_eq!(
        mkfs.iter().filter(|c| c.starts_with("mkfs")).count(),
        1,
        "{mkfs:?}"
    );
    assert!(n.root.join("raw/iol-b").is_file());
}

/// A device released between `attach` and the stage's own open is neither probed,
/// formatted nor mounted: ABORTED, and the retry attaches again.
#[tokio::test]
async fn stage_of_a_device_released_under_it_is_aborted_and_changes_nothing() {
    let n = Node::new();
    n.blank();
    n.backend.released.lock().unwrap().insert(A.to_owned());
    let r = n.stage(A, "fs", &fs_rw()).await;
    assert!(matches!(r, Err(Error::Raced(_))), "{r:?}");
    assert!(n.calls().is_empty(), "{:?}", n.calls());
    assert!(
        n.runner.calls().iter().all(|c| !c.starts_with("mkfs")),
        "{:?}",
        n.runner.calls()
    );
    n.backend.released.lock().unwrap().clear();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    assert_eq!(n.calls(), ["mount fs"]);
}

#[tokio::test]
async fn stage_conflicts_are_already_exists() {
    let n = Node::new();
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.stage(B, "raw", &block()).await.unwrap();
    let cases = [
        (
            A,
            "fs",
            block(),
            "a filesystem staging asked again as block",
        ),
        (
            B,
            "raw",
            fs_rw(),
            "a block staging asked again as a filesystem",
        ),
        (
            B,
            "fs",
            fs_rw(),
            "another volume's filesystem at the staging path",
        ),
        (
            A,
            "fs",
            mount(None, AccessMode::SingleNodeReaderOnly),
            "staged read-write, asked read-only",
        ),
        (
            A,
            "fs",
            mount(Some(FsType::Xfs), AccessMode::SingleNodeWriter),
            "staged ext4, asked xfs",
        ),
    ];
    for (id, staging, cap, what) in cases {
        already_exists(n.stage(id, staging, &cap).await, what);
    }
    // A device this driver does not know mounted at the staging path.
    std::fs::create_dir(n.root.join("taken")).unwrap();
    n.mounter
        .add(number(99), &n.root.join("taken"), "ext4", "rw");
    already_exists(n.stage(A, "taken", &fs_rw()).await, "a foreign mount");
    assert_eq!(
        n.calls(),
        ["mount fs", "bind raw/iol-b"],
        "nothing more mounted"
    );
}

#[tokio::test]
async fn stage_finishes_what_was_half_done() {
    let n = Node::new();
    // The staging directory and the block file exist, nothing is mounted.
    std::fs::create_dir(n.root.join("fs")).unwrap();
    std::fs::create_dir(n.root.join("raw")).unwrap();
    std::fs::write(n.root.join("raw").join(B), b"").unwrap();
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.stage(B, "raw", &block()).await.unwrap();
    assert_eq!(n.calls(), ["mount fs", "bind raw/iol-b"]);
}

#[tokio::test]
async fn unstage_of_what_was_never_staged_is_ok() {
    let n = Node::new();
    n.driver.node_unstage(A, &n.path("never")).await.unwrap();
    std::fs::create_dir(n.root.join("empty")).unwrap();
    n.driver.node_unstage(A, &n.path("empty")).await.unwrap();
    assert!(n.calls().is_empty());
    // Staged, unstaged, unstaged again.
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.driver.node_unstage(A, &n.path("fs")).await.unwrap();
    n.driver.node_unstage(A, &n.path("fs")).await.unwrap();
    n.stage(B, "raw", &block()).await.unwrap();
    n.driver.node_unstage(B, &n.path("raw")).await.unwrap();
    assert!(
        !n.root.join("raw").join(B).exists(),
        "the block file is removed"
    );
    assert_eq!(
        n.calls(),
        [
            "mount fs",
            "unmount fs",
            "bind raw/iol-b",
            "unmount raw/iol-b"
        ]
    );
}

#[tokio::test]
async fn unstage_refuses_a_path_another_device_holds_or_a_volume_still_published() {
    let n = Node::new();
    std::fs::create_dir(n.root.join("taken")).unwrap();
    n.mounter
        .add(number(99), &n.root.join("taken"), "ext4", "rw");
    failed_precondition(
        n.driver.node_unstage(A, &n.path("taken")).await,
        "a foreign mount at the staging path",
    );
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.publish(A, "fs", "pod", &fs_rw(), false).await.unwrap();
    failed_precondition(
        n.driver.node_unstage(A, &n.path("fs")).await,
        "still published",
    );
}

#[tokio::test]
async fn publish_repeated_is_ok_and_binds_once() {
    let n = Node::new();
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.stage(B, "raw", &block()).await.unwrap();
    for _ in 0..2 {
        n.publish(A, "fs", "pod-a", &fs_rw(), false).await.unwrap();
        n.publish(B, "raw", "pod-b", &block(), false).await.unwrap();
    }
    assert_eq!(
        n.calls(),
        ["mount fs", "bind raw/iol-b", "bind pod-a", "bind pod-b"]
    );
    assert!(n.root.join("pod-a").is_dir());
    assert!(n.root.join("pod-b").is_file());
}

#[tokio::test]
async fn publish_conflicts() {
    let n = Node::new();
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.stage(B, "raw", &block()).await.unwrap();
    n.publish(A, "fs", "pod-a", &fs_rw(), false).await.unwrap();
    n.publish(B, "raw", "pod-b", &block(), false).await.unwrap();
    already_exists(
        n.publish(B, "raw", "pod-a", &block(), false).await,
        "another volume at the target",
    );
    already_exists(
        n.publish(A, "fs", "pod-a", &fs_rw(), true).await,
        "published read-write, asked read-only",
    );
    failed_precondition(
        n.publish(A, "raw", "pod-c", &fs_rw(), false).await,
        "staged elsewhere",
    );
    failed_precondition(
        n.publish(B, "raw", "pod-c", &fs_rw(), false).await,
        "staged as block, published as a filesystem",
    );
    let n2 = Node::new();
    failed_precondition(
        n2.publish(A, "fs", "pod-a", &fs_rw(), false).await,
        "never staged",
    );
    assert!(!n2.root.join("pod-a").exists(), "nothing left behind");
}

#[tokio::test]
async fn publish_finishes_what_was_half_done() {
    let n = Node::new();
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    // The target directory exists, nothing is mounted there.
    std::fs::create_dir(n.root.join("pod-a")).unwrap();
    n.publish(A, "fs", "pod-a", &fs_rw(), false).await.unwrap();
    assert_eq!(n.calls(), ["mount fs", "bind pod-a"]);
}

#[tokio::test]
async fn read_only_raw_publication_gets_a_device_of_its_own() {
    let n = Node::new();
    n.stage(B, "raw", &block()).await.unwrap();
    n.publish(B, "raw", "pod-b", &block(), true).await.unwrap();
    n.publish(B, "raw", "pod-b", &block(), true).await.unwrap();
    let m = n.mounter.mount_at_path(&n.root.join("pod-b"));
    assert_eq!((m.major, m.minor, m.read_only()), (7, 11, true));
    n.driver.node_unpublish(B, &n.path("pod-b")).await.unwrap();
    assert!(!n.root.join("pod-b").exists());
    assert_eq!(n.calls(), ["bind raw/iol-b", "bind pod-b", "unmount pod-b"]);
}

#[tokio::test]
async fn unpublish_of_what_was_never_published_is_ok() {
    let n = Node::new();
    n.driver.node_unpublish(A, &n.path("never")).await.unwrap();
    std::fs::create_dir(n.root.join("empty")).unwrap();
    n.driver.node_unpublish(A, &n.path("empty")).await.unwrap();
    assert!(
        !n.root.join("empty").exists(),
        "the empty target is removed"
    );
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    n.publish(A, "fs", "pod-a", &fs_rw(), false).await.unwrap();
    for _ in 0..2 {
        n.driver.node_unpublish(A, &n.path("pod-a")).await.unwrap();
    }
    assert_eq!(n.calls(), ["mount fs", "bind pod-a", "unmount pod-a"]);
}

#[tokio::test]
async fn unpublish_lifts_the_caps_only_once_the_unmount_succeeded() {
    const UID: &str = "0b6e7f9a-3c1d-4e2f-8a9b-1c2d3e4f5a6b";
    let n = Node::new();
    let cgroup = n
        .root
        .join("cgroup/kubepods.slice/kubepods-burstable.slice")
        .join(format!(
            "kubepods-burstable-pod{}.slice",
            UID.replace('-', "_")
        ));
    std::fs::create_dir_all(&cgroup).unwrap();
    n.cgroups.add_cgroup(&cgroup);
    n.blank();
    n.stage(A, "fs", &fs_rw()).await.unwrap();
    let pod = iops_controller::PodUid::parse(UID).unwrap();
    n.driver
        .node_publish(
            A,
            &n.path("fs"),
            &n.path("pod-a"),
            &fs_rw(),
            false,
            Some(pod),
        )
        .await
        .unwrap();
    let caps = || iops_controller::apply::current(n.cgroups.as_ref(), &cgroup, number(0)).unwrap();
    let capped = caps();
    assert!(!capped.is_unlimited(), "the default tier caps the pod");

    n.mounter.refuse_unmounts(true);
    assert!(n.driver.node_unpublish(A, &n.path("pod-a")).await.is_err());
    assert_eq!(caps(), capped, "still mounted, so still capped");

    n.mounter.refuse_unmounts(false);
    n.driver.node_unpublish(A, &n.path("pod-a")).await.unwrap();
    assert!(caps().is_unlimited(), "unmounted, so the caps are lifted");
}

//! The snapshot calls and CreateVolume from a content source, on a fake backend: what is
//! refused (and with which field), idempotency by name, ListSnapshots' filters and pages,
//! and a backend without snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use iops_controller::{FakeCgroupFs, TierSet};

use super::{CreateRequest, Driver, Settings, SnapshotFilter};
use crate::backend::{Backend, Created, CreatedSnapshot};
use crate::error::{Error, Result};
use crate::os::command::RecordingRunner;
use crate::os::{FsType, Roots};
use crate::status::PoolStatus;
use crate::tiering::Tiering;
use crate::volume::{
    AccessMode, AccessType, Capability, CapacityRange, ContentSource, CreateSpec, Parameters,
    Snapshot, SnapshotSpec, Volume, snapshot_id_for, volume_id_for,
};
use iops_controller::Enforcement;

/// Volumes and snapshots in maps; `snapshots: false` makes it a backend without them.
#[derive(Debug, Default)]
struct Fake {
    snapshots: bool,
    volumes: Mutex<BTreeMap<String, Volume>>,
    snaps: Mutex<BTreeMap<String, Snapshot>>,
}

fn unsupported<T>() -> Result<T> {
    Err(Error::Unsupported(
        "not part of the snapshot fake".to_owned(),
    ))
}

#[async_trait::async_trait]
impl Backend for Fake {
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
        Ok(self.volumes.lock().unwrap().get(id).cloned())
    }
    async fn list(&self) -> Result<Vec<Volume>> {
        Ok(self.volumes.lock().unwrap().values().cloned().collect())
    }
    async fn create(&self, spec: &CreateSpec) -> Result<Created> {
        let mut v = self.volumes.lock().unwrap();
        if let Some(e) = v.get(&spec.id) {
            return Ok(Created::Existing(e.clone()));
        }
        let vol = Volume {
            id: spec.id.clone(),
            name: spec.name.clone(),
            capacity_bytes: spec.size,
            fs_type: spec.fs_type,
            parameters: spec.parameters.clone(),
            tier: spec.tier.clone(),
            source: spec.source.clone(),
        };
        v.insert(spec.id.clone(), vol.clone());
        Ok(Created::New(vol))
    }
    async fn delete(&self, id: &str) -> Result<bool> {
        Ok(self.volumes.lock().unwrap().remove(id).is_some())
    }
    async fn capacity(&self, _: &Parameters) -> Result<crate::volume::Capacity> {
        unsupported()
    }
    async fn expand(&self, _: &str, _: u64) -> Result<u64> {
        unsupported()
    }
    async fn set_tier(&self, _: &str, _: &iops_controller::ResolvedTier) -> Result<Volume> {
        unsupported()
    }
    async fn pools(&self) -> Result<Vec<PoolStatus>> {
        unsupported()
    }
    async fn condition(&self, _: &str) -> Result<Option<String>> {
        Ok(None)
    }
    async fn attach(&self, _: &str) -> Result<PathBuf> {
        unsupported()
    }
    async fn attached(&self, _: &str) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    async fn devices(&self, _: &str) -> Result<Vec<PathBuf>> {
        Ok(Vec::new())
    }
    async fn attach_read_only(&self, _: &str) -> Result<PathBuf> {
        unsupported()
    }
    async fn release_read_only(&self, _: &str, _: &Path) -> Result<()> {
        Ok(())
    }
    async fn detach(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn snapshots(&self) -> bool {
        self.snapshots
    }
    async fn get_snapshot(&self, id: &str) -> Result<Option<Snapshot>> {
        Ok(self.snaps.lock().unwrap().get(id).cloned())
    }
    async fn list_snapshots(&self) -> Result<Vec<Snapshot>> {
        Ok(self.snaps.lock().unwrap().values().cloned().collect())
    }
    async fn create_snapshot(&self, spec: &SnapshotSpec) -> Result<CreatedSnapshot> {
        if let Some(s) = self.snaps.lock().unwrap().get(&spec.id) {
            return Ok(CreatedSnapshot::Existing(s.clone()));
        }
        let src = self
            .get(&spec.source_volume_id)
            .await?
            .ok_or_else(|| Error::VolumeNotFound(spec.source_volume_id.clone()))?;
        let s = Snapshot {
            id: spec.id.clone(),
            name: spec.name.clone(),
            source_volume_id: spec.source_volume_id.clone(),
            size_bytes: src.capacity_bytes,
            created_ns: spec.created_ns,
            fs_type: src.fs_type,
        };
        self.snaps
            .lock()
            .unwrap()
            .insert(spec.id.clone(), s.clone());
        Ok(CreatedSnapshot::New(s))
    }
    async fn delete_snapshot(&self, id: &str) -> Result<bool> {
        Ok(self.snaps.lock().unwrap().remove(id).is_some())
    }
}

fn driver(snapshots: bool) -> (Driver, Arc<Fake>) {
    let backend = Arc::new(Fake {
        snapshots,
        ..Fake::default()
    });
    let runner = Arc::new(RecordingRunner::default());
    let os = crate::os::Os::new(runner, Roots::default());
    let enforcement = Arc::new(Enforcement::new(
        PathBuf::from("/nonexistent-cgroup"),
        Arc::new(FakeCgroupFs::new()),
    ));
    let settings = Settings {
        node_id: "n1".to_owned(),
        path_root: None,
        max_volumes_per_node: 0,
    };
    let tiering = Tiering::new(TierSet::builtin(), None);
    (
        Driver::new(backend.clone(), os, settings, tiering, enforcement),
        backend,
    )
}

fn request(
    name: &str,
    size: u64,
    fs: Option<FsType>,
    source: Option<ContentSource>,
) -> CreateRequest {
    CreateRequest {
        name: name.to_owned(),
        range: CapacityRange {
            required: size,
            limit: 0,
        },
        capabilities: vec![Capability {
            access: AccessType::Mount { fs, flags: vec![] },
            mode: AccessMode::SingleNodeWriter,
        }],
        parameters: BTreeMap::new(),
        mutable_parameters: None,
        requisite: Vec::new(),
        source,
    }
}

fn field_of(e: &Error) -> &str {
    match e {
        Error::InvalidArgument { field, .. } => field,
        other => panic!("not INVALID_ARGUMENT: {other}"),
    }
}

#[tokio::test]
async fn snapshots_are_idempotent_by_name_and_listed_by_filter_and_page() {
    let (d, _) = driver(true);
    let a = d
        .create_volume(request("a", 64 << 20, Some(FsType::Ext4), None))
        .await
        .unwrap();
    let b = d
        .create_volume(request("b", 64 << 20, None, None))
        .await
        .unwrap();
    let none = BTreeMap::new();
    let s1 = d.create_snapshot("s1", &a.id, &none).await.unwrap();
    assert_eq!(s1.id, snapshot_id_for("s1"));
    assert_eq!((s1.size_bytes, s1.fs_type), (64 << 20, Some(FsType::Ext4)));
    assert_eq!(d.create_snapshot("s1", &a.id, &none).await.unwrap(), s1);
    let e = d.create_snapshot("s1", &b.id, &none).await.unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    for n in ["s2", "s3"] {
        d.create_snapshot(n, &b.id, &none).await.unwrap();
    }
    let e = d
        .create_snapshot("s4", &volume_id_for("missing"), &none)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::VolumeNotFound(_)), "{e}");

    let all = |f: SnapshotFilter<'static>| {
        let d = d.clone();
        async move { d.list_snapshots(f, 0, "").await.unwrap().snapshots }
    };
    assert_eq!(all(SnapshotFilter::default()).await.len(), 3);
    let of_b = SnapshotFilter {
        source_volume_id: Box::leak(b.id.clone().into_boxed_str()),
        ..SnapshotFilter::default()
    };
    assert_eq!(all(of_b).await.len(), 2);
    let by_id = SnapshotFilter {
        snapshot_id: Box::leak(s1.id.clone().into_boxed_str()),
        ..SnapshotFilter::default()
    };
    assert_eq!(all(by_id).await, vec![s1.clone()]);
    let unknown = SnapshotFilter {
        snapshot_id: "iolsnap-0",
        ..SnapshotFilter::default()
    };
    assert!(all(unknown).await.is_empty());
    // Pages of two, in ID order, without repeats.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = d
            .list_snapshots(SnapshotFilter::default(), 2, &token)
            .await
            .unwrap();
        assert!(page.snapshots.len() <= 2);
        seen.extend(page.snapshots.into_iter().map(|s| s.id));
        match page.next_token {
            Some(t) => token = t,
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 3);
    let e = d
        .list_snapshots(SnapshotFilter::default(), 0, "bogus")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BadToken(_)), "{e}");
    let e = d
        .list_snapshots(SnapshotFilter::default(), -1, "")
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "max_entries");

    // Deleting is idempotent, and an ID this driver never issues is simply absent.
    d.delete_snapshot(&s1.id).await.unwrap();
    d.delete_snapshot(&s1.id).await.unwrap();
    d.delete_snapshot("reallyfakesnapshotid").await.unwrap();
    assert_eq!(
        field_of(&d.delete_snapshot("").await.unwrap_err()),
        "snapshot_id"
    );
}

#[tokio::test]
async fn bad_snapshot_requests_name_the_field() {
    let (d, backend) = driver(true);
    let a = d
        .create_volume(request("a", 64 << 20, None, None))
        .await
        .unwrap();
    let none = BTreeMap::new();
    assert_eq!(
        field_of(&d.create_snapshot("", &a.id, &none).await.unwrap_err()),
        "name"
    );
    assert_eq!(
        field_of(&d.create_snapshot("s", "../etc", &none).await.unwrap_err()),
        "source_volume_id"
    );
    let odd = BTreeMap::from([("colour".to_owned(), "blue".to_owned())]);
    assert_eq!(
        field_of(&d.create_snapshot("s", &a.id, &odd).await.unwrap_err()),
        r#"parameters["colour"]"#
    );
    // csi-snapshotter's own metadata keys are accepted.
    let meta = BTreeMap::from([(
        "csi.storage.k8s.io/volumesnapshot/name".to_owned(),
        "snap".to_owned(),
    )]);
    d.create_snapshot("s", &a.id, &meta).await.unwrap();
    assert_eq!(
        backend.snaps.lock().unwrap().len(),
        1,
        "nothing else was taken"
    );
}

#[tokio::test]
async fn clones_take_the_source_size_and_filesystem_and_a_repeat_must_match() {
    let (d, _) = driver(true);
    let a = d
        .create_volume(request("a", 64 << 20, Some(FsType::Xfs), None))
        .await
        .unwrap();
    let s = d
        .create_snapshot("s", &a.id, &BTreeMap::new())
        .await
        .unwrap();
    let from_snap = Some(ContentSource::Snapshot(s.id.clone()));
    // Asked for less than the source holds: made at the source's size.
    let c = d
        .create_volume(request("c", 1 << 20, None, from_snap.clone()))
        .await
        .unwrap();
    assert_eq!(
        (c.capacity_bytes, c.fs_type),
        (a.capacity_bytes, Some(FsType::Xfs))
    );
    assert_eq!(c.source, from_snap);
    // Larger is fine; another filesystem than the source's is not.
    let big = d
        .create_volume(request(
            "big",
            a.capacity_bytes + (256 << 20),
            None,
            Some(ContentSource::Volume(a.id.clone())),
        ))
        .await
        .unwrap();
    assert_eq!(big.capacity_bytes, a.capacity_bytes + (256 << 20));
    let e = d
        .create_volume(request(
            "x",
            64 << 20,
            Some(FsType::Ext4),
            from_snap.clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "volume_capabilities");
    // A repeat with another source, or none, is ALREADY_EXISTS.
    let e = d
        .create_volume(request("c", 64 << 20, None, None))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    // Missing sources are NOT_FOUND, malformed ones name their field.
    let e = d
        .create_volume(request(
            "y",
            64 << 20,
            None,
            Some(ContentSource::Snapshot(snapshot_id_for("gone"))),
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::SnapshotNotFound(_)), "{e}");
    let e = d
        .create_volume(request(
            "y",
            64 << 20,
            None,
            Some(ContentSource::Volume(volume_id_for("gone"))),
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::VolumeNotFound(_)), "{e}");
    let e = d
        .create_volume(request(
            "y",
            64 << 20,
            None,
            Some(ContentSource::Volume("a b".to_owned())),
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "volume_content_source.volume.volume_id");
}

#[tokio::test]
async fn a_backend_without_snapshots_refuses_them_and_clones() {
    let (d, backend) = driver(false);
    assert!(!d.snapshots());
    let a = d
        .create_volume(request("a", 64 << 20, None, None))
        .await
        .unwrap();
    let e = d
        .create_snapshot("s", &a.id, &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    let e = d
        .create_volume(request(
            "c",
            64 << 20,
            None,
            Some(ContentSource::Volume(a.id.clone())),
        ))
        .await
        .unwrap_err();
    assert_eq!(field_of(&e), "volume_content_source");
    assert_eq!(
        backend.volumes.lock().unwrap().len(),
        1,
        "nothing was created"
    );
}

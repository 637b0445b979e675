//! The enforcement controller's own tests: publish, pass, unpublish and forgetting on a
//! fake cgroupfs over a temp cgroup tree.

use super::*;
use crate::reconcile::Pending;
use crate::{DeviceNumber, FakeCgroupFs, Limit, Limits, PodUid};

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

fn setup() -> (Arc<FakeCgroupFs>, Enforcement, PathBuf, tempfile::TempDir) {
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
    let e = Enforcement::new(root.path().to_owned(), fs.clone());
    (fs, e, cgroup, root)
}

fn current(fs: &FakeCgroupFs, cgroup: &Path) -> Limits {
    crate::apply::current(fs, cgroup, DEV).unwrap()
}

#[tokio::test]
async fn publish_applies_a_pass_repairs_unpublish_resets() {
    let (fs, e, cgroup, _root) = setup();
    fs.add_cgroup(&cgroup);
    assert_eq!(
        e.publish(publication("/t/a", capped())).await.0,
        Outcome::Applied
    );
    assert_eq!(current(&fs, &cgroup), capped().canonical());
    assert_eq!(e.pass().await.in_sync, 1);
    crate::apply::reset(fs.as_ref(), &cgroup, DEV).unwrap();
    assert_eq!(e.pass().await.repaired, 1);
    assert_eq!(current(&fs, &cgroup), capped().canonical());
    assert_eq!(e.unpublish(Path::new("/t/a")).await.unwrap(), Some(true));
    assert_eq!(current(&fs, &cgroup), Limits::UNLIMITED);
    assert_eq!(e.unpublish(Path::new("/t/a")).await.unwrap(), None);
    assert!(e.publications().await.is_empty());
}

#[tokio::test]
async fn a_cgroup_that_appears_later_is_applied_by_a_pass() {
    let (fs, e, cgroup, _root) = setup();
    std::fs::remove_dir(&cgroup).unwrap();
    assert_eq!(
        e.publish(publication("/t/a", capped())).await.0,
        Outcome::Pending(Pending::NoCgroup)
    );
    std::fs::create_dir_all(&cgroup).unwrap();
    fs.add_cgroup(&cgroup);
    assert_eq!(e.pass().await.applied, 1);
    assert_eq!(current(&fs, &cgroup), capped().canonical());
}

#[tokio::test]
async fn retain_forgets_and_the_next_pass_lifts_the_caps() {
    let (fs, e, cgroup, _root) = setup();
    fs.add_cgroup(&cgroup);
    e.publish(publication("/t/a", capped())).await;
    e.mark_foreign(Path::new("/t/c")).await;
    assert!(e.knows(Path::new("/t/c")).await);
    let gone = e.retain(e.epoch().await, |t| t == Path::new("/t/b")).await;
    assert_eq!(gone.len(), 1);
    assert!(!e.knows(Path::new("/t/c")).await);
    assert!(!e.knows(Path::new("/t/a")).await);
    let report = e.pass().await;
    assert_eq!((report.forgotten, report.lifted), (1, 1));
    assert_eq!(current(&fs, &cgroup), Limits::UNLIMITED);
    assert_eq!(e.pass().await.lifted, 0, "lifted once");
}

#[tokio::test]
async fn a_failed_release_is_retried_by_every_pass_until_it_succeeds() {
    let (fs, e, cgroup, _root) = setup();
    fs.add_cgroup(&cgroup);
    e.publish(publication("/t/a", capped())).await;
    fs.refuse_writes(true);
    assert!(e.unpublish(Path::new("/t/a")).await.is_err());
    assert!(e.publications().await.is_empty());
    let report = e.pass().await;
    assert_eq!((report.lifted, report.errors.len()), (0, 1), "{report:?}");
    assert_eq!(current(&fs, &cgroup), capped().canonical());
    fs.refuse_writes(false);
    assert_eq!(e.pass().await.lifted, 1);
    assert_eq!(current(&fs, &cgroup), Limits::UNLIMITED);
    let report = e.pass().await;
    assert_eq!((report.lifted, report.errors.len()), (0, 0));
}

#[tokio::test]
async fn a_queued_lift_leaves_a_line_a_new_publication_enforces() {
    let (fs, e, cgroup, _root) = setup();
    fs.add_cgroup(&cgroup);
    e.publish(publication("/t/a", capped())).await;
    fs.refuse_writes(true);
    assert!(e.unpublish(Path::new("/t/a")).await.is_err());
    fs.refuse_writes(false);
    // The same pod publishes the volume again before the retry.
    e.publish(publication("/t/b", capped())).await;
    assert_eq!(e.pass().await.lifted, 0);
    assert_eq!(current(&fs, &cgroup), capped().canonical());
}

#[tokio::test]
async fn a_snapshot_reads_the_line_and_keeps_the_status_json_shape() {
    let (fs, e, cgroup, _root) = setup();
    fs.add_cgroup(&cgroup);
    e.publish(publication("/t/a", capped())).await;
    let snapshot = e.snapshot().await;
    let p = &snapshot["iol-1"][0];
    assert_eq!(p.outcome, Outcome::Applied);
    assert_eq!(p.io_max, Some(capped().canonical()));
    let json = serde_json::to_value(p).unwrap();
    assert_eq!(json["outcome"], "Applied");
    assert_eq!(json["device"], "254:3");
    assert_eq!(json["pod_uid"], UID);
    assert_eq!(json["io_max"], capped().canonical().to_string());
    let back: PublicationSnapshot = serde_json::from_value(json).unwrap();
    assert_eq!(&back, p);
    let pending: Outcome = "Pending(NoIoController)".parse().unwrap();
    assert_eq!(pending.to_string(), "Pending(NoIoController)");
}

#[tokio::test]
async fn a_publish_writes_its_own_line_and_leaves_the_others_to_the_pass() {
    let (fs, e, cgroup, _root) = setup();
    fs.add_cgroup(&cgroup);
    let other = DeviceNumber {
        major: 254,
        minor: 4,
    };
    assert_eq!(
        e.publish(publication("/t/a", capped())).await.0,
        Outcome::Applied
    );
    crate::apply::reset(fs.as_ref(), &cgroup, DEV).unwrap();
    let mut b = publication("/t/b", capped());
    b.device = other;
    assert_eq!(e.publish(b).await.0, Outcome::Applied);
    assert_eq!(
        crate::apply::current(fs.as_ref(), &cgroup, other).unwrap(),
        capped().canonical()
    );
    assert_eq!(current(&fs, &cgroup), Limits::UNLIMITED, "no pass ran");
    let report = e.pass().await;
    assert_eq!((report.repaired, report.in_sync), (1, 1), "{report:?}");
    assert_eq!(current(&fs, &cgroup), capped().canonical());
}

#[tokio::test]
async fn a_publish_keeps_the_limits_of_an_earlier_publication_of_the_device() {
    let (fs, e, cgroup, _root) = setup();
    fs.add_cgroup(&cgroup);
    e.publish(publication("/t/a", capped())).await;
    let other = Limits {
        write_iops: Limit::per_sec(10),
        ..Limits::UNLIMITED
    };
    let (outcome, reason) = e.publish(publication("/t/b", other)).await;
    assert_eq!(outcome, Outcome::Failed);
    let reason = reason.unwrap();
    assert!(reason.contains("/t/a"), "{reason}");
    assert_eq!(current(&fs, &cgroup), capped().canonical());
}

#[tokio::test]
async fn retain_keeps_a_publication_recorded_after_the_mount_table_was_read() {
    let (fs, e, cgroup, _root) = setup();
    fs.add_cgroup(&cgroup);
    let before = e.epoch().await;
    e.publish(publication("/t/a", capped())).await;
    assert!(e.retain(before, |_| false).await.is_empty());
    assert_eq!(e.publications().await.len(), 1);
    assert_eq!(e.retain(e.epoch().await, |_| false).await.len(), 1);
    assert!(e.publications().await.is_empty());
}

//! Reconciler scenarios: pod cgroups are real directories in a temporary tree (so
//! discovery walks a real filesystem) and their IO files live in a [`FakeCgroupFs`], which
//! behaves like the kernel's `io.max`. The plain-file tests at the end go through
//! [`RealCgroupFs`].

use std::fs;
use std::path::{Path, PathBuf};

use super::*;
use crate::apply::{FakeCgroupFs, RealCgroupFs};
use crate::tier::Limit;

const UID_A: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11";
const UID_B: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a12";
const UID_C: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a13";
const UID_D: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a14";

const LV: DeviceNumber = DeviceNumber {
    major: 254,
    minor: 3,
};
const LV2: DeviceNumber = DeviceNumber {
    major: 254,
    minor: 300,
};
/// A device iolane was not given (the node's root disk).
const DISK: DeviceNumber = DeviceNumber {
    major: 259,
    minor: 0,
};

fn batch() -> Limits {
    Limits {
        read_bps: Limit::per_sec(209_715_200),
        write_bps: Limit::per_sec(209_715_200),
        read_iops: Limit::per_sec(2000),
        write_iops: Limit::per_sec(2000),
    }
}

fn slow() -> Limits {
    Limits {
        read_bps: Limit::per_sec(10_485_760),
        write_bps: Limit::Max,
        read_iops: Limit::per_sec(100),
        write_iops: Limit::per_sec(50),
    }
}

const BATCH_LINE: &str = "254:3 rbps=209715200 wbps=209715200 riops=2000 wiops=2000";

/// The burstable systemd-layout cgroup of `uid`.
fn systemd(uid: &str) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    )
}

/// The besteffort cgroupfs-layout cgroup of `uid`.
fn cgroupfs(uid: &str) -> String {
    format!("kubepods/besteffort/pod{uid}")
}

fn publication(volume: &str, uid: &str, device: DeviceNumber, limits: Limits) -> Publication {
    Publication {
        volume_id: volume.to_owned(),
        target_path: target(volume, uid),
        pod_uid: PodUid::parse(uid).unwrap(),
        device,
        tier: "batch".to_owned(),
        limits,
    }
}

fn target(volume: &str, uid: &str) -> PathBuf {
    PathBuf::from(format!(
        "/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/{volume}/mount"
    ))
}

/// A cgroup tree on disk with its IO files in a fake cgroupfs.
struct World {
    dir: tempfile::TempDir,
    fs: FakeCgroupFs,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
            fs: FakeCgroupFs::new(),
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A pod cgroup at `relative`, with the io controller, and a container below it.
    fn pod(&self, relative: &str) -> PathBuf {
        let path = self.root().join(relative);
        fs::create_dir_all(path.join("cri-containerd-0123abcd.scope")).unwrap();
        self.fs.add_cgroup(&path);
        path
    }

    fn pod_without_io(&self, relative: &str) -> PathBuf {
        let path = self.root().join(relative);
        fs::create_dir_all(&path).unwrap();
        self.fs.add_cgroup_without_io(&path);
        path
    }

    /// Removes a pod cgroup, as kubelet does when the pod ends.
    fn end_pod(&self, path: &Path) {
        fs::remove_dir_all(path).unwrap();
        self.fs.remove_cgroup(path);
    }

    fn pass(&self, r: &mut Reconciler, desired: &[Publication]) -> PassReport {
        r.pass(desired.to_vec(), self.root(), &self.fs)
    }

    fn io_max(&self, cgroup: &Path) -> String {
        self.fs.read_io_max(cgroup).unwrap()
    }

    fn writes(&self) -> Vec<String> {
        self.fs
            .writes()
            .into_iter()
            .map(|(cg, line)| {
                let cg = cg.strip_prefix(self.root()).unwrap().display().to_string();
                format!("{cg}: {line}")
            })
            .collect()
    }
}

/// The counts of a report, in one comparable line.
fn summary(r: &PassReport) -> String {
    format!(
        "in_sync={} applied={} repaired={} pending={} gone={} forgotten={} errors={}",
        r.in_sync,
        r.applied,
        r.repaired,
        r.pending,
        r.gone,
        r.forgotten,
        r.errors.len()
    )
}

fn outcome(r: &PassReport, volume: &str, uid: &str) -> Outcome {
    r.outcomes[&target(volume, uid)]
}

#[test]
fn applies_once_then_stays_in_sync() {
    let w = World::new();
    let cg = w.pod(&systemd(UID_A));
    let p = publication("vol-a", UID_A, LV, batch());
    let mut r = Reconciler::new();

    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=1 repaired=0 pending=0 gone=0 forgotten=0 errors=0"
    );
    assert_eq!(outcome(&report, "vol-a", UID_A), Outcome::Applied);
    assert_eq!(w.io_max(&cg), format!("{BATCH_LINE}\n"));
    assert_eq!(w.writes(), [format!("{}: {BATCH_LINE}", systemd(UID_A))]);
    let state = r.get(&p.target_path).unwrap();
    assert_eq!(state.cgroup, Some(cg.as_path()));
    assert_eq!(state.enforced, Some(batch()));
    assert_eq!(state.outcome, Outcome::Applied);
    assert_eq!(state.publication, &p);

    for _ in 0..3 {
        let report = w.pass(&mut r, std::slice::from_ref(&p));
        assert_eq!(
            summary(&report),
            "in_sync=1 applied=0 repaired=0 pending=0 gone=0 forgotten=0 errors=0"
        );
    }
    assert_eq!(w.writes().len(), 1, "an in-sync line is not rewritten");
}

#[test]
fn every_layout_and_qos_class_in_one_pass() {
    let w = World::new();
    let pods = [
        (UID_A, systemd(UID_A)),
        (
            UID_B,
            format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice",
                UID_B.replace('-', "_")
            ),
        ),
        (UID_C, cgroupfs(UID_C)),
        (UID_D, format!("kubepods/pod{UID_D}")),
    ];
    let mut desired = Vec::new();
    for (i, (uid, layout)) in pods.iter().enumerate() {
        w.pod(layout);
        let minor = u32::try_from(i).unwrap();
        desired.push(publication(
            &format!("vol-{i}"),
            uid,
            DeviceNumber { major: 254, minor },
            batch(),
        ));
    }
    let mut r = Reconciler::new();
    let report = w.pass(&mut r, &desired);
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=4 repaired=0 pending=0 gone=0 forgotten=0 errors=0"
    );
    let mut writes = w.writes();
    writes.sort();
    let mut want: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, (_, layout))| {
            format!("{layout}: 254:{i} rbps=209715200 wbps=209715200 riops=2000 wiops=2000")
        })
        .collect();
    want.sort();
    assert_eq!(writes, want);
}

#[test]
fn drift_is_repaired_and_other_devices_are_left_alone() {
    let w = World::new();
    let cg = w.pod(&cgroupfs(UID_A));
    // Someone else's cap on another device of the same pod.
    let theirs = "259:0 rbps=max wbps=max riops=max wiops=120";
    w.fs.write_io_max(&cg, theirs).unwrap();
    let p = publication("vol-a", UID_A, LV, batch());
    let mut r = Reconciler::new();
    assert_eq!(w.pass(&mut r, std::slice::from_ref(&p)).applied, 1);

    // Changed behind our back: one key lowered...
    w.fs.write_io_max(
        &cg,
        "254:3 rbps=209715200 wbps=209715200 riops=5 wiops=2000",
    )
    .unwrap();
    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=0 repaired=1 pending=0 gone=0 forgotten=0 errors=0"
    );
    assert_eq!(outcome(&report, "vol-a", UID_A), Outcome::Repaired);
    assert_eq!(w.io_max(&cg), format!("{BATCH_LINE}\n{theirs}\n"));

    // ... and lifted altogether.
    w.fs.write_io_max(&cg, "254:3 rbps=max wbps=max riops=max wiops=max")
        .unwrap();
    assert_eq!(w.io_max(&cg), format!("{theirs}\n"));
    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(report.repaired, 1);
    assert_eq!(w.io_max(&cg), format!("{BATCH_LINE}\n{theirs}\n"));

    // Every line the reconciler wrote was the full line of its own device.
    let ours: Vec<String> = w
        .writes()
        .into_iter()
        .filter(|l| l.ends_with(BATCH_LINE))
        .collect();
    assert_eq!(ours.len(), 3);
    assert!(
        w.fs.writes()
            .iter()
            .all(|(_, line)| !line.starts_with(&format!("{DISK} ")) || line == theirs),
        "{:?}",
        w.writes()
    );
}

#[test]
fn a_tier_change_is_an_apply_not_a_repair() {
    let w = World::new();
    let cg = w.pod(&systemd(UID_A));
    let mut p = publication("vol-a", UID_A, LV, batch());
    let mut r = Reconciler::new();
    w.pass(&mut r, std::slice::from_ref(&p));

    p.limits = slow();
    p.tier = "slow".to_owned();
    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=1 repaired=0 pending=0 gone=0 forgotten=0 errors=0"
    );
    assert_eq!(
        w.io_max(&cg),
        "254:3 rbps=10485760 wbps=max riops=100 wiops=50\n"
    );
    let state = r.get(&p.target_path).unwrap();
    assert_eq!(state.publication.tier, "slow");
    assert_eq!(state.enforced, Some(slow()));

    // To the uncapped tier: the all-max line, which removes the device's line.
    p.limits = Limits::UNLIMITED;
    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(report.applied, 1);
    assert_eq!(w.io_max(&cg), "");
    assert_eq!(
        w.writes().last().unwrap(),
        &format!(
            "{}: 254:3 rbps=max wbps=max riops=max wiops=max",
            systemd(UID_A)
        )
    );
}

#[test]
fn an_uncapped_publication_writes_only_to_undo_drift() {
    let w = World::new();
    let cg = w.pod(&systemd(UID_A));
    let p = publication("vol-a", UID_A, LV, Limits::UNLIMITED);
    let mut r = Reconciler::new();
    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(
        summary(&report),
        "in_sync=1 applied=0 repaired=0 pending=0 gone=0 forgotten=0 errors=0"
    );
    assert!(w.writes().is_empty());

    w.fs.write_io_max(&cg, BATCH_LINE).unwrap();
    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(report.repaired, 1);
    assert_eq!(w.io_max(&cg), "");
}

#[test]
fn limits_are_compared_in_canonical_form() {
    let w = World::new();
    let cg = w.pod(&systemd(UID_A));
    // IOPS at or past the kernel's 32-bit ceiling mean max, as the kernel prints them.
    let huge = Limits {
        read_iops: Limit::per_sec(u64::from(u32::MAX)),
        write_iops: Limit::per_sec(10_000_000_000),
        ..batch()
    };
    let p = publication("vol-a", UID_A, LV, huge);
    let mut r = Reconciler::new();
    assert_eq!(w.pass(&mut r, std::slice::from_ref(&p)).applied, 1);
    assert_eq!(
        w.io_max(&cg),
        "254:3 rbps=209715200 wbps=209715200 riops=max wiops=max\n"
    );
    assert_eq!(w.pass(&mut r, std::slice::from_ref(&p)).in_sync, 1);
}

#[test]
fn pending_until_the_cgroup_appears() {
    let w = World::new();
    fs::create_dir_all(w.root().join("kubepods.slice/kubepods-burstable.slice")).unwrap();
    let p = publication("vol-a", UID_A, LV, batch());
    let mut r = Reconciler::new();
    for _ in 0..2 {
        let report = w.pass(&mut r, std::slice::from_ref(&p));
        assert_eq!(
            summary(&report),
            "in_sync=0 applied=0 repaired=0 pending=1 gone=0 forgotten=0 errors=0"
        );
        assert_eq!(
            outcome(&report, "vol-a", UID_A),
            Outcome::Pending(Pending::NoCgroup)
        );
    }
    let state = r.get(&p.target_path).unwrap();
    assert_eq!((state.cgroup, state.enforced), (None, None));
    assert!(w.writes().is_empty());

    let cg = w.pod(&systemd(UID_A));
    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(report.applied, 1);
    assert_eq!(w.io_max(&cg), format!("{BATCH_LINE}\n"));
}

#[test]
fn pending_while_the_io_controller_is_off() {
    let w = World::new();
    let cg = w.pod_without_io(&cgroupfs(UID_A));
    let p = publication("vol-a", UID_A, LV, batch());
    let mut r = Reconciler::new();
    let report = w.pass(&mut r, std::slice::from_ref(&p));
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=0 repaired=0 pending=1 gone=0 forgotten=0 errors=0"
    );
    assert_eq!(
        outcome(&report, "vol-a", UID_A),
        Outcome::Pending(Pending::NoIoController)
    );
    assert!(w.writes().is_empty());
    assert_eq!(r.get(&p.target_path).unwrap().cgroup, Some(cg.as_path()));

    // The controller gets enabled (subtree_control of the parent): enforced next pass.
    w.fs.add_cgroup(&cg);
    assert_eq!(w.pass(&mut r, std::slice::from_ref(&p)).applied, 1);
}

#[test]
fn a_pod_whose_cgroup_is_gone_is_forgotten_without_error() {
    let w = World::new();
    let cg_a = w.pod(&systemd(UID_A));
    let cg_b = w.pod(&systemd(UID_B));
    w.fs.set_io_stat(&cg_a, "254:3 rbytes=4096 wbytes=0 rios=1 wios=0\n");
    let a = publication("vol-a", UID_A, LV, batch());
    let b = publication("vol-b", UID_B, LV2, batch());
    let desired = [a.clone(), b.clone()];
    let mut r = Reconciler::new();
    assert_eq!(w.pass(&mut r, &desired).applied, 2);
    assert!(r.get(&a.target_path).unwrap().stats.is_some());

    w.end_pod(&cg_a);
    let report = w.pass(&mut r, &desired);
    assert_eq!(
        summary(&report),
        "in_sync=1 applied=0 repaired=0 pending=0 gone=1 forgotten=0 errors=0"
    );
    assert_eq!(outcome(&report, "vol-a", UID_A), Outcome::Gone);
    let state = r.get(&a.target_path).unwrap();
    assert_eq!(
        (state.cgroup, state.enforced, state.stats),
        (None, None, None)
    );

    // Still listed while kubelet unmounts: still gone, never searched for again (a
    // cgroup with that UID is not the pod's any more), nothing written.
    w.pod(&cgroupfs(UID_A));
    let report = w.pass(&mut r, &desired);
    assert_eq!(outcome(&report, "vol-a", UID_A), Outcome::Gone);
    assert_eq!(report.errors, []);
    assert_eq!(w.writes().len(), 2);
    assert_eq!(
        w.io_max(&cg_b),
        "254:300 rbps=209715200 wbps=209715200 riops=2000 wiops=2000\n"
    );
}

#[test]
fn publications_leaving_the_desired_set_are_forgotten_without_a_write() {
    let w = World::new();
    let cg = w.pod(&systemd(UID_A));
    let a = publication("vol-a", UID_A, LV, batch());
    let b = publication("vol-b", UID_A, LV2, slow());
    let mut r = Reconciler::new();
    assert_eq!(w.pass(&mut r, &[a.clone(), b.clone()]).applied, 2);

    let report = w.pass(&mut r, std::slice::from_ref(&b));
    assert_eq!(
        summary(&report),
        "in_sync=1 applied=0 repaired=0 pending=0 gone=0 forgotten=1 errors=0"
    );
    assert!(r.get(&a.target_path).is_none());
    assert_eq!(r.publications().count(), 1);
    assert_eq!(w.writes().len(), 2, "forgetting writes nothing");
    // The driver resets at unpublish; the reconciler left the line as it was.
    assert_eq!(current_of(&w, &cg, LV), batch());

    let report = w.pass(&mut r, &[]);
    assert_eq!(report.forgotten, 1);
    assert_eq!(report.outcomes.len(), 0);
    assert_eq!(r.publications().count(), 0);
}

fn current_of(w: &World, cg: &Path, dev: DeviceNumber) -> Limits {
    apply::current(&w.fs, cg, dev).unwrap()
}

#[test]
fn release_lifts_the_caps_only_when_it_should() {
    let w = World::new();
    let cg_a = w.pod(&systemd(UID_A));
    let cg_b = w.pod(&systemd(UID_B));
    let a = publication("vol-a", UID_A, LV, batch());
    // The same volume published twice into pod B (two target paths), and once pending.
    let b1 = publication("vol-b", UID_B, LV2, slow());
    let mut b2 = b1.clone();
    b2.target_path = PathBuf::from(format!(
        "/var/lib/kubelet/pods/{UID_B}/volumes/kubernetes.io~csi/vol-b-2/mount"
    ));
    let pending = publication("vol-c", UID_C, LV, batch());
    let mut r = Reconciler::new();
    let report = w.pass(
        &mut r,
        &[a.clone(), b1.clone(), b2.clone(), pending.clone()],
    );
    assert_eq!(
        summary(&report),
        "in_sync=1 applied=2 repaired=0 pending=1 gone=0 forgotten=0 errors=0"
    );
    let writes = w.writes().len();

    // Unknown target path, and a publication whose cgroup was never found: no write.
    assert!(!r.release(Path::new("/nowhere"), &w.fs).unwrap());
    assert!(!r.release(&pending.target_path, &w.fs).unwrap());
    // Another target path still enforces the same device in the same cgroup.
    assert!(!r.release(&b1.target_path, &w.fs).unwrap());
    assert_eq!(current_of(&w, &cg_b, LV2), slow());
    assert_eq!(w.writes().len(), writes);
    // The last one lifts it.
    assert!(r.release(&b2.target_path, &w.fs).unwrap());
    assert_eq!(current_of(&w, &cg_b, LV2), Limits::UNLIMITED);
    // A pod already gone: the write finds no cgroup, which is no error.
    w.end_pod(&cg_a);
    assert!(!r.release(&a.target_path, &w.fs).unwrap());
    assert_eq!(r.publications().count(), 0);
    // (The fake records refused writes too: the last one is the gone pod's.)
    assert_eq!(
        &w.writes()[writes..],
        [
            format!(
                "{}: 254:300 rbps=max wbps=max riops=max wiops=max",
                systemd(UID_B)
            ),
            format!(
                "{}: 254:3 rbps=max wbps=max riops=max wiops=max",
                systemd(UID_A)
            ),
        ]
    );
    // Released twice: the second is a no-op.
    assert!(!r.release(&b2.target_path, &w.fs).unwrap());
}

#[test]
fn release_reports_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let cg = plain_cgroup(dir.path(), &cgroupfs(UID_A), "io memory", "");
    let p = publication("vol-a", UID_A, LV, batch());
    let mut r = Reconciler::new();
    assert_eq!(
        r.pass(vec![p.clone()], dir.path(), &RealCgroupFs).applied,
        1
    );
    // io.max replaced by a directory: the write fails, and not because the pod is gone.
    fs::remove_file(cg.join("io.max")).unwrap();
    fs::create_dir(cg.join("io.max")).unwrap();
    let e = r.release(&p.target_path, &RealCgroupFs).unwrap_err();
    assert!(!e.is_not_found());
    assert!(
        e.to_string().starts_with(&format!(
            "write \"254:3 rbps=max wbps=max riops=max wiops=max\" to {}: ",
            cg.join("io.max").display()
        )),
        "{e}"
    );
}

#[test]
fn a_restarted_reconciler_loses_nothing() {
    let w = World::new();
    let cg_a = w.pod(&systemd(UID_A));
    let cg_b = w.pod(&cgroupfs(UID_B));
    let a = publication("vol-a", UID_A, LV, batch());
    let b = publication("vol-b", UID_B, LV2, slow());
    let mut r = Reconciler::new();
    assert_eq!(w.pass(&mut r, &[a.clone(), b.clone()]).applied, 2);

    // While the driver was down, B's line was lifted.
    w.fs.write_io_max(&cg_b, "254:300 rbps=max wbps=max riops=max wiops=max")
        .unwrap();
    let writes = w.writes().len();
    let mut restarted = Reconciler::new();
    let report = w.pass(&mut restarted, &[a.clone(), b.clone()]);
    assert_eq!(
        summary(&report),
        "in_sync=1 applied=1 repaired=0 pending=0 gone=0 forgotten=0 errors=0"
    );
    assert_eq!(outcome(&report, "vol-a", UID_A), Outcome::InSync);
    assert_eq!(outcome(&report, "vol-b", UID_B), Outcome::Applied);
    assert_eq!(w.writes().len(), writes + 1);
    assert_eq!(current_of(&w, &cg_a, LV), batch());
    assert_eq!(current_of(&w, &cg_b, LV2), slow());
    // A line found right counts as enforced: changing it later is a repair.
    w.fs.write_io_max(&cg_a, "254:3 rbps=max wbps=max riops=max wiops=max")
        .unwrap();
    assert_eq!(w.pass(&mut restarted, &[a, b]).repaired, 1);
}

#[test]
fn a_target_path_reused_for_another_pod_starts_over() {
    let w = World::new();
    let cg_a = w.pod(&systemd(UID_A));
    w.pod(&systemd(UID_B));
    let a = publication("vol-a", UID_A, LV, batch());
    let mut r = Reconciler::new();
    w.pass(&mut r, std::slice::from_ref(&a));
    w.end_pod(&cg_a);
    assert_eq!(w.pass(&mut r, std::slice::from_ref(&a)).gone, 1);

    // Same target path, another pod: a new publication, searched for afresh.
    let b = Publication {
        pod_uid: PodUid::parse(UID_B).unwrap(),
        ..a.clone()
    };
    let report = w.pass(&mut r, std::slice::from_ref(&b));
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=1 repaired=0 pending=0 gone=0 forgotten=0 errors=0"
    );
    assert_eq!(
        r.get(&a.target_path).unwrap().cgroup,
        Some(w.root().join(systemd(UID_B)).as_path())
    );
}

#[test]
fn io_stat_counters_are_kept_per_publication() {
    let w = World::new();
    let cg = w.pod(&systemd(UID_A));
    let a = publication("vol-a", UID_A, LV, batch());
    let b = publication("vol-b", UID_A, LV2, slow());
    let mut r = Reconciler::new();
    w.pass(&mut r, &[a.clone(), b.clone()]);
    assert_eq!(r.get(&a.target_path).unwrap().stats, None, "no IO yet");

    w.fs.set_io_stat(
        &cg,
        "254:3 rbytes=1048576 wbytes=8388608 rios=256 wios=8 dbytes=0 dios=0\n\
         254:300 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n\
         259:0 rbytes=40960 wbytes=0 rios=10 wios=0 dbytes=0 dios=0\n",
    );
    w.pass(&mut r, &[a.clone(), b.clone()]);
    let stats = r.get(&a.target_path).unwrap().stats.unwrap();
    assert_eq!(
        (stats.rios, stats.wios, stats.rbytes, stats.wbytes),
        (256, 8, 1_048_576, 8_388_608)
    );
    let stats = r.get(&b.target_path).unwrap().stats.unwrap();
    assert_eq!((stats.rios, stats.rbytes), (1, 4096));

    w.fs.set_io_stat(
        &cg,
        "254:3 rbytes=2097152 wbytes=8388608 rios=512 wios=8 dbytes=0 dios=0\n",
    );
    w.pass(&mut r, &[a.clone(), b.clone()]);
    assert_eq!(r.get(&a.target_path).unwrap().stats.unwrap().rios, 512);
    assert_eq!(r.get(&b.target_path).unwrap().stats, None);

    // An unreadable io.stat is an error of its own; the caps are still enforced.
    w.fs.set_io_stat(&cg, "254:3 rios=lots\n");
    let report = w.pass(&mut r, &[a.clone(), b]);
    assert_eq!(
        summary(&report),
        "in_sync=2 applied=0 repaired=0 pending=0 gone=0 forgotten=0 errors=2"
    );
    assert_eq!(
        report.errors[0],
        PassError {
            volume_id: "vol-a".to_owned(),
            target_path: a.target_path.clone(),
            reason: format!(
                "{}: io.stat line \"254:3 rios=lots\": rios=\"lots\" is not a counter",
                cg.join("io.stat").display()
            ),
        }
    );
    assert_eq!(r.get(&a.target_path).unwrap().stats, None);
}

#[test]
fn failures_are_reported_per_publication() {
    let w = World::new();
    // Pod A has two cgroups (one per layout): ambiguous, never guessed.
    w.pod(&systemd(UID_A));
    w.pod(&cgroupfs(UID_A));
    let cg_b = w.pod(&systemd(UID_B));
    let a = publication("vol-a", UID_A, LV, batch());
    let b = publication("vol-b", UID_B, LV, batch());
    // The same device in the same pod at another target path, with other limits.
    let mut b_conflict = publication("vol-b2", UID_B, LV, slow());
    b_conflict.volume_id = "vol-b".to_owned();
    // The same target path twice.
    let b_twice = Publication {
        limits: slow(),
        ..b.clone()
    };
    let mut r = Reconciler::new();
    let report = w.pass(&mut r, &[a.clone(), b.clone(), b_conflict.clone(), b_twice]);
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=1 repaired=0 pending=0 gone=0 forgotten=0 errors=3"
    );
    assert_eq!(outcome(&report, "vol-a", UID_A), Outcome::Failed);
    assert_eq!(outcome(&report, "vol-b", UID_B), Outcome::Applied);
    assert_eq!(outcome(&report, "vol-b2", UID_B), Outcome::Failed);
    let reasons: Vec<&str> = report.errors.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            format!(
                "target path {} is listed twice; the first publication is kept",
                b.target_path.display()
            ),
            format!(
                "pod {UID_A} has more than one cgroup: {}, {}",
                w.root().join(cgroupfs(UID_A)).display(),
                w.root().join(systemd(UID_A)).display()
            ),
            format!(
                "device 254:3 in {} is also published at {} with other limits \
                 (rbps=209715200 wbps=209715200 riops=2000 wiops=2000, not \
                 rbps=10485760 wbps=max riops=100 wiops=50); the first publication's \
                 limits are kept",
                cg_b.display(),
                b.target_path.display()
            ),
        ]
    );
    assert_eq!(w.io_max(&cg_b), format!("{BATCH_LINE}\n"));
    assert_eq!(w.writes().len(), 1);

    // A cgroup root that does not exist fails every search, and says where.
    let mut r = Reconciler::new();
    let gone_root = w.root().join("not-mounted");
    let report = r.pass(vec![b.clone()], &gone_root, &w.fs);
    assert_eq!(report.errors.len(), 1);
    assert!(
        report.errors[0]
            .reason
            .starts_with(&format!("read cgroup directory {}: ", gone_root.display())),
        "{:?}",
        report.errors
    );
    assert_eq!(outcome(&report, "vol-b", UID_B), Outcome::Failed);
}

#[test]
fn the_duration_is_measured() {
    let w = World::new();
    w.pod(&systemd(UID_A));
    let mut r = Reconciler::new();
    let before = Instant::now();
    let report = w.pass(&mut r, &[publication("vol-a", UID_A, LV, batch())]);
    assert!(report.duration <= before.elapsed());
    assert!(report.duration > Duration::ZERO);
}

/// A cgroup directory of plain files: `cgroup.controllers`, `io.max`, `io.stat`.
fn plain_cgroup(root: &Path, relative: &str, controllers: &str, io_max: &str) -> PathBuf {
    let cg = root.join(relative);
    fs::create_dir_all(&cg).unwrap();
    fs::write(cg.join("cgroup.controllers"), format!("{controllers}\n")).unwrap();
    if controllers.split_whitespace().any(|c| c == "io") {
        fs::write(cg.join("io.max"), io_max).unwrap();
        fs::write(
            cg.join("io.stat"),
            "254:3 rbytes=1048576 wbytes=8388608 rios=256 wios=8 dbytes=0 dios=0\n",
        )
        .unwrap();
    }
    cg
}

/// Through [`RealCgroupFs`] on a tree of plain files. A plain `io.max` is not the
/// kernel's: [`RealCgroupFs`] truncates it and writes one line, so the file holds only the
/// last line written, where the kernel would keep one line per device. These tests
/// therefore give each cgroup one device and check the file's whole text.
#[test]
fn plain_files_in_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cg_a = plain_cgroup(root, &systemd(UID_A), "cpu io memory pids", "");
    let cg_b = plain_cgroup(root, &cgroupfs(UID_B), "cpu io memory pids", "");
    let cg_c = plain_cgroup(root, &cgroupfs(UID_C), "cpu memory pids", "");
    let a = publication("vol-a", UID_A, LV, batch());
    let b = publication("vol-b", UID_B, LV, slow());
    let c = publication("vol-c", UID_C, LV, batch());
    let d = publication("vol-d", UID_D, LV, batch());
    let desired = vec![a.clone(), b.clone(), c, d];
    let fs_ = RealCgroupFs;
    let mut r = Reconciler::new();

    let report = r.pass(desired.clone(), root, &fs_);
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=2 repaired=0 pending=2 gone=0 forgotten=0 errors=0"
    );
    assert_eq!(
        outcome(&report, "vol-c", UID_C),
        Outcome::Pending(Pending::NoIoController)
    );
    assert_eq!(
        outcome(&report, "vol-d", UID_D),
        Outcome::Pending(Pending::NoCgroup)
    );
    assert_eq!(fs::read_to_string(cg_a.join("io.max")).unwrap(), BATCH_LINE);
    assert_eq!(
        fs::read_to_string(cg_b.join("io.max")).unwrap(),
        "254:3 rbps=10485760 wbps=max riops=100 wiops=50"
    );
    assert!(!cg_c.join("io.max").exists(), "never created");
    let stats = r.get(&a.target_path).unwrap().stats.unwrap();
    assert_eq!((stats.rios, stats.wios), (256, 8));

    let report = r.pass(desired.clone(), root, &fs_);
    assert_eq!(report.in_sync, 2);

    // Drift in one file, the other pod gone.
    fs::write(
        cg_a.join("io.max"),
        "254:3 rbps=max wbps=max riops=10 wiops=max\n",
    )
    .unwrap();
    fs::remove_dir_all(&cg_b).unwrap();
    let report = r.pass(desired, root, &fs_);
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=0 repaired=1 pending=2 gone=1 forgotten=0 errors=0"
    );
    assert_eq!(fs::read_to_string(cg_a.join("io.max")).unwrap(), BATCH_LINE);
    assert!(!cg_b.exists(), "a gone cgroup is never recreated");

    assert!(r.release(&a.target_path, &fs_).unwrap());
    assert_eq!(
        fs::read_to_string(cg_a.join("io.max")).unwrap(),
        "254:3 rbps=max wbps=max riops=max wiops=max"
    );
}

#[test]
fn plain_files_unreadable_io_max() {
    let dir = tempfile::tempdir().unwrap();
    let cg = plain_cgroup(
        dir.path(),
        &systemd(UID_A),
        "io",
        "254:3 rbps=fast wbps=max riops=max wiops=max\n",
    );
    let p = publication("vol-a", UID_A, LV, batch());
    let mut r = Reconciler::new();
    let report = r.pass(vec![p.clone()], dir.path(), &RealCgroupFs);
    assert_eq!(
        summary(&report),
        "in_sync=0 applied=0 repaired=0 pending=0 gone=0 forgotten=0 errors=1"
    );
    assert_eq!(
        report.errors[0].reason,
        format!(
            "{}: io.max line \"254:3 rbps=fast wbps=max riops=max wiops=max\": \
             rbps=\"fast\" is neither a positive integer nor max",
            cg.join("io.max").display()
        )
    );
    // Nothing written over a file it could not understand.
    assert_eq!(
        fs::read_to_string(cg.join("io.max")).unwrap(),
        "254:3 rbps=fast wbps=max riops=max wiops=max\n"
    );
    let state = r.get(&p.target_path).unwrap();
    assert_eq!((state.outcome, state.enforced), (Outcome::Failed, None));
}

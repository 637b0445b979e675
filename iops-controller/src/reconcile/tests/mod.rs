//! Reconciler scenarios: pod cgroups are real directories in a temporary tree (so
//! discovery walks a real filesystem) and their IO files live in a [`FakeCgroupFs`], which
//! behaves like the kernel's `io.max`. The plain-file tests ([`plain_files`]) go
//! through [`RealCgroupFs`].
//!
//! This file: the helpers, and applying, repairing, waiting and forgetting; [`lifecycle`]:
//! release, restart, reused targets, counters and failures.

mod lifecycle;
mod plain_files;

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

fn current_of(w: &World, cg: &Path, dev: DeviceNumber) -> Limits {
    apply::current(&w.fs, cg, dev).unwrap()
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
fn publications_leaving_the_desired_set_are_forgotten_and_their_lines_reset() {
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
    assert_eq!(w.writes().len(), 3, "forgetting writes the reset line only");
    assert_eq!(report.lifted, 1);
    assert_eq!(current_of(&w, &cg, LV), Limits::UNLIMITED);

    let report = w.pass(&mut r, &[]);
    assert_eq!(report.forgotten, 1);
    assert_eq!(report.outcomes.len(), 0);
    assert_eq!(r.publications().count(), 0);
}

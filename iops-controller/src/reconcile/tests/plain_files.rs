//! The reconciler through [`RealCgroupFs`] on plain files standing in for cgroup files.

#[allow(clippy::wildcard_imports)]
use super::*;

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

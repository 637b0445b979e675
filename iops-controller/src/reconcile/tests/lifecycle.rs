//! Reconciler scenarios over a publication's life: caps lifted at release, a restarted
//! reconciler, a target path reused, `io.stat` counters, failures and the pass duration.

#[allow(clippy::wildcard_imports)]
use super::*;

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

//! Adapter tests on temporary directory trees: pod cgroup discovery in both kubelet
//! layouts, and the real cgroupfs writer on plain files.

use std::fs;
use std::path::{Path, PathBuf};

use iops_controller::apply::{self, CgroupFs, RealCgroupFs};
use iops_controller::{CgroupError, DeviceNumber, Limit, Limits, PodUid, find_pod_cgroup};

const UID: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11";
const UID_: &str = "0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a11";
/// Another pod whose UID differs from `UID` in the last digit only.
const OTHER_: &str = "0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a12";
const OTHER: &str = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a12";

/// Makes each directory (relative to `root`), with an `io.max` file like a cgroup's.
fn tree(root: &Path, dirs: &[String]) {
    for d in dirs {
        let dir = root.join(d);
        fs::create_dir_all(&dir).expect("create test cgroup");
        fs::write(dir.join("io.max"), "").expect("create test io.max");
    }
}

fn find(root: &Path) -> Option<String> {
    let uid = PodUid::parse(UID).expect("valid UID");
    let found = find_pod_cgroup(root, &uid).expect("search succeeds")?;
    let relative = found.strip_prefix(root).expect("found below the root");
    Some(relative.to_str().expect("UTF-8 path").to_owned())
}

/// Every layout kubelet makes, each with the pod's containers below it and other pods
/// around it.
#[test]
fn finds_the_pod_in_every_layout() {
    let s = |s: &str| s.replace("{uid}", UID).replace("{uid_}", UID_);
    let layouts = [
        // systemd driver, each QoS class.
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice",
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice",
        "kubepods.slice/kubepods-pod{uid_}.slice",
        // systemd driver with cgroupRoot /kubelet.
        "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/\
         kubelet-kubepods-burstable-pod{uid_}.slice",
        // systemd driver inside a kind node's container, six levels down.
        "system.slice/docker-4f1c.scope/kubelet.slice/kubelet-kubepods.slice/\
         kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice",
        // cgroupfs driver, each QoS class, and under a cgroup root.
        "kubepods/burstable/pod{uid}",
        "kubepods/besteffort/pod{uid}",
        "kubepods/pod{uid}",
        "kubelet/kubepods/pod{uid}",
    ];
    for layout in layouts {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let pod = s(layout);
        let parent = Path::new(&pod)
            .parent()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let other = if pod.ends_with(".slice") {
            format!("{parent}/kubepods-burstable-pod{OTHER_}.slice")
        } else {
            format!("{parent}/pod{OTHER}")
        };
        tree(
            root,
            &[
                pod.clone(),
                format!("{pod}/cri-containerd-0123abcd.scope"),
                format!("{pod}/crio-conmon-0123abcd.scope"),
                other.clone(),
                format!("{other}/cri-containerd-4567.scope"),
                "system.slice/containerd.service".to_owned(),
                "user.slice/user-0.slice/session-1.scope".to_owned(),
            ],
        );
        assert_eq!(find(root), Some(pod), "layout {layout}");
    }
}

#[test]
fn decoys_do_not_match() {
    let decoys = [
        // Another pod; UIDs one character longer or shorter than the pod's.
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{OTHER_}.slice"),
        format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}0.slice"),
        format!("kubepods/burstable/pod{UID}0"),
        format!("kubepods/burstable/pod{}", &UID[..35]),
        // The right UID in the wrong spelling for its layout.
        format!("kubepods.slice/kubepods-pod{UID}.slice"),
        format!("kubepods/pod{UID_}"),
        format!("kubepods/burstable/pod{}", UID.to_uppercase()),
        // The right name outside a kubepods hierarchy.
        format!("system.slice/pod{UID}"),
        format!("machine.slice/machine-pod{UID_}.slice"),
        // Too deep: seven levels.
        format!("a/b/c/d/e/kubepods/pod{UID}"),
        // Inside another pod's cgroup, which is never searched.
        format!("kubepods/pod{OTHER}/kubepods/pod{UID}"),
    ];
    for decoy in &decoys {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path(), std::slice::from_ref(decoy));
        assert_eq!(find(dir.path()), None, "decoy {decoy}");
    }
    // All of them at once, then the real one beside them.
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), &decoys);
    assert_eq!(find(dir.path()), None);
    let real =
        format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice");
    tree(dir.path(), std::slice::from_ref(&real));
    assert_eq!(find(dir.path()), Some(real));
}

#[test]
fn symlinks_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    tree(elsewhere.path(), &[format!("kubepods/pod{UID}")]);
    let root = dir.path();
    fs::create_dir(root.join("kubepods.slice")).unwrap();
    // A link to a directory holding the pod, and a link named like the pod.
    std::os::unix::fs::symlink(elsewhere.path(), root.join("kubepods.slice/linked")).unwrap();
    std::os::unix::fs::symlink(
        elsewhere.path().join(format!("kubepods/pod{UID}")),
        root.join(format!("kubepods.slice/kubepods-pod{UID_}.slice")),
    )
    .unwrap();
    assert_eq!(find(root), None);
}

#[test]
fn two_cgroups_for_one_pod_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tree(
        root,
        &[
            format!("kubepods.slice/kubepods-pod{UID_}.slice"),
            format!("kubepods/pod{UID}"),
        ],
    );
    let uid = PodUid::parse(UID).unwrap();
    let e = find_pod_cgroup(root, &uid).unwrap_err();
    assert!(matches!(&e, CgroupError::Ambiguous { paths, .. } if paths.len() == 2));
    assert_eq!(
        e.to_string(),
        format!(
            "pod {UID} has more than one cgroup: {}, {}",
            root.join(format!("kubepods/pod{UID}")).display(),
            root.join(format!("kubepods.slice/kubepods-pod{UID_}.slice"))
                .display()
        )
    );
}

#[test]
fn missing_root_is_an_error_missing_pod_is_not() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(find(dir.path()), None);
    let uid = PodUid::parse(UID).unwrap();
    let gone = dir.path().join("no-such-root");
    let e = find_pod_cgroup(&gone, &uid).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("read cgroup directory {}: ", gone.display())),
        "{e}"
    );
}

fn dev(major: u32, minor: u32) -> DeviceNumber {
    DeviceNumber { major, minor }
}

fn batch() -> Limits {
    Limits {
        read_bps: Limit::per_sec(209_715_200),
        write_bps: Limit::per_sec(209_715_200),
        read_iops: Limit::per_sec(2000),
        write_iops: Limit::per_sec(2000),
    }
}

/// A cgroup directory with the files the io controller gives it.
fn cgroup(root: &Path, controllers: &str) -> PathBuf {
    let cg = root.join(format!("kubepods/pod{UID}"));
    fs::create_dir_all(&cg).expect("create test cgroup");
    let write = |name: &str, text: &str| fs::write(cg.join(name), text).expect("write test file");
    write("cgroup.controllers", controllers);
    if controllers.split_whitespace().any(|c| c == "io") {
        write("io.max", "");
        write("io.stat", include_str!("fixtures/io.stat"));
    }
    cg
}

#[test]
fn real_fs_writes_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cg = cgroup(dir.path(), "cpu io memory pids\n");
    let fs_ = RealCgroupFs;
    assert!(fs_.io_enabled(&cg).unwrap());

    apply::apply(&fs_, &cg, dev(254, 256), &batch()).unwrap();
    assert_eq!(
        fs::read_to_string(cg.join("io.max")).unwrap(),
        "254:256 rbps=209715200 wbps=209715200 riops=2000 wiops=2000"
    );
    assert_eq!(apply::current(&fs_, &cg, dev(254, 256)).unwrap(), batch());

    apply::reset(&fs_, &cg, dev(254, 256)).unwrap();
    assert_eq!(
        fs::read_to_string(cg.join("io.max")).unwrap(),
        "254:256 rbps=max wbps=max riops=max wiops=max"
    );
    assert_eq!(
        apply::current(&fs_, &cg, dev(254, 256)).unwrap(),
        Limits::UNLIMITED
    );

    let stat = apply::stats(&fs_, &cg, dev(7, 0)).unwrap().unwrap();
    assert_eq!((stat.rios, stat.wios), (256, 8));
}

#[test]
fn real_fs_never_creates_files() {
    let dir = tempfile::tempdir().unwrap();
    let fs_ = RealCgroupFs;
    let line = "7:0 rbps=209715200 wbps=209715200 riops=2000 wiops=2000";

    // A cgroup that is gone.
    let gone = dir.path().join("kubepods/gone");
    let e = apply::apply(&fs_, &gone, dev(7, 0), &batch()).unwrap_err();
    assert!(e.is_not_found());
    assert!(
        e.to_string().starts_with(&format!(
            "write {line:?} to {}: ",
            gone.join("io.max").display()
        )),
        "{e}"
    );
    assert!(!gone.exists());

    // A cgroup without the io controller: no io.max to write.
    let cg = cgroup(dir.path(), "cpu memory\n");
    assert!(!fs_.io_enabled(&cg).unwrap());
    let e = apply::reset(&fs_, &cg, dev(7, 0)).unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(!cg.join("io.max").exists());
    let e = apply::current(&fs_, &cg, dev(7, 0)).unwrap_err();
    assert!(e.is_not_found());
    assert!(
        e.to_string()
            .starts_with(&format!("read {}: ", cg.join("io.max").display())),
        "{e}"
    );
}

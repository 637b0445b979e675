//! The demo's prerequisites: what this host lacks (root, cgroup v2 with the io controller,
//! loop devices, io_uring, a work directory on a disk), each with what would be needed.

#[allow(clippy::wildcard_imports)]
use super::*;

/// nothing is.
pub fn missing(f: &HostFacts) -> Vec<String> {
    let mut out = Vec::new();
    if !f.root {
        out.push(
            "not running as root: the demo attaches loop devices, mounts volumes and creates \
             cgroups (run it as root)"
                .to_owned(),
        );
    }
    let root = f.cgroup_root.display();
    let blkio = if f.blkio_on_v1 {
        "; the io controller is bound to the cgroup v1 `blkio` hierarchy (/proc/cgroups), \
         and a controller can be in only one hierarchy"
    } else {
        ""
    };
    match &f.root_controllers {
        None => {
            let mut m = format!("no cgroup v2 hierarchy at {root} (it has no cgroup.controllers)");
            for (at, controllers) in &f.other_v2_mounts {
                let _ = write!(
                    m,
                    "; cgroup v2 is mounted at {} with controllers [{}] (a hybrid v1/v2 host)",
                    at.display(),
                    controllers.join(" ")
                );
            }
            m.push_str(blkio);
            m.push_str(
                "; needed: cgroup v2 with the io controller, i.e. a host booted with the unified \
                 hierarchy (systemd.unified_cgroup_hierarchy=1, no v1 blkio mount), or \
                 --cgroup-root naming a cgroup v2 mount whose cgroup.controllers lists io",
            );
            out.push(m);
        }
        Some(c) if !c.iter().any(|c| c == "io") => out.push(format!(
            "the cgroup v2 hierarchy at {root} has no io controller (cgroup.controllers: [{}]){blkio}; \
             needed: the io controller in cgroup v2, which writes io.max (a unified-hierarchy \
             host with no v1 blkio mount)",
            c.join(" ")
        )),
        Some(_) => {}
    }
    if !f.loop_control {
        out.push(
            "no /dev/loop-control: the loop driver is not loaded (needed for the loop backend: \
             modprobe loop)"
                .to_owned(),
        );
    }
    if f.io_uring_disabled == Some(2) {
        out.push(
            "io_uring is disabled (kernel.io_uring_disabled = 2); the load generator needs it \
             (sysctl kernel.io_uring_disabled=0)"
                .to_owned(),
        );
    }
    out
}

/// Why the work directory cannot hold the demo's loop images, if it cannot: the priority
/// controllers share the capacity of the disk under the images, so the directory (its
/// filesystem's device `dev`) must be on a block device that `topology` finds (not tmpfs
/// or an overlay).
pub fn work_dir_gap(dir: &Path, dev: DeviceNumber, topology: &Topology) -> Option<String> {
    match topology.physical(dev) {
        Ok(set) if !set.is_empty() => None,
        Ok(_) => Some(format!(
            "the work directory {} ({dev}) has no block device under it",
            dir.display()
        )),
        Err(e) => Some(format!(
            "the work directory {} is on a filesystem with no block device under it ({dev}: \
             {e}; tmpfs or an overlay?); needed: a directory on a disk, since the priority \
             controllers share the capacity of the disk under the loop images (--work-dir DIR)",
            dir.display()
        )),
    }
}

/// [`work_dir_gap`] for the real `dir` under sysfs `sys`.
pub fn work_dir_missing(dir: &Path, sys: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => work_dir_gap(
            dir,
            DeviceNumber::from_rdev(m.dev()),
            &Topology::new(sys.to_owned(), topology::real_device_of()),
        ),
        Ok(_) => Some(format!(
            "the work directory {} is not a directory (--work-dir)",
            dir.display()
        )),
        Err(e) => Some(format!(
            "the work directory {}: {e} (--work-dir)",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            root: true,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            root_controllers: Some(vec!["cpu".into(), "io".into(), "memory".into()]),
            other_v2_mounts: Vec::new(),
            blkio_on_v1: false,
            loop_control: true,
            io_uring_disabled: Some(0),
        }
    }

    #[test]
    fn a_complete_host_misses_nothing() {
        assert!(missing(&facts()).is_empty());
    }

    #[test]
    fn each_missing_prerequisite_is_named_with_what_is_needed() {
        // This repository's CI host: hybrid cgroups, io bound to v1 blkio.
        let hybrid = HostFacts {
            root_controllers: None,
            other_v2_mounts: vec![(PathBuf::from("/sys/fs/cgroup/unified"), vec![])],
            blkio_on_v1: true,
            ..facts()
        };
        let m = missing(&hybrid);
        assert_eq!(m.len(), 1, "{m:?}");
        for part in [
            "no cgroup v2 hierarchy at /sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "blkio",
            "needed:",
        ] {
            assert!(m[0].contains(part), "{part}: {}", m[0]);
        }
        let no_io = HostFacts {
            root_controllers: Some(vec!["cpu".into(), "memory".into()]),
            ..facts()
        };
        let m = missing(&no_io);
        assert!(
            m[0].contains("has no io controller") && m[0].contains("[cpu memory]"),
            "{m:?}"
        );
        let m = missing(&HostFacts {
            root: false,
            loop_control: false,
            io_uring_disabled: Some(2),
            ..facts()
        });
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].contains("root") && m[1].contains("loop") && m[2].contains("io_uring"));
    }

    #[test]
    fn the_work_dir_must_be_on_a_block_device() {
        let sys = std::env::temp_dir().join(format!("iolane-demo-prereq-{}", std::process::id()));
        let disk = sys.join("dev/block/259:0");
        std::fs::create_dir_all(&disk).unwrap();
        std::fs::write(disk.join("uevent"), "DEVNAME=nvme0n1\n").unwrap();
        let topology = Topology::new(sys.clone(), topology::real_device_of());
        let dir = Path::new("/srv/demo");
        assert_eq!(
            work_dir_gap(
                dir,
                DeviceNumber {
                    major: 259,
                    minor: 0
                },
                &topology
            ),
            None
        );
        // tmpfs and overlays have anonymous device numbers, not in /sys/dev/block.
        let gap = work_dir_gap(
            dir,
            DeviceNumber {
                major: 0,
                minor: 42,
            },
            &topology,
        )
        .unwrap();
        assert!(
            gap.contains("/srv/demo") && gap.contains("0:42") && gap.contains("--work-dir"),
            "{gap}"
        );
        let gap = work_dir_missing(&sys.join("absent"), &sys).unwrap();
        assert!(
            gap.contains("absent") && gap.contains("--work-dir"),
            "{gap}"
        );
        std::fs::remove_dir_all(&sys).unwrap();
    }
}

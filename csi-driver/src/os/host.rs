//! What `iolane demo` needs from the host besides the driver's own effects: the facts its
//! prerequisite check is decided on, a pod UID, and the cgroups it makes in kubelet's place.
//!
//! The driver itself never creates or removes a cgroup (kubelet owns pod cgroups). The
//! demo has no kubelet, so it stands in for it: a parent cgroup whose name mentions
//! `kubepods` (so the driver's search accepts it) with `+io` in its `cgroup.subtree_control`,
//! and one `pod<uid>` child per pod (the cgroupfs driver's layout). Every path is under the
//! cgroup root it is given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Error, Os, Result};

/// How long removing a cgroup waits for its last process to be gone (the kernel empties
/// a cgroup asynchronously after its processes exit).
const RMDIR_DEADLINE: Duration = Duration::from_secs(10);
const RMDIR_POLL: Duration = Duration::from_millis(50);

/// The host facts `iolane demo` checks before it creates anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Effective user ID is 0.
    pub root: bool,
    /// The cgroup root the pod cgroups go under (`--cgroup-root`).
    pub cgroup_root: PathBuf,
    /// Controllers available at the cgroup root (`cgroup.controllers`); `None` when the
    /// root is not a cgroup v2 hierarchy (no such file).
    pub root_controllers: Option<Vec<String>>,
    /// cgroup2 mounts elsewhere (a hybrid v1/v2 host mounts it at
    /// `/sys/fs/cgroup/unified`), each with its available controllers.
    pub other_v2_mounts: Vec<(PathBuf, Vec<String>)>,
    /// The io controller (`blkio`) is bound to a cgroup v1 hierarchy (`/proc/cgroups`
    /// lists it with a non-zero hierarchy ID), so cgroup v2 cannot have it.
    pub blkio_on_v1: bool,
    /// `/dev/loop-control` exists (the loop driver is loaded).
    pub loop_control: bool,
    /// `kernel.io_uring_disabled` (0 = allowed, 1 = root and a group only, 2 = off); `None`
    /// on kernels without the setting.
    pub io_uring_disabled: Option<u32>,
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// Whether `/proc/cgroups` text binds `blkio` to a v1 hierarchy.
pub fn blkio_on_v1(proc_cgroups: &str) -> bool {
    proc_cgroups.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 2 && f[0] == "blkio" && f[1] != "0"
    })
}

impl Os {
    /// Reads the facts `iolane demo` decides its prerequisites on. Never fails: what
    /// cannot be read counts as missing.
    pub fn host_facts(&self, cgroup_root: &Path) -> HostFacts {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        let root_controllers = read(cgroup_root.join("cgroup.controllers")).map(|t| words(&t));
        let other_v2_mounts = self
            .mounts()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.fs_type == "cgroup2" && m.mount_point != cgroup_root)
            .map(|m| {
                let c = read(m.mount_point.join("cgroup.controllers")).unwrap_or_default();
                (m.mount_point, words(&c))
            })
            .collect();
        HostFacts {
            root: nix::unistd::geteuid().is_root(),
            cgroup_root: cgroup_root.to_owned(),
            root_controllers,
            other_v2_mounts,
            blkio_on_v1: read(self.roots.proc.join("cgroups")).is_some_and(|t| blkio_on_v1(&t)),
            loop_control: self.roots.dev.join("loop-control").exists(),
            io_uring_disabled: read(self.roots.proc.join("sys/kernel/io_uring_disabled"))
                .and_then(|t| t.trim().parse().ok()),
        }
    }

    /// A fresh random UUID (the kernel's `/proc/sys/kernel/random/uuid`), lowercase.
    pub fn random_uuid(&self) -> Result<String> {
        let path = self.roots.proc.join("sys/kernel/random/uuid");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        Ok(text.trim().to_ascii_lowercase())
    }

    /// Whether `controller` is listed in `<cgroup>/cgroup.subtree_control`.
    pub fn subtree_has(&self, cgroup: &Path, controller: &str) -> Result<bool> {
        let path = cgroup.join("cgroup.subtree_control");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
        Ok(text.split_whitespace().any(|c| c == controller))
    }

    /// Writes `+io` or `-io` (`change`) to `<cgroup>/cgroup.subtree_control`.
    pub fn subtree_control(&self, cgroup: &Path, change: &str) -> Result<()> {
        let path = cgroup.join("cgroup.subtree_control");
        tracing::debug!(path = %path.display(), change, "write cgroup.subtree_control");
        std::fs::write(&path, change).map_err(|e| Error::io("write", &path, e))
    }

    /// Creates the cgroup `dir` (its parent must exist). `Ok(false)` when it existed.
    pub fn make_cgroup(&self, dir: &Path) -> Result<bool> {
        tracing::debug!(path = %dir.display(), "mkdir cgroup");
        match std::fs::create_dir(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io("create cgroup", dir, e)),
        }
    }

    /// Removes the cgroup `dir` (not its children: remove those first), waiting up to
    /// [`RMDIR_DEADLINE`] for processes that just exited to leave it. Gone already is fine.
    pub async fn remove_cgroup(&self, dir: &Path) -> Result<()> {
        let end = Instant::now() + RMDIR_DEADLINE;
        loop {
            tracing::debug!(path = %dir.display(), "rmdir cgroup");
            match std::fs::remove_dir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < end => {
                    tokio::time::sleep(RMDIR_POLL).await;
                }
                Err(e) => return Err(Error::io("remove cgroup", dir, e)),
            }
        }
    }

    /// A fresh private directory `<parent>/<prefix>XXXXXX` (mode 0700).
    pub fn make_temp_dir(&self, parent: &Path, prefix: &str) -> Result<PathBuf> {
        let template = parent.join(format!("{prefix}XXXXXX"));
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| Error::io("create temp dir", &template, std::io::Error::from(e)))?;
        // Mount points are reported resolved; use the same spelling.
        dir.canonicalize()
            .map_err(|e| Error::io("resolve temp dir", &dir, e))
    }

    /// Removes a directory tree made by [`Os::make_temp_dir`]. The caller checks first that
    /// nothing is mounted below it.
    pub fn remove_temp_dir(&self, dir: &Path) -> Result<()> {
        tracing::debug!(path = %dir.display(), "remove temp dir");
        std::fs::remove_dir_all(dir).map_err(|e| Error::io("remove", dir, e))
    }

    /// The text of `<cgroup>/io.max` (the driver reads it through iops-controller; the
    /// demo shows it as the kernel has it).
    pub fn read_io_max(&self, cgroup: &Path) -> Result<String> {
        let path = cgroup.join("io.max");
        std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::Roots;
    use crate::os::command::RecordingRunner;
    use std::sync::Arc;

    #[test]
    fn blkio_binding_is_read_from_proc_cgroups() {
        let hybrid = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\nblkio\t7\t1\t1\nhugetlb\t0\t1\t1\n";
        assert!(blkio_on_v1(hybrid));
        let unified = "#subsys_name\thierarchy\tnum_cgroups\tenabled\nblkio\t0\t90\t1\n";
        assert!(!blkio_on_v1(unified));
        assert!(!blkio_on_v1(""));
    }

    #[tokio::test]
    async fn facts_and_cgroups_on_a_tempdir_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let proc = tmp.path().join("proc");
        let dev = tmp.path().join("dev");
        let cg = tmp.path().join("cgroup");
        for d in [
            &proc,
            &dev,
            &cg,
            &proc.join("self"),
            &proc.join("sys/kernel/random"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(proc.join("self/mountinfo"), "").unwrap();
        std::fs::write(proc.join("cgroups"), "blkio\t0\t1\t1\n").unwrap();
        std::fs::write(
            proc.join("sys/kernel/random/uuid"),
            "0B6E7F9A-3C1D-4E2F-8A9B-1C2D3E4F5A6B\n",
        )
        .unwrap();
        std::fs::write(cg.join("cgroup.controllers"), "cpu io memory\n").unwrap();
        let os = Os::new(
            Arc::new(RecordingRunner::default()),
            Roots {
                proc: proc.clone(),
                sys: tmp.path().join("sys"),
                dev: dev.clone(),
            },
        );
        let f = os.host_facts(&cg);
        assert_eq!(
            f.root_controllers,
            Some(vec!["cpu".into(), "io".into(), "memory".into()])
        );
        assert!(!f.blkio_on_v1 && !f.loop_control && f.io_uring_disabled.is_none());
        std::fs::write(dev.join("loop-control"), "").unwrap();
        assert!(os.host_facts(&cg).loop_control);
        assert_eq!(
            os.random_uuid().unwrap(),
            "0b6e7f9a-3c1d-4e2f-8a9b-1c2d3e4f5a6b"
        );
        let pod = cg.join("kubepods-x");
        assert!(os.make_cgroup(&pod).unwrap());
        assert!(!os.make_cgroup(&pod).unwrap());
        os.remove_cgroup(&pod).await.unwrap();
        assert!(!pod.exists());
        os.remove_cgroup(&pod).await.unwrap();
    }
}

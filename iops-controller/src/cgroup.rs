//! Finding a pod's cgroup v2 directory from its UID, under an injected cgroup root.
//!
//! kubelet names a pod's cgroup after its UID, under its `kubepods` hierarchy:
//!
//! - systemd driver: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`
//!   (`besteffort` likewise; guaranteed pods directly as `kubepods.slice/kubepods-pod<uid>.slice`),
//!   with the UID's `-` written as `_`; with a cgroup root such as `/kubelet` the names
//!   gain a prefix (`kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod<uid>.slice`);
//! - cgroupfs driver: `kubepods/burstable/pod<uid>`, `kubepods/besteffort/pod<uid>`,
//!   `kubepods/pod<uid>`, the UID as is, possibly under a cgroup root.
//!
//! The search walks the tree breadth-first to [`MAX_DEPTH`] levels below the root, never
//! follows symlinks, never descends into a pod's cgroup (its children are containers), and
//! only accepts a match whose path below the root mentions `kubepods`.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How many levels below the cgroup root a pod cgroup may be. Deepest layout seen:
/// `system.slice/docker-<id>.scope/kubelet.slice/kubelet-kubepods.slice/`
/// `kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod<uid>.slice` (6).
pub const MAX_DEPTH: usize = 6;

/// A pod UID as Kubernetes prints it: a UUID, `8-4-4-4-12` lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);

impl PodUid {
    /// Accepts only the UUID shape, so a UID can go into a path or a glob unescaped.
    pub fn parse(s: &str) -> Result<PodUid, CgroupError> {
        if is_uuid(s, b'-') {
            Ok(PodUid(s.to_owned()))
        } else {
            Err(CgroupError::InvalidPodUid(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PodUid {
    type Err = CgroupError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PodUid::parse(s)
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `s` is `8-4-4-4-12` lowercase hex digits joined by `sep`.
fn is_uuid(s: &str, sep: u8) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let b = s.as_bytes();
    if b.len() != 36 {
        return false;
    }
    let mut at = 0;
    for (i, len) in GROUPS.iter().enumerate() {
        if i > 0 {
            if b[at] != sep {
                return false;
            }
            at += 1;
        }
        if !b[at..at + len]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        {
            return false;
        }
        at += len;
    }
    true
}

/// Why the search for a pod cgroup failed (as opposed to finding nothing).
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("pod UID {0:?} is not a UUID (8-4-4-4-12 lowercase hex digits)")]
    InvalidPodUid(String),
    #[error("read cgroup directory {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pod {uid} has more than one cgroup: {}", join(paths))]
    Ambiguous { uid: PodUid, paths: Vec<PathBuf> },
}

fn join(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

/// Whether a directory name is a pod cgroup, and for which UID (in `-` form): the systemd
/// form `<prefix>-pod<uid with _>.slice` or the cgroupfs form `pod<uid>`.
fn pod_of(name: &str) -> Option<String> {
    if let Some(stem) = name.strip_suffix(".slice")
        && let Some((_, uid)) = stem.rsplit_once("-pod")
        && is_uuid(uid, b'_')
    {
        return Some(uid.replace('_', "-"));
    }
    name.strip_prefix("pod")
        .filter(|uid| is_uuid(uid, b'-'))
        .map(str::to_owned)
}

/// Finds the cgroup directory of pod `uid` under `root` (the cgroup v2 mount point, or a
/// test tree). `Ok(None)` when the pod has none (not created yet, or gone).
pub fn find_pod_cgroup(root: &Path, uid: &PodUid) -> Result<Option<PathBuf>, CgroupError> {
    let mut found = Vec::new();
    // (directory, its depth below root, whether its path mentions kubepods)
    let mut queue = VecDeque::from([(root.to_path_buf(), 0usize, false)]);
    while let Some((dir, depth, kube)) = queue.pop_front() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A cgroup removed while we walk: nothing below it any more.
            Err(e) if e.kind() == io::ErrorKind::NotFound && depth > 0 => continue,
            Err(source) => return Err(CgroupError::Read { path: dir, source }),
        };
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CgroupError::Read {
                path: dir.clone(),
                source,
            })?;
            // file_type() does not follow symlinks.
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if !file_type.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            children.push(name.to_owned());
        }
        children.sort();
        for name in children {
            let path = dir.join(&name);
            let kube = kube || name.contains("kubepods");
            match pod_of(&name) {
                Some(pod) if kube && pod == uid.as_str() => found.push(path),
                // Another pod (or ours outside kubepods): its children are containers.
                Some(_) => {}
                None if depth + 1 < MAX_DEPTH => queue.push_back((path, depth + 1, kube)),
                None => {}
            }
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(CgroupError::Ambiguous {
            uid: uid.clone(),
            paths: found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids() {
        for ok in [
            "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11",
            "00000000-0000-0000-0000-000000000000",
            "abcdefab-cdef-abcd-efab-cdefabcdefab",
        ] {
            assert_eq!(PodUid::parse(ok).unwrap().as_str(), ok);
            assert_eq!(ok.parse::<PodUid>().unwrap().to_string(), ok);
        }
        for bad in [
            "",
            "0F5AD7B2-6C4E-4C36-9BD4-3F2F1B0E6A11",
            "0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a11",
            "0f5ad7b26c4e4c369bd43f2f1b0e6a11",
            "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a1",
            "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a111",
            "0f5ad7b2-6c4e-4c36-9bd43-f2f1b0e6a11",
            "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a1g",
            "../../../../etc/passwd-0000-000000000",
            "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a1\n",
            " 0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a1",
            "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a1/",
            "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6aé",
        ] {
            let e = PodUid::parse(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("pod UID {bad:?} is not a UUID (8-4-4-4-12 lowercase hex digits)")
            );
        }
    }

    #[test]
    fn pod_cgroup_names() {
        let uid = "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11";
        let table = [
            (
                "kubepods-burstable-pod0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a11.slice",
                Some(uid),
            ),
            (
                "kubepods-pod0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a11.slice",
                Some(uid),
            ),
            (
                "kubelet-kubepods-besteffort-pod0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a11.slice",
                Some(uid),
            ),
            ("pod0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11", Some(uid)),
            ("kubepods-burstable.slice", None),
            ("kubepods.slice", None),
            ("kubepods", None),
            ("burstable", None),
            ("cri-containerd-0f5ad7b26c4e.scope", None),
            (
                "kubepods-burstable-pod0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a1.slice",
                None,
            ),
            (
                "kubepods-burstable-pod0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a11a.slice",
                None,
            ),
            ("pod0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11a", None),
            ("pod0f5ad7b2_6c4e_4c36_9bd4_3f2f1b0e6a11", None),
            (
                "kubepods-pod0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11.slice",
                None,
            ),
        ];
        for (name, want) in table {
            assert_eq!(pod_of(name).as_deref(), want, "{name}");
        }
    }
}

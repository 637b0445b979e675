//! Host inspection and clean-up: the mount table (parsed by the driver's own
//! `csi_driver::os::mountinfo`), loop devices backed by files under a directory, directory
//! listings, and unmounting and detaching what a test left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

pub use csi_driver::os::mountinfo::MountEntry;

use crate::command;

/// The mount table of this process's mount namespace, in mount order.
pub fn mounts() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    csi_driver::os::mountinfo::parse(&text).expect("parse /proc/self/mountinfo")
}

/// Mounts at or below `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Vec<MountEntry> {
    mounts()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect()
}

/// The topmost mount at exactly `path`.
pub fn mount_at(path: impl AsRef<Path>) -> Option<MountEntry> {
    let path = path.as_ref();
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// Loop devices (`/dev/loopN`) whose backing file lies under `dir`, including backing
/// files that were deleted while attached.
pub fn loops_for(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let text = fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let text = text.trim_end_matches('\n');
            let file = text.strip_suffix(" (deleted)").unwrap_or(text);
            Path::new(file)
                .starts_with(dir)
                .then(|| Path::new("/dev").join(&name))
        })
        .collect();
    out.sort();
    out
}

/// Every entry (files, directories, sockets, ...) below `dir`, recursively, sorted;
/// symbolic links are listed, not followed. Empty if `dir` does not exist.
pub fn entries_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Every non-directory entry below `dir`, recursively, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    entries_under(dir)
        .into_iter()
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
        .collect()
}

/// Removes what a test left under `root`: unmounts (lazily, deepest first) everything
/// mounted below it and detaches loop devices backed by files below it. Returns what it
/// did, for the log.
pub fn cleanup(root: &Path) -> Vec<String> {
    let mut done = Vec::new();
    for _ in 0..16 {
        let left = mounts_under(root);
        if left.is_empty() {
            break;
        }
        for m in left.iter().rev() {
            match nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => done.push(format!("unmounted {}", m.mount_point.display())),
                Err(e) => done.push(format!("umount {} failed: {e}", m.mount_point.display())),
            }
        }
    }
    done.extend(loops_for(root).iter().map(|dev| detach_loop(dev)));
    done
}

/// Unmounts whatever shows one of `devices` anywhere (a filesystem on it, or a bind of its
/// device node), deepest first; returns what it did.
pub(crate) fn unmount_devices(devices: &[PathBuf]) -> Vec<String> {
    let mut done = Vec::new();
    let numbers: Vec<(u32, u32)> = devices
        .iter()
        .filter_map(|d| {
            use std::os::unix::fs::MetadataExt;
            let rdev = fs::metadata(d).ok()?.rdev();
            Some((
                nix::sys::stat::major(rdev) as u32,
                nix::sys::stat::minor(rdev) as u32,
            ))
        })
        .collect();
    let names: Vec<PathBuf> = devices
        .iter()
        .filter_map(|d| d.file_name().map(|n| Path::new("/").join(n)))
        .collect();
    for m in mounts().iter().rev() {
        let on_device = numbers.contains(&(m.major, m.minor));
        let device_bind = m.fs_type == "devtmpfs" && names.contains(&m.root);
        if on_device || device_bind {
            match nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => done.push(format!("unmounted {}", m.mount_point.display())),
                Err(e) => done.push(format!("umount {} failed: {e}", m.mount_point.display())),
            }
        }
    }
    done
}

/// Detaches one loop device; says whether it could.
pub(crate) fn detach_loop(dev: &Path) -> String {
    let ok = command("losetup")
        .arg("--detach")
        .arg(dev)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    format!(
        "{} {}",
        if ok { "detached" } else { "could not detach" },
        dev.display()
    )
}

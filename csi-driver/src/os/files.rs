//! Plain file-system effects of the node calls: creating and removing the directories and
//! files they mount on, and reading which device a path exposes. No process, no mount.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use iops_controller::DeviceNumber;

use super::{Error, Result};

/// Whether `path` is a symbolic link (a missing path is not).
pub fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|md| md.file_type().is_symlink())
}

/// Creates a directory unless it exists; returns whether it created it.
pub fn ensure_dir(path: &Path) -> Result<bool> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(Error::io("create directory", path, e)),
    }
}

/// Creates an empty file unless one exists; returns whether it created it.
pub fn ensure_file(path: &Path) -> Result<bool> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_file() => Ok(false),
        Err(e) => Err(Error::io("create file", path, e)),
    }
}

/// Removes what NodePublish created at `path` (an empty directory or a file), if anything.
pub fn remove_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            std::fs::remove_dir(path).map_err(|e| Error::io("remove directory", path, e))
        }
        Ok(_) => std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Removes `path` if it is a regular file (not a symlink, not a directory).
pub fn remove_regular_file(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        std::fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
    }
    Ok(())
}

/// The device a path exposes: the node's own number for a device node (a bind-mounted
/// block device), the device of the filesystem holding it otherwise.
pub fn exposed_device(path: &Path) -> Result<DeviceNumber> {
    let md = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok(DeviceNumber::from_rdev(
        if md.file_type().is_block_device() {
            md.rdev()
        } else {
            md.dev()
        },
    ))
}

/// The device number of the block device node at `path`; `None` for anything else.
pub fn block_device_at(path: &Path) -> Result<Option<DeviceNumber>> {
    let md = std::fs::metadata(path).map_err(|e| Error::io("stat", path, e))?;
    Ok(md
        .file_type()
        .is_block_device()
        .then(|| DeviceNumber::from_rdev(md.rdev())))
}

//! The node calls' seam to the mount table and mount(2): [`Mounter`], which [`Os`]
//! implements for real and [`FakeMounter`] (tests) with an in-memory mount table, so the
//! node side's idempotency is tested without root.

use std::path::Path;

use iops_controller::DeviceNumber;

use super::{FsType, MountEntry, Os, Result, files};

/// What NodeStage/NodePublish and their undoing need of mounts and device numbers.
#[async_trait::async_trait]
pub trait Mounter: Send + Sync + std::fmt::Debug {
    /// The mount table, in mount order.
    fn mounts(&self) -> Result<Vec<MountEntry>>;
    /// Mounts the filesystem on `device` at `target` with `options`.
    async fn mount_fs(
        &self,
        device: &Path,
        target: &Path,
        fs: FsType,
        options: &[String],
    ) -> Result<()>;
    /// Bind-mounts `source` (a directory or a device node) at `target`.
    async fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<()>;
    /// Unmounts the topmost mount at `target`.
    async fn unmount(&self, target: &Path) -> Result<()>;
    /// The device number of a block device node.
    fn device_number(&self, device: &Path) -> Result<DeviceNumber>;
    /// The device a path exposes: a device node's own number, else its filesystem's.
    fn exposed_device(&self, path: &Path) -> Result<DeviceNumber>;

    /// The topmost mount at exactly `path`, if any.
    fn mount_at(&self, path: &Path) -> Result<Option<MountEntry>> {
        Ok(self
            .mounts()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == path))
    }

    /// [`Mounter::mount_at`] for each of `paths`, in their order, from one reading of the
    /// mount table.
    fn mounts_at(&self, paths: &[&Path]) -> Result<Vec<Option<MountEntry>>> {
        let table = self.mounts()?;
        Ok(paths
            .iter()
            .map(|p| table.iter().rev().find(|m| m.mount_point == *p).cloned())
            .collect())
    }
}

#[async_trait::async_trait]
impl Mounter for Os {
    fn mounts(&self) -> Result<Vec<MountEntry>> {
        Os::mounts(self)
    }
    async fn mount_fs(
        &self,
        device: &Path,
        target: &Path,
        fs: FsType,
        options: &[String],
    ) -> Result<()> {
        Os::mount_fs(self, device, target, fs, options).await
    }
    async fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        Os::bind_mount(self, source, target, read_only).await
    }
    async fn unmount(&self, target: &Path) -> Result<()> {
        Os::unmount(self, target).await
    }
    fn device_number(&self, device: &Path) -> Result<DeviceNumber> {
        Os::device_number(self, device)
    }
    fn exposed_device(&self, path: &Path) -> Result<DeviceNumber> {
        files::exposed_device(path)
    }
    fn mount_at(&self, path: &Path) -> Result<Option<MountEntry>> {
        Os::mount_at(self, path)
    }
    fn mounts_at(&self, paths: &[&Path]) -> Result<Vec<Option<MountEntry>>> {
        Os::mounts_at(self, paths)
    }
}

#[cfg(test)]
pub use fake::FakeMounter;

#[cfg(test)]
mod fake {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use iops_controller::DeviceNumber;

    use super::Mounter;
    use crate::os::{Error, FsType, MountEntry, Result};

    /// An in-memory mount table that records every mount and unmount. Device numbers come
    /// from [`FakeMounter::device`]; a path nothing is mounted at exposes
    /// [`FakeMounter::HOST`], the device of the filesystem it lives on.
    #[derive(Debug, Default)]
    pub struct FakeMounter {
        table: Mutex<Vec<MountEntry>>,
        devices: Mutex<BTreeMap<PathBuf, DeviceNumber>>,
        calls: Mutex<Vec<String>>,
        /// Every unmount fails (EBUSY) while set.
        refuse_unmounts: Mutex<bool>,
    }

    impl FakeMounter {
        /// The device of the filesystem unmounted paths live on.
        pub const HOST: DeviceNumber = DeviceNumber { major: 8, minor: 1 };

        /// Declares `path` a block device node with number `n`.
        pub fn device(&self, path: &Path, n: DeviceNumber) {
            self.devices.lock().unwrap().insert(path.to_owned(), n);
        }

        /// Adds a mount behind the driver's back (another driver, a half-done call).
        pub fn add(&self, device: DeviceNumber, target: &Path, fs_type: &str, options: &str) {
            let mut t = self.table.lock().unwrap();
            let id = u32::try_from(t.len()).unwrap() + 100;
            t.push(MountEntry {
                mount_id: id,
                parent_id: 1,
                major: device.major,
                minor: device.minor,
                root: PathBuf::from("/"),
                mount_point: target.to_owned(),
                options: options.to_owned(),
                fs_type: fs_type.to_owned(),
                source: format!("/dev/fake{}:{}", device.major, device.minor),
                super_options: "rw".to_owned(),
            });
        }

        /// Makes every following unmount fail (a busy mount), or succeed again.
        pub fn refuse_unmounts(&self, refuse: bool) {
            *self.refuse_unmounts.lock().unwrap() = refuse;
        }

        /// The topmost mount at `path`; panics if there is none.
        pub fn mount_at_path(&self, path: &Path) -> MountEntry {
            self.mount_at(path)
                .unwrap()
                .unwrap_or_else(|| panic!("nothing mounted at {}", path.display()))
        }

        /// Every mount and unmount so far (`mount <target>`, `bind <target>`,
        /// `unmount <target>`).
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn record(&self, what: &str, target: &Path) {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{what} {}", target.display()));
        }
    }

    fn ro(read_only: bool) -> &'static str {
        if read_only { "ro" } else { "rw" }
    }

    #[async_trait::async_trait]
    impl Mounter for FakeMounter {
        fn mounts(&self) -> Result<Vec<MountEntry>> {
            Ok(self.table.lock().unwrap().clone())
        }
        async fn mount_fs(
            &self,
            device: &Path,
            target: &Path,
            fs: FsType,
            options: &[String],
        ) -> Result<()> {
            let n = self.device_number(device)?;
            let read_only = options.iter().any(|o| o == "ro");
            self.add(n, target, fs.as_str(), ro(read_only));
            self.record("mount", target);
            Ok(())
        }
        async fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
            let (n, fs_type) = match self.device_number(source) {
                Ok(n) => (n, "devtmpfs".to_owned()),
                Err(_) => {
                    let m = self.mount_at(source)?.ok_or_else(|| {
                        Error::io("bind", source, std::io::Error::other("nothing mounted"))
                    })?;
                    (
                        DeviceNumber {
                            major: m.major,
                            minor: m.minor,
                        },
                        m.fs_type,
                    )
                }
            };
            self.add(n, target, &fs_type, ro(read_only));
            self.record("bind", target);
            Ok(())
        }
        async fn unmount(&self, target: &Path) -> Result<()> {
            if *self.refuse_unmounts.lock().unwrap() {
                return Err(Error::io("unmount", target, std::io::Error::other("EBUSY")));
            }
            let mut t = self.table.lock().unwrap();
            let i = t
                .iter()
                .rposition(|m| m.mount_point == target)
                .ok_or_else(|| Error::io("unmount", target, std::io::Error::other("EINVAL")))?;
            t.remove(i);
            drop(t);
            self.record("unmount", target);
            Ok(())
        }
        fn device_number(&self, device: &Path) -> Result<DeviceNumber> {
            self.devices
                .lock()
                .unwrap()
                .get(device)
                .copied()
                .ok_or_else(|| {
                    Error::io("stat", device, std::io::Error::other("not a block device"))
                })
        }
        fn exposed_device(&self, path: &Path) -> Result<DeviceNumber> {
            Ok(self.mount_at(path)?.map_or(Self::HOST, |m| DeviceNumber {
                major: m.major,
                minor: m.minor,
            }))
        }
    }
}

//! Mounting: the mount table (`/proc/self/mountinfo`), filesystem and bind mounts, and
//! unmounting.

use std::path::Path;

use super::{Cmd, Error, FsType, MOUNT_TIMEOUT, MountEntry, Os, Result, blocking, mountinfo};

impl Os {
    /// The mount table of this process's mount namespace.
    pub fn mounts(&self) -> Result<Vec<MountEntry>> {
        mountinfo::parse(&self.mount_table()?)
    }

    /// The topmost mount at exactly `path`, if any.
    pub fn mount_at(&self, path: &Path) -> Result<Option<MountEntry>> {
        let text = self.mount_table()?;
        mountinfo::topmost_at(&text, path)
    }

    /// [`Os::mount_at`] for each of `paths`, in their order, from one reading of the table.
    pub fn mounts_at(&self, paths: &[&Path]) -> Result<Vec<Option<MountEntry>>> {
        let text = self.mount_table()?;
        paths
            .iter()
            .map(|p| mountinfo::topmost_at(&text, p))
            .collect()
    }

    /// The text of this process's mountinfo.
    fn mount_table(&self) -> Result<String> {
        let table = self.roots.proc.join("self/mountinfo");
        std::fs::read_to_string(&table).map_err(|e| Error::io("read", &table, e))
    }

    /// Mounts a filesystem of `fs` from `device` on `target` with `options`.
    pub async fn mount_fs(
        &self,
        device: &Path,
        target: &Path,
        fs: FsType,
        options: &[String],
    ) -> Result<()> {
        let mut cmd = Cmd::new("mount", MOUNT_TIMEOUT).arg("-t").arg(fs.as_str());
        if !options.is_empty() {
            cmd = cmd.arg("-o").arg(options.join(","));
        }
        self.run_ok(cmd.arg("--").arg(device).arg(target)).await?;
        Ok(())
    }

    /// Bind-mounts `source` on `target`, then makes the bind read-only if asked. Done with
    /// mount(2) in-process (what `mount --bind` and `mount -o remount,bind,ro` do), on the
    /// blocking pool: no process per publish.
    pub async fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<()> {
        use nix::mount::{MsFlags, mount};
        let (src, dst) = (source.to_owned(), target.to_owned());
        tracing::debug!(source = %source.display(), target = %target.display(), read_only, "mount(2) MS_BIND");
        blocking(move || {
            mount(
                Some(src.as_path()),
                dst.as_path(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| mount_error("bind-mount", &src, &dst, e))?;
            if !read_only {
                return Ok(());
            }
            // A bind remount sets the mount's flags to exactly those given: carry over the
            // ones the bind inherited (nosuid, nodev, ...), as mount(8) does.
            let remount = bind_flags(&dst)
                .map(|kept| kept | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY)
                .and_then(|flags| {
                    mount(
                        None::<&Path>,
                        dst.as_path(),
                        None::<&str>,
                        flags,
                        None::<&str>,
                    )
                    .map_err(|e| mount_error("remount read-only", &src, &dst, e))
                });
            if let Err(e) = remount {
                // Never leave a writable bind behind a read-only request.
                if let Err(undo) = nix::mount::umount2(dst.as_path(), nix::mount::MntFlags::empty()) {
                    tracing::warn!(target = %dst.display(), error = %undo, "could not unmount the writable bind after a failed read-only remount");
                    return Err(Error::io(
                        "unmount the writable bind after a failed read-only remount",
                        &dst,
                        std::io::Error::from(undo),
                    ));
                }
                return Err(e);
            }
            Ok(())
        })
        .await
    }

    /// Unmounts the topmost mount at `target` (umount(2) in-process, on the blocking pool:
    /// the last unmount of a filesystem writes its dirty data back).
    pub async fn unmount(&self, target: &Path) -> Result<()> {
        let dst = target.to_owned();
        tracing::debug!(target = %target.display(), "umount(2)");
        blocking(move || {
            nix::mount::umount2(dst.as_path(), nix::mount::MntFlags::empty())
                .map_err(|e| Error::io("unmount", &dst, std::io::Error::from(e)))
        })
        .await
    }
}

fn mount_error(what: &'static str, source: &Path, target: &Path, e: nix::errno::Errno) -> Error {
    Error::io(
        what,
        target,
        std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("from {}: {e}", source.display()),
        ),
    )
}

/// The per-mount flags of the mount at `path` that a bind remount must repeat.
fn bind_flags(path: &Path) -> Result<nix::mount::MsFlags> {
    use nix::mount::MsFlags;
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| Error::io("statvfs", path, std::io::Error::from(e)))?;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (have, set) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(have) {
            out |= set;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::os::{Roots, command::RecordingRunner};

    /// Kubelet's SELinux label reaches mount(8) inside the one `-o` argument with its
    /// quotes intact: mount(8) splits at commas outside quotes only, so the label's MCS
    /// comma stays in the option.
    #[tokio::test]
    async fn selinux_context_reaches_mount_quoted_in_one_argument() {
        let runner = Arc::new(RecordingRunner::default());
        let os = Os::new(runner.clone(), Roots::default());
        let options = crate::validate::mount_flags(&[
            "noatime".to_owned(),
            r#"context="system_u:object_r:container_file_t:s0:c15,c25""#.to_owned(),
            "ro".to_owned(),
        ])
        .unwrap();
        os.mount_fs(
            Path::new("/dev/loop7"),
            Path::new("/stage/v1"),
            FsType::Ext4,
            &options,
        )
        .await
        .unwrap();
        assert_eq!(
            runner.calls(),
            [
                r#"mount -t ext4 -o noatime,context="system_u:object_r:container_file_t:s0:c15,c25",ro -- /dev/loop7 /stage/v1"#
            ]
        );
    }
}

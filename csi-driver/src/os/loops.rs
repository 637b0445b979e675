//! Loop devices: finding the ones backed by a file (through `/sys/block/loop*`),
//! attaching, detaching and refreshing their size.

use std::path::{Path, PathBuf};

use super::{Cmd, Error, LoopDevice, Os, Result, SHORT_TIMEOUT};

impl Os {
    /// Every loop device whose backing file is `file`, found through `/sys/block/loop*`,
    /// in name order.
    pub fn loops_for_file(&self, file: &Path) -> Result<Vec<LoopDevice>> {
        let block = self.roots.sys.join("block");
        let entries = match std::fs::read_dir(&block) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("read directory", &block, e)),
        };
        let mut found: Vec<LoopDevice> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
                continue;
            };
            if Path::new(text.trim_end_matches('\n')) != file {
                continue;
            }
            let read_only =
                std::fs::read_to_string(entry.path().join("ro")).is_ok_and(|t| t.trim() == "1");
            found.push(LoopDevice {
                path: self.roots.dev.join(&name),
                read_only,
            });
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// The first writable loop device backed by `file`.
    pub fn loop_for_file(&self, file: &Path) -> Result<Option<PathBuf>> {
        Ok(self
            .loops_for_file(file)?
            .into_iter()
            .find(|l| !l.read_only)
            .map(|l| l.path))
    }

    /// Attaches `file` to a free loop device (read-only if asked) and returns its path.
    pub async fn loop_attach(&self, file: &Path, read_only: bool) -> Result<PathBuf> {
        let mut cmd = Cmd::new("losetup", SHORT_TIMEOUT)
            .arg("--find")
            .arg("--show");
        if read_only {
            cmd = cmd.arg("--read-only");
        }
        let out = self.run_ok(cmd.arg("--").arg(file)).await?;
        let dev = out.stdout.trim();
        let name = dev.strip_prefix("/dev/").unwrap_or(dev);
        if !name.starts_with("loop") || name.contains('/') {
            return Err(Error::Parse {
                what: "losetup --find --show",
                output: out.stdout,
            });
        }
        Ok(self.roots.dev.join(name))
    }

    /// Detaches a loop device (the kernel defers it while the device is still open).
    /// A device that is no longer bound to any file when `losetup` fails (a deferred
    /// detach that completed between the lookup and this call: `losetup` then answers
    /// ENXIO) counts as detached, so the caller's retry is not needed.
    pub async fn loop_detach(&self, device: &Path) -> Result<()> {
        match self
            .run_ok(
                Cmd::new("losetup", SHORT_TIMEOUT)
                    .arg("--detach")
                    .arg(device),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(_) if !self.loop_bound(device) => {
                tracing::debug!(device = %device.display(), "loop device already detached");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the loop device `device` is bound to a backing file now (its
    /// `/sys/block/loopN/loop` directory exists only while it is).
    fn loop_bound(&self, device: &Path) -> bool {
        device.file_name().is_some_and(|name| {
            self.roots
                .sys
                .join("block")
                .join(name)
                .join("loop/backing_file")
                .exists()
        })
    }

    /// Makes a loop device pick up its backing file's new size.
    pub async fn loop_refresh_size(&self, device: &Path) -> Result<()> {
        self.run_ok(
            Cmd::new("losetup", SHORT_TIMEOUT)
                .arg("--set-capacity")
                .arg(device),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::{Roots, command};
    use std::sync::Arc;

    #[test]
    fn loop_lookup_on_fake_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        for (n, file, ro) in [
            ("loop0", "/a/one.img", "0"),
            ("loop7", "/a/two.img (deleted)", "0"),
            ("loop3", "/a/two.img", "0"),
            ("loop2", "/a/two.img", "1"),
        ] {
            let d = sys.join("block").join(n).join("loop");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("backing_file"), format!("{file}\n")).unwrap();
            std::fs::write(sys.join("block").join(n).join("ro"), format!("{ro}\n")).unwrap();
        }
        std::fs::create_dir_all(sys.join("block/nvme0n1")).unwrap();
        let roots = Roots {
            proc: dir.path().join("proc"),
            sys,
            dev: PathBuf::from("/dev"),
        };
        let os = Os::new(Arc::new(command::RecordingRunner::default()), roots);
        assert_eq!(
            os.loop_for_file(Path::new("/a/two.img")).unwrap(),
            Some(PathBuf::from("/dev/loop3"))
        );
        assert_eq!(os.loop_for_file(Path::new("/a/none.img")).unwrap(), None);
        let all = os.loops_for_file(Path::new("/a/two.img")).unwrap();
        assert_eq!(
            all,
            vec![
                LoopDevice {
                    path: PathBuf::from("/dev/loop2"),
                    read_only: true
                },
                LoopDevice {
                    path: PathBuf::from("/dev/loop3"),
                    read_only: false
                },
            ]
        );
    }

    /// A failed `losetup --detach` of a device no longer bound to a file (its deferred
    /// detach finished first) is success; of a device still bound, the error.
    #[tokio::test]
    async fn detach_of_an_unbound_device_is_success_and_of_a_bound_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(sys.join("block/loop4/loop")).unwrap();
        std::fs::write(sys.join("block/loop4/loop/backing_file"), "/a/b.img\n").unwrap();
        std::fs::create_dir_all(sys.join("block/loop5")).unwrap();
        let runner = Arc::new(command::RecordingRunner::default());
        let enxio = || command::Output {
            status: Some(1),
            stdout: String::new(),
            stderr: "losetup: detach failed: No such device or address\n".to_owned(),
        };
        runner.answer("losetup --detach /dev/loop5", enxio());
        runner.answer("losetup --detach /dev/loop4", enxio());
        let roots = Roots {
            proc: dir.path().join("proc"),
            sys,
            dev: PathBuf::from("/dev"),
        };
        let os = Os::new(runner.clone(), roots);
        os.loop_detach(Path::new("/dev/loop5")).await.unwrap();
        let err = os.loop_detach(Path::new("/dev/loop4")).await.unwrap_err();
        assert!(err.to_string().contains("losetup"), "{err}");
        assert_eq!(runner.calls().len(), 2);
    }
}

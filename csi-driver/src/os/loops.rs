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
            let detaching = std::fs::read_to_string(entry.path().join("loop/autoclear"))
                .is_ok_and(|t| t.trim() == "1");
            found.push(LoopDevice {
                path: self.roots.dev.join(&name),
                read_only,
                detaching,
            });
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// The first writable loop device backed by `file` that is not detaching (one that
    /// is would vanish under a mount: an unstage whose detach was deferred by a reader,
    /// then a stage whose own probe is the last close).
    pub fn loop_for_file(&self, file: &Path) -> Result<Option<PathBuf>> {
        Ok(self
            .loops_for_file(file)?
            .into_iter()
            .find(|l| !l.read_only && !l.detaching)
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
    pub async fn loop_detach(&self, device: &Path) -> Result<()> {
        self.run_ok(
            Cmd::new("losetup", SHORT_TIMEOUT)
                .arg("--detach")
                .arg(device),
        )
        .await?;
        Ok(())
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
        for (n, file, ro, autoclear) in [
            ("loop0", "/a/one.img", "0", "0"),
            ("loop7", "/a/two.img (deleted)", "0", "0"),
            ("loop3", "/a/two.img", "0", "0"),
            ("loop2", "/a/two.img", "1", "0"),
            // Detaching (deferred): listed, never chosen for staging.
            ("loop1", "/a/two.img", "0", "1"),
        ] {
            let d = sys.join("block").join(n).join("loop");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("backing_file"), format!("{file}\n")).unwrap();
            std::fs::write(d.join("autoclear"), format!("{autoclear}\n")).unwrap();
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
                    path: PathBuf::from("/dev/loop1"),
                    read_only: false,
                    detaching: true
                },
                LoopDevice {
                    path: PathBuf::from("/dev/loop2"),
                    read_only: true,
                    detaching: false
                },
                LoopDevice {
                    path: PathBuf::from("/dev/loop3"),
                    read_only: false,
                    detaching: false
                },
            ]
        );
    }
}

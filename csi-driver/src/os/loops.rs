//! Loop devices: finding the ones backed by a file (through `/sys/block/loop*`),
//! attaching, detaching and refreshing their size.

use std::path::{Path, PathBuf};

use super::{Cmd, Error, LoopDevice, Os, Result, SHORT_TIMEOUT, blocking};

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
            // The flags only of the devices of `file`: a scan reads one file per device.
            // The backing file is read again after the flags, so the flags are of a
            // binding to `file` (not of one that ended, or of the next one).
            if self.backing_file(&name).is_some_and(|b| b == file) {
                let device = self.loop_device(&name);
                if self.backing_file(&name).is_some_and(|b| b == file) {
                    found.push(device);
                }
            }
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }

    /// The backing file and flags of loop device `name` (`loopN`) as sysfs shows them
    /// now; `None` if it is not a loop device or is bound to no file.
    fn loop_state(&self, name: &str) -> Option<(PathBuf, LoopDevice)> {
        let backing = self.backing_file(name)?;
        Some((backing, self.loop_device(name)))
    }

    /// The backing file of loop device `name` (`loopN`); `None` if it is not a loop device
    /// or is bound to no file.
    fn backing_file(&self, name: &str) -> Option<PathBuf> {
        if !name.starts_with("loop") || name.contains('/') {
            return None;
        }
        let path = self
            .roots
            .sys
            .join("block")
            .join(name)
            .join("loop/backing_file");
        let text = std::fs::read_to_string(path).ok()?;
        Some(PathBuf::from(text.trim_end_matches('\n')))
    }

    /// Loop device `name` with its flags as sysfs shows them now. A device whose
    /// `autoclear` cannot be read counts as detaching: the kernel removes the `loop/`
    /// directory part-way through unbinding a device, so a device read just then must not
    /// pass for a usable one.
    fn loop_device(&self, name: &str) -> LoopDevice {
        let dir = self.roots.sys.join("block").join(name);
        let read_only = std::fs::read_to_string(dir.join("ro")).is_ok_and(|t| t.trim() == "1");
        let detaching = match std::fs::read_to_string(dir.join("loop/autoclear")) {
            Ok(t) => t.trim() == "1",
            Err(_) => true,
        };
        LoopDevice {
            path: self.roots.dev.join(name),
            read_only,
            detaching,
        }
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

    /// Detaches `device` if it is still bound to `file` and not detaching already;
    /// returns whether it asked the kernel to. The kernel defers a detach while the device
    /// is open and then releases it at the last close.
    ///
    /// The device is held open from the check to the detach, so the device detached is
    /// the one checked: a loop device is unbound only at its last close, and only an
    /// unbound one can be bound to another file. By path alone, a device listed as this
    /// file's could finish a deferred detach, be taken by another volume's `losetup
    /// --find`, and then be detached under that volume's staging (seen in the kill -9
    /// and cancellation campaigns: mkfs on a device of size zero, a staged volume whose
    /// only device was detaching, NodePublish answering "not staged"). A device already
    /// detaching is left alone: asking again changes nothing, and by the time `losetup`
    /// ran it could be another volume's. A device that is gone (cannot be opened, or is
    /// no longer bound when `losetup` fails) counts as detached.
    pub async fn loop_detach(&self, device: &Path, file: &Path) -> Result<bool> {
        let Some(name) = device
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
        else {
            return Err(Error::Parse {
                what: "loop device path",
                output: device.display().to_string(),
            });
        };
        let path = device.to_owned();
        let held = blocking(move || match std::fs::File::open(&path) {
            Ok(f) => Ok(Some(f)),
            // Unbinding (ENXIO) or no node: not this file's any more.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::io("open", &path, e)),
        })
        .await?;
        let Some(held) = held else {
            tracing::debug!(device = %device.display(), file = %file.display(), "loop device already gone");
            return Ok(false);
        };
        let detached = match self.loop_state(&name) {
            Some((backing, now)) if backing == file && !now.detaching => {
                let run = self
                    .run_ok(
                        Cmd::new("losetup", SHORT_TIMEOUT)
                            .arg("--detach")
                            .arg(device),
                    )
                    .await;
                match run {
                    Ok(_) => Ok(true),
                    Err(_) if !self.loop_bound(device) => {
                        tracing::debug!(device = %device.display(), "loop device already detached");
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
            Some((backing, now)) if backing == file => {
                tracing::debug!(device = %device.display(), file = %file.display(), read_only = now.read_only, "loop device already detaching");
                Ok(false)
            }
            Some((backing, _)) => {
                tracing::info!(device = %device.display(), file = %file.display(), now = %backing.display(), "loop device is bound to another file now; left alone");
                Ok(false)
            }
            None => {
                tracing::debug!(device = %device.display(), file = %file.display(), "loop device no longer bound");
                Ok(false)
            }
        };
        // The last close of a detached device releases it in the kernel: off the workers.
        blocking(move || {
            drop(held);
            Ok(())
        })
        .await?;
        detached
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
        for (n, file, ro, autoclear) in [
            ("loop0", "/a/one.img", "0", "0"),
            ("loop7", "/a/two.img (deleted)", "0", "0"),
            ("loop3", "/a/two.img", "0", "0"),
            ("loop2", "/a/two.img", "1", "0"),
            // Detaching (deferred): listed, never chosen for staging.
            ("loop1", "/a/two.img", "0", "1"),
            // Caught part-way through unbinding (its flags are gone, `-`): detaching too,
            // though it sorts before the usable one.
            ("loop10", "/a/two.img", "0", "-"),
        ] {
            let d = sys.join("block").join(n).join("loop");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("backing_file"), format!("{file}\n")).unwrap();
            if autoclear != "-" {
                std::fs::write(d.join("autoclear"), format!("{autoclear}\n")).unwrap();
            }
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
                    path: PathBuf::from("/dev/loop10"),
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

    /// A fake sysfs and /dev (regular files stand for the device nodes) with `devices`:
    /// (name, backing file, autoclear).
    fn fake(dir: &Path, devices: &[(&str, &str, &str)]) -> (Os, Arc<command::RecordingRunner>) {
        let sys = dir.join("sys");
        let dev = dir.join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        for (n, file, autoclear) in devices {
            let d = sys.join("block").join(n).join("loop");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("backing_file"), format!("{file}\n")).unwrap();
            std::fs::write(d.join("autoclear"), format!("{autoclear}\n")).unwrap();
            std::fs::write(dev.join(n), b"").unwrap();
        }
        let runner = Arc::new(command::RecordingRunner::default());
        let roots = Roots {
            proc: dir.join("proc"),
            sys,
            dev,
        };
        (Os::new(runner.clone(), roots), runner)
    }

    /// Only a device still bound to the file and not detaching is detached: a path that
    /// now names another file's device, an unbound one, one already detaching or a
    /// missing node runs no `losetup`.
    #[tokio::test]
    async fn detach_runs_losetup_only_for_a_device_still_bound_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (os, runner) = fake(
            dir.path(),
            &[
                ("loop1", "/a/b.img", "0"),
                ("loop2", "/a/other.img", "0"),
                ("loop3", "/a/b.img", "1"),
            ],
        );
        std::fs::write(dir.path().join("dev/loop4"), b"").unwrap();
        let dev = dir.path().join("dev");
        let file = Path::new("/a/b.img");
        assert!(!os.loop_detach(&dev.join("loop2"), file).await.unwrap());
        assert!(!os.loop_detach(&dev.join("loop3"), file).await.unwrap());
        assert!(!os.loop_detach(&dev.join("loop4"), file).await.unwrap());
        assert!(!os.loop_detach(&dev.join("loop9"), file).await.unwrap());
        assert!(runner.calls().is_empty(), "{:?}", runner.calls());
        assert!(os.loop_detach(&dev.join("loop1"), file).await.unwrap());
        assert_eq!(
            runner.calls(),
            vec![format!("losetup --detach {}", dev.join("loop1").display())]
        );
    }

    /// A failed `losetup --detach` of a device still bound to the file is an error.
    #[tokio::test]
    async fn a_failed_detach_of_a_bound_device_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (os, runner) = fake(dir.path(), &[("loop4", "/a/b.img", "0")]);
        let dev = dir.path().join("dev/loop4");
        runner.answer(
            &format!("losetup --detach {}", dev.display()),
            command::Output {
                status: Some(1),
                stdout: String::new(),
                stderr: "losetup: detach failed: Device or resource busy\n".to_owned(),
            },
        );
        let err = os
            .loop_detach(&dev, Path::new("/a/b.img"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("losetup"), "{err}");
        assert_eq!(runner.calls().len(), 1);
    }
}

//! Writing and reading a pod cgroup's IO files, behind a narrow trait.
//!
//! [`CgroupFs`] is the only place this crate touches cgroupfs. [`RealCgroupFs`] opens the
//! existing `<cgroup>/io.max` for writing (never creating it, never creating or removing a
//! cgroup) and writes one line; [`FakeCgroupFs`] keeps `io.max` tables in memory the way
//! the kernel does, and records every line written, for tests here and in the driver.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::device::DeviceNumber;
use crate::iomax::{self, IoMax, IoMaxError};
use crate::iostat::{IoStat, IoStatError, IoStats};
use crate::tier::Limits;

/// The files read and written, relative to a cgroup directory.
pub const IO_MAX: &str = "io.max";
pub const IO_STAT: &str = "io.stat";
pub const CONTROLLERS: &str = "cgroup.controllers";

/// A cgroup IO file that could not be read, written or understood. Read and write errors
/// carry the file's path, and write errors the line written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {line:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        line: String,
        #[source]
        source: io::Error,
    },
    #[error("{}: {source}", path.display())]
    IoMax {
        path: PathBuf,
        #[source]
        source: IoMaxError,
    },
    #[error("{}: {source}", path.display())]
    IoStat {
        path: PathBuf,
        #[source]
        source: IoStatError,
    },
}

impl ApplyError {
    /// Whether the file (or the whole cgroup) does not exist: the pod is gone, or its
    /// cgroup has no io controller.
    pub fn is_not_found(&self) -> bool {
        match self {
            ApplyError::Read { source, .. } | ApplyError::Write { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
            }
            ApplyError::IoMax { .. } | ApplyError::IoStat { .. } => false,
        }
    }
}

/// The cgroup files iolane uses. `cgroup` is a cgroup directory (as found by
/// [`crate::find_pod_cgroup`]).
pub trait CgroupFs: Send + Sync {
    /// The text of `<cgroup>/io.max`.
    fn read_io_max(&self, cgroup: &Path) -> Result<String, ApplyError>;
    /// Writes one line to the existing `<cgroup>/io.max`.
    fn write_io_max(&self, cgroup: &Path, line: &str) -> Result<(), ApplyError>;
    /// The text of `<cgroup>/io.stat`.
    fn read_io_stat(&self, cgroup: &Path) -> Result<String, ApplyError>;
    /// Whether the io controller is enabled for `cgroup` (listed in its
    /// `cgroup.controllers`); without it there is no `io.max` to write.
    fn io_enabled(&self, cgroup: &Path) -> Result<bool, ApplyError>;
}

/// Sets all four caps of `dev` in `cgroup` (in [`Limits::canonical`] form).
pub fn apply(
    fs: &(impl CgroupFs + ?Sized),
    cgroup: &Path,
    dev: DeviceNumber,
    limits: &Limits,
) -> Result<(), ApplyError> {
    fs.write_io_max(cgroup, &iomax::render_line(dev, &limits.canonical()))
}

/// Lifts every cap of `dev` in `cgroup`.
pub fn reset(
    fs: &(impl CgroupFs + ?Sized),
    cgroup: &Path,
    dev: DeviceNumber,
) -> Result<(), ApplyError> {
    fs.write_io_max(cgroup, &iomax::reset_line(dev))
}

/// The caps `cgroup` has on `dev` now ([`Limits::UNLIMITED`] when it has no line).
pub fn current(
    fs: &(impl CgroupFs + ?Sized),
    cgroup: &Path,
    dev: DeviceNumber,
) -> Result<Limits, ApplyError> {
    let text = fs.read_io_max(cgroup)?;
    let table = IoMax::parse(&text).map_err(|source| ApplyError::IoMax {
        path: cgroup.join(IO_MAX),
        source,
    })?;
    Ok(table.limits(dev))
}

/// The IO counters of `cgroup` on `dev`; `None` when it has done no IO on it.
pub fn stats(
    fs: &(impl CgroupFs + ?Sized),
    cgroup: &Path,
    dev: DeviceNumber,
) -> Result<Option<IoStat>, ApplyError> {
    let text = fs.read_io_stat(cgroup)?;
    let table = IoStats::parse(&text).map_err(|source| ApplyError::IoStat {
        path: cgroup.join(IO_STAT),
        source,
    })?;
    Ok(table.get(dev).copied())
}

/// The kernel's cgroupfs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealCgroupFs;

fn read(path: PathBuf) -> Result<String, ApplyError> {
    std::fs::read_to_string(&path).map_err(|source| ApplyError::Read { path, source })
}

impl CgroupFs for RealCgroupFs {
    fn read_io_max(&self, cgroup: &Path) -> Result<String, ApplyError> {
        read(cgroup.join(IO_MAX))
    }

    fn write_io_max(&self, cgroup: &Path, line: &str) -> Result<(), ApplyError> {
        let path = cgroup.join(IO_MAX);
        tracing::debug!(path = %path.display(), line, "write io.max");
        // No create: a missing cgroup or io.max is an error, never a new file. The kernel
        // takes one line per write(2), so the line goes out in one call.
        let result = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        result.map_err(|source| ApplyError::Write {
            path,
            line: line.to_owned(),
            source,
        })
    }

    fn read_io_stat(&self, cgroup: &Path) -> Result<String, ApplyError> {
        read(cgroup.join(IO_STAT))
    }

    fn io_enabled(&self, cgroup: &Path) -> Result<bool, ApplyError> {
        let text = read(cgroup.join(CONTROLLERS))?;
        Ok(text.split_whitespace().any(|c| c == "io"))
    }
}

/// An in-memory cgroupfs for tests: cgroups are added explicitly; `io.max` behaves like
/// the kernel's (a line per device with a cap, all-`max` lines dropped), except that a
/// line without all four keys is refused, since iolane always writes all four.
#[derive(Debug, Default)]
pub struct FakeCgroupFs {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    cgroups: BTreeMap<PathBuf, FakeCgroup>,
    writes: Vec<(PathBuf, String)>,
    /// Every `io.max` write fails (EBUSY) while set.
    refuse_writes: bool,
}

#[derive(Debug, Default)]
struct FakeCgroup {
    io: bool,
    io_max: BTreeMap<DeviceNumber, Limits>,
    io_stat: String,
}

impl FakeCgroupFs {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a cgroup with the io controller enabled and no caps.
    pub fn add_cgroup(&self, cgroup: &Path) {
        self.state().cgroups.insert(
            cgroup.to_path_buf(),
            FakeCgroup {
                io: true,
                ..FakeCgroup::default()
            },
        );
    }

    /// Adds a cgroup without the io controller (no `io.max`, no `io.stat`).
    pub fn add_cgroup_without_io(&self, cgroup: &Path) {
        self.state()
            .cgroups
            .insert(cgroup.to_path_buf(), FakeCgroup::default());
    }

    /// Removes a cgroup, as when its pod ends.
    pub fn remove_cgroup(&self, cgroup: &Path) {
        self.state().cgroups.remove(cgroup);
    }

    /// Sets the text `io.stat` returns.
    pub fn set_io_stat(&self, cgroup: &Path, text: &str) {
        if let Some(cg) = self.state().cgroups.get_mut(cgroup) {
            cg.io_stat = text.to_owned();
        }
    }

    /// Makes every following `io.max` write fail (as a busy kernel would), or succeed again.
    pub fn refuse_writes(&self, refuse: bool) {
        self.state().refuse_writes = refuse;
    }

    /// Every line written so far, with the cgroup it went to, including refused ones.
    pub fn writes(&self) -> Vec<(PathBuf, String)> {
        self.state().writes.clone()
    }

    fn missing(cgroup: &Path, file: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("fake cgroupfs: no {file} in {}", cgroup.display()),
        )
    }
}

impl CgroupFs for FakeCgroupFs {
    fn read_io_max(&self, cgroup: &Path) -> Result<String, ApplyError> {
        let state = self.state();
        match state.cgroups.get(cgroup) {
            Some(cg) if cg.io => Ok(cg
                .io_max
                .iter()
                .map(|(dev, limits)| format!("{}\n", iomax::render_line(*dev, limits)))
                .collect()),
            _ => Err(ApplyError::Read {
                path: cgroup.join(IO_MAX),
                source: Self::missing(cgroup, IO_MAX),
            }),
        }
    }

    fn write_io_max(&self, cgroup: &Path, line: &str) -> Result<(), ApplyError> {
        let mut state = self.state();
        state.writes.push((cgroup.to_path_buf(), line.to_owned()));
        let err = |source: io::Error| ApplyError::Write {
            path: cgroup.join(IO_MAX),
            line: line.to_owned(),
            source,
        };
        if state.refuse_writes {
            return Err(err(io::Error::from_raw_os_error(16)));
        }
        let cg = match state.cgroups.get_mut(cgroup) {
            Some(cg) if cg.io => cg,
            _ => return Err(err(Self::missing(cgroup, IO_MAX))),
        };
        let keys = line
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.split_once('='))
            .map(|(k, _)| k);
        let all_four = {
            let mut keys: Vec<&str> = keys.collect();
            keys.sort_unstable();
            keys == ["rbps", "riops", "wbps", "wiops"]
        };
        let parsed = iomax::parse_line(line).ok().filter(|_| all_four);
        let Some((dev, limits)) = parsed else {
            return Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fake cgroupfs: not a line with exactly rbps, wbps, riops and wiops",
            )));
        };
        if limits.is_unlimited() {
            cg.io_max.remove(&dev);
        } else {
            cg.io_max.insert(dev, limits);
        }
        Ok(())
    }

    fn read_io_stat(&self, cgroup: &Path) -> Result<String, ApplyError> {
        let state = self.state();
        match state.cgroups.get(cgroup) {
            Some(cg) if cg.io => Ok(cg.io_stat.clone()),
            _ => Err(ApplyError::Read {
                path: cgroup.join(IO_STAT),
                source: Self::missing(cgroup, IO_STAT),
            }),
        }
    }

    fn io_enabled(&self, cgroup: &Path) -> Result<bool, ApplyError> {
        let state = self.state();
        match state.cgroups.get(cgroup) {
            Some(cg) => Ok(cg.io),
            None => Err(ApplyError::Read {
                path: cgroup.join(CONTROLLERS),
                source: Self::missing(cgroup, CONTROLLERS),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::Limit;

    fn dev(major: u32, minor: u32) -> DeviceNumber {
        DeviceNumber { major, minor }
    }

    fn batch() -> Limits {
        Limits {
            read_bps: Limit::per_sec(209_715_200),
            write_bps: Limit::per_sec(209_715_200),
            read_iops: Limit::per_sec(2000),
            write_iops: Limit::per_sec(2000),
        }
    }

    #[test]
    fn apply_reset_and_read_back() {
        let fs = FakeCgroupFs::new();
        let pod = Path::new("/cg/kubepods.slice/kubepods-pod1.slice");
        fs.add_cgroup(pod);
        let (lv, other) = (dev(254, 3), dev(259, 0));

        apply(
            &fs,
            pod,
            other,
            &Limits {
                write_iops: Limit::per_sec(120),
                ..Limits::UNLIMITED
            },
        )
        .unwrap();
        apply(&fs, pod, lv, &batch()).unwrap();
        assert_eq!(current(&fs, pod, lv).unwrap(), batch());
        assert_eq!(
            fs.read_io_max(pod).unwrap(),
            "254:3 rbps=209715200 wbps=209715200 riops=2000 wiops=2000\n\
             259:0 rbps=max wbps=max riops=max wiops=120\n"
        );

        reset(&fs, pod, lv).unwrap();
        // The kernel drops an all-max line; the other device's line is untouched.
        assert_eq!(current(&fs, pod, lv).unwrap(), Limits::UNLIMITED);
        assert_eq!(
            fs.read_io_max(pod).unwrap(),
            "259:0 rbps=max wbps=max riops=max wiops=120\n"
        );
        assert_eq!(
            fs.writes()
                .into_iter()
                .map(|(p, l)| (p.display().to_string(), l))
                .collect::<Vec<_>>(),
            [
                (
                    pod.display().to_string(),
                    "259:0 rbps=max wbps=max riops=max wiops=120".to_owned()
                ),
                (
                    pod.display().to_string(),
                    "254:3 rbps=209715200 wbps=209715200 riops=2000 wiops=2000".to_owned()
                ),
                (
                    pod.display().to_string(),
                    "254:3 rbps=max wbps=max riops=max wiops=max".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn apply_writes_canonical_limits() {
        let fs = FakeCgroupFs::new();
        let pod = Path::new("/cg/pod");
        fs.add_cgroup(pod);
        let huge = Limits {
            read_iops: Limit::per_sec(5_000_000_000),
            ..batch()
        };
        apply(&fs, pod, dev(7, 0), &huge).unwrap();
        assert_eq!(
            fs.writes()[0].1,
            "7:0 rbps=209715200 wbps=209715200 riops=max wiops=2000"
        );
        assert_eq!(current(&fs, pod, dev(7, 0)).unwrap(), huge.canonical());
    }

    #[test]
    fn fake_refuses_what_the_kernel_would() {
        let fs = FakeCgroupFs::new();
        let gone = Path::new("/cg/gone");
        let no_io = Path::new("/cg/no-io");
        fs.add_cgroup_without_io(no_io);
        for cg in [gone, no_io] {
            let e = apply(&fs, cg, dev(7, 0), &batch()).unwrap_err();
            assert!(e.is_not_found(), "{e}");
            assert!(current(&fs, cg, dev(7, 0)).unwrap_err().is_not_found());
            assert!(stats(&fs, cg, dev(7, 0)).unwrap_err().is_not_found());
        }
        assert_eq!(fs.io_enabled(no_io).ok(), Some(false));
        assert!(fs.io_enabled(gone).unwrap_err().is_not_found());

        let pod = Path::new("/cg/pod");
        fs.add_cgroup(pod);
        assert_eq!(fs.io_enabled(pod).ok(), Some(true));
        let e = fs.write_io_max(pod, "7:0 riops=5").unwrap_err();
        assert_eq!(
            e.to_string(),
            "write \"7:0 riops=5\" to /cg/pod/io.max: fake cgroupfs: not a line with exactly \
             rbps, wbps, riops and wiops"
        );
        assert!(!e.is_not_found());

        fs.remove_cgroup(pod);
        assert!(current(&fs, pod, dev(7, 0)).unwrap_err().is_not_found());
    }

    #[test]
    fn stats_of_a_device() {
        let fs = FakeCgroupFs::new();
        let pod = Path::new("/cg/pod");
        fs.add_cgroup(pod);
        assert_eq!(stats(&fs, pod, dev(7, 0)).unwrap(), None);
        fs.set_io_stat(
            pod,
            "7:0 rbytes=1048576 wbytes=8388608 rios=256 wios=16 dbytes=0 dios=0\n",
        );
        assert_eq!(
            stats(&fs, pod, dev(7, 0)).unwrap(),
            Some(IoStat {
                rbytes: 1_048_576,
                wbytes: 8_388_608,
                rios: 256,
                wios: 16,
                dbytes: 0,
                dios: 0
            })
        );
        assert_eq!(stats(&fs, pod, dev(7, 1)).unwrap(), None);
        fs.set_io_stat(pod, "7:0 rios=x");
        assert_eq!(
            stats(&fs, pod, dev(7, 0)).unwrap_err().to_string(),
            "/cg/pod/io.stat: io.stat line \"7:0 rios=x\": rios=\"x\" is not a counter"
        );
    }
}

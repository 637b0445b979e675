//! Block device topology and counters for the priority controller, read from sysfs under
//! an injected root (`/sys`; a tempdir tree in tests): the physical device(s) under a
//! volume's device, a device's name, and its `stat` counters.
//!
//! - A device-mapper volume (a thin LV) is followed down its `slaves/` links (thin LV ->
//!   pool -> tdata/tmeta -> the NVMe) to the devices that have no slaves: those carry the IO.
//! - A loop device has no slaves: its backing file (`loop/backing_file`) lives on a
//!   filesystem, whose device (`st_dev`, through the injected [`DeviceOf`]) is followed the
//!   same way.
//!
//! `/sys/dev/block/MAJ:MIN/stat` fields (Documentation/block/stat.rst): 1 reads completed,
//! 5 writes completed, 9 IOs in flight, 11 weighted milliseconds in queue.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::device::DeviceNumber;

/// The device a path's filesystem lives on (`st_dev` of the path).
pub type DeviceOf = Arc<dyn Fn(&Path) -> io::Result<DeviceNumber> + Send + Sync>;

/// The real `st_dev` of a path.
pub fn real_device_of() -> DeviceOf {
    Arc::new(|path: &Path| {
        use std::os::unix::fs::MetadataExt;
        Ok(DeviceNumber::from_rdev(std::fs::metadata(path)?.dev()))
    })
}

/// One block device's `stat` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStat {
    /// Reads plus writes completed.
    pub ios: u64,
    /// Reads completed (field 1) and writes completed (field 5).
    pub reads: u64,
    pub writes: u64,
    /// 512-byte sectors read (field 3) and written (field 7).
    pub read_sectors: u64,
    pub write_sectors: u64,
    /// IOs in flight now.
    pub in_flight: u64,
    /// Weighted milliseconds spent in queue (field 11).
    pub weighted_ms: u64,
}

impl BlockStat {
    /// Parses the whitespace-separated fields of a `stat` file.
    pub fn parse(text: &str) -> Option<BlockStat> {
        // Every field must be a number; fields 1, 3, 5, 7, 9 and 11 are kept (no
        // allocation: read every period).
        let mut f = [0u64; 11];
        let mut n = 0;
        for token in text.split_ascii_whitespace() {
            let v: u64 = token.parse().ok()?;
            if let Some(slot) = f.get_mut(n) {
                *slot = v;
            }
            n += 1;
        }
        if n < 11 {
            return None;
        }
        Some(BlockStat {
            ios: f[0] + f[4],
            reads: f[0],
            writes: f[4],
            read_sectors: f[2],
            write_sectors: f[6],
            in_flight: f[8],
            weighted_ms: f[10],
        })
    }
}

/// The `stat` files a node reads every pass, kept open and re-read at offset 0: sysfs
/// regenerates an attribute's text on every read at offset 0 (`seq_file`), so a pass costs
/// one `pread` per device instead of an open with its path walk, a read and a close. A
/// handle that fails (its device went) is dropped and the file opened again once: a
/// device number can come back for a new device.
#[derive(Debug, Default)]
pub struct StatFiles {
    open: HashMap<DeviceNumber, File>,
    buf: Vec<u8>,
}

impl StatFiles {
    /// `dev`'s `stat` counters through `topology`'s sysfs.
    pub fn stat(&mut self, topology: &Topology, dev: DeviceNumber) -> io::Result<BlockStat> {
        const LEN: usize = 1024;
        if self.buf.len() != LEN {
            self.buf.resize(LEN, 0);
        }
        let mut last = None;
        for _ in 0..2 {
            let file = match self.open.entry(dev) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(v) => v.insert(File::open(topology.dir(dev).join("stat"))?),
            };
            match file.read_at(&mut self.buf, 0) {
                // A whole line that fits (a stat line is under 300 bytes).
                Ok(n) if n < LEN => {
                    let parsed = std::str::from_utf8(&self.buf[..n])
                        .ok()
                        .and_then(BlockStat::parse);
                    if let Some(st) = parsed {
                        return Ok(st);
                    }
                    self.open.remove(&dev);
                    return topology.stat(dev);
                }
                Ok(_) => {
                    self.open.remove(&dev);
                    return topology.stat(dev);
                }
                Err(e) => {
                    self.open.remove(&dev);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("stat: no read")))
    }

    /// Closes the files of devices `keep` says no to.
    pub fn retain(&mut self, keep: impl Fn(&DeviceNumber) -> bool) {
        self.open.retain(|d, _| keep(d));
    }

    /// How many files are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// sysfs under a root, plus the `st_dev` lookup loop devices need.
#[derive(Clone)]
pub struct Topology {
    sys: PathBuf,
    device_of: DeviceOf,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("sys", &self.sys)
            .finish_non_exhaustive()
    }
}

/// How deep a slaves chain may go (a loop in a broken tree must not hang the pass).
const MAX_DEPTH: usize = 16;

impl Topology {
    /// `sys` is the sysfs mount (`/sys`).
    pub fn new(sys: PathBuf, device_of: DeviceOf) -> Topology {
        Topology { sys, device_of }
    }

    fn dir(&self, dev: DeviceNumber) -> PathBuf {
        self.sys.join("dev/block").join(dev.to_string())
    }

    /// The kernel name of `dev` (`nvme0n1`, `dm-3`, `loop2`), from its `uevent`.
    pub fn name(&self, dev: DeviceNumber) -> Option<String> {
        let text = std::fs::read_to_string(self.dir(dev).join("uevent")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .map(str::to_owned)
    }

    /// The identity of `dev` that survives reboots (its `wwid`, serial, or name; see
    /// [`super::calibration::identity`]).
    pub fn identity(&self, dev: DeviceNumber) -> Option<String> {
        super::calibration::identity(&self.dir(dev))
    }

    /// `dev`'s `stat` counters.
    pub fn stat(&self, dev: DeviceNumber) -> io::Result<BlockStat> {
        let path = self.dir(dev).join("stat");
        let text = std::fs::read_to_string(&path)?;
        BlockStat::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a block stat line: {text:?}", path.display()),
            )
        })
    }

    /// The physical devices under `volume`, sorted: the leaves of its `slaves/` tree, or
    /// for a loop device those of its backing file's filesystem. A device with neither is
    /// its own physical device.
    pub fn physical(&self, volume: DeviceNumber) -> io::Result<Vec<DeviceNumber>> {
        let mut leaves = BTreeSet::new();
        self.walk(volume, 0, &mut leaves)?;
        Ok(leaves.into_iter().collect())
    }

    fn walk(
        &self,
        dev: DeviceNumber,
        depth: usize,
        leaves: &mut BTreeSet<DeviceNumber>,
    ) -> io::Result<()> {
        let dir = self.dir(dev);
        if !dir.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", dir.display()),
            ));
        }
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "{}: slaves nested deeper than {MAX_DEPTH}",
                dir.display()
            )));
        }
        let mut slaves = Vec::new();
        match std::fs::read_dir(dir.join("slaves")) {
            Ok(entries) => {
                for e in entries {
                    let path = e?.path().join("dev");
                    let text = std::fs::read_to_string(&path)?;
                    let n: DeviceNumber = text.trim().parse().map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                    slaves.push(n);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if !slaves.is_empty() {
            for s in slaves {
                self.walk(s, depth + 1, leaves)?;
            }
            return Ok(());
        }
        match std::fs::read_to_string(dir.join("loop/backing_file")) {
            Ok(file) => {
                let under = (self.device_of)(Path::new(file.trim()))?;
                if under == dev {
                    leaves.insert(dev);
                    Ok(())
                } else {
                    self.walk(under, depth + 1, leaves)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                leaves.insert(dev);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn dn(s: &str) -> DeviceNumber {
        s.parse().unwrap()
    }

    /// A device directory under `sys/dev/block`, with its name, stat and slaves.
    fn device(sys: &Path, dev: &str, name: &str, slaves: &[(&str, &str)]) {
        let dir = sys.join("dev/block").join(dev);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("uevent"), format!("MAJOR=1\nDEVNAME={name}\n")).unwrap();
        fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
        fs::write(
            dir.join("stat"),
            "     100 0 800 10      50 0 400 5    3 20 1234 0 0 0 0\n",
        )
        .unwrap();
        for (sname, sdev) in slaves {
            let s = dir.join("slaves").join(sname);
            fs::create_dir_all(&s).unwrap();
            fs::write(s.join("dev"), format!("{sdev}\n")).unwrap();
        }
    }

    #[test]
    fn a_thin_lv_leads_to_its_nvme_and_a_loop_device_to_its_filesystems_disk() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        // thin LV dm-3 -> pool dm-2 -> tmeta dm-0 + tdata dm-1 -> nvme0n1 (259:0).
        device(sys, "253:3", "dm-3", &[("dm-2", "253:2")]);
        device(
            sys,
            "253:2",
            "dm-2",
            &[("dm-0", "253:0"), ("dm-1", "253:1")],
        );
        device(sys, "253:0", "dm-0", &[("nvme0n1", "259:0")]);
        device(sys, "253:1", "dm-1", &[("nvme0n1", "259:0")]);
        device(sys, "259:0", "nvme0n1", &[]);
        // loop2 backed by a file on vda1 (254:1).
        device(sys, "7:2", "loop2", &[]);
        fs::create_dir_all(sys.join("dev/block/7:2/loop")).unwrap();
        fs::write(
            sys.join("dev/block/7:2/loop/backing_file"),
            "/var/lib/iolane/loop/v1.img\n",
        )
        .unwrap();
        device(sys, "254:1", "vda1", &[]);
        let topo = Topology::new(
            sys.to_owned(),
            Arc::new(|p: &Path| {
                assert_eq!(p, Path::new("/var/lib/iolane/loop/v1.img"));
                Ok("254:1".parse().unwrap())
            }),
        );
        assert_eq!(topo.physical(dn("253:3")).unwrap(), vec![dn("259:0")]);
        assert_eq!(topo.physical(dn("7:2")).unwrap(), vec![dn("254:1")]);
        assert_eq!(topo.physical(dn("259:0")).unwrap(), vec![dn("259:0")]);
        assert_eq!(topo.name(dn("259:0")).as_deref(), Some("nvme0n1"));
        assert_eq!(
            topo.stat(dn("253:3")).unwrap(),
            BlockStat {
                ios: 150,
                reads: 100,
                writes: 50,
                read_sectors: 800,
                write_sectors: 400,
                in_flight: 3,
                weighted_ms: 1234
            }
        );
        let e = topo.physical(dn("8:0")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_short_or_garbled_stat_line_is_refused() {
        assert_eq!(BlockStat::parse("1 2 3"), None);
        assert_eq!(BlockStat::parse("1 2 3 4 5 6 7 8 9 10 x"), None);
        assert!(BlockStat::parse("1 2 3 4 5 6 7 8 9 10 11").is_some());
    }
}

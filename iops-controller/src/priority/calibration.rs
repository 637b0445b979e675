//! Calibrated device capacities (issue 9 item 2): what `iolane bench --calibrate` measured
//! on a physical device, stored in the node's state directory keyed on the device's
//! identity, and read back by the node's priority controllers as the capacity a device's
//! controller starts from.
//!
//! - **Identity** ([`identity`]): what names the physical device across reboots and
//!   renumbering, from sysfs: its `wwid` (NVMe: EUI-64/NGUID/serial-based), else
//!   `device/wwid` (SCSI), else its `serial` (virtio) or `device/serial`, else its kernel
//!   name (`name:vda`, the weakest). A partition is named by its disk.
//! - **Store** ([`CalibrationStore`]): one file per device, `<state dir>/calibration/<identity
//!   made file-safe>`, lines of `key=value` ([`Calibration::to_text`],
//!   [`Calibration::parse`]); written to a temporary file and renamed, so a reader never sees
//!   half of one.
//! - **Precedence** (in [`crate::priority::node`]): the node config's
//!   `[priority.devices.*]` over a calibration over `default_iops`; the online correction
//!   applies to whichever is in force.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::model::DeviceModel;

/// One device's calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// The device's identity ([`identity`]).
    pub identity: String,
    /// Its kernel name when measured (informational: names can change across boots).
    pub name: String,
    pub model: DeviceModel,
    /// When it was measured, seconds since the epoch.
    pub measured_unix: u64,
}

/// Why a calibration file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CalibrationError {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> CalibrationError {
    CalibrationError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

const HEADER: &str = "# iolane device calibration (iolane bench --calibrate)";

impl Calibration {
    /// The file's text: a comment, then one `key=value` per line.
    pub fn to_text(&self) -> String {
        let m = &self.model;
        format!(
            "{HEADER}\nidentity={}\nname={}\nread_iops={}\nwrite_iops={}\nread_bps={}\n\
             write_bps={}\nmeasured_unix={}\n",
            self.identity,
            self.name,
            m.read_iops,
            m.write_iops,
            m.read_bps,
            m.write_bps,
            self.measured_unix
        )
    }

    /// Parses [`Calibration::to_text`]'s format: `#` comments and blank lines ignored,
    /// every key required once, rates positive and finite, unknown keys refused.
    pub fn parse(text: &str) -> Result<Calibration, CalibrationError> {
        let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(line, "not a key=value line"))?;
            let k = k.trim();
            if !matches!(
                k,
                "identity"
                    | "name"
                    | "read_iops"
                    | "write_iops"
                    | "read_bps"
                    | "write_bps"
                    | "measured_unix"
            ) {
                return Err(bad(k, "unknown key"));
            }
            if kv.insert(k, v.trim()).is_some() {
                return Err(bad(k, "given twice"));
            }
        }
        let get = |k: &str| kv.get(k).copied().ok_or_else(|| bad(k, "missing"));
        let rate = |k: &str| -> Result<f64, CalibrationError> {
            let v: f64 = get(k)?.parse().map_err(|_| bad(k, "not a number"))?;
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(bad(k, format!("must be a positive number, got {v}")))
            }
        };
        let identity = get("identity")?;
        if identity.is_empty() {
            return Err(bad("identity", "is empty"));
        }
        Ok(Calibration {
            identity: identity.to_owned(),
            name: get("name")?.to_owned(),
            model: DeviceModel {
                read_iops: rate("read_iops")?,
                write_iops: rate("write_iops")?,
                read_bps: rate("read_bps")?,
                write_bps: rate("write_bps")?,
            },
            measured_unix: get("measured_unix")?
                .parse()
                .map_err(|_| bad("measured_unix", "not a whole number"))?,
        })
    }
}

/// The identity of the block device whose sysfs directory is `dir`
/// (`/sys/dev/block/MAJ:MIN`): see the module docs. `None` when `dir` is no block device.
pub fn identity(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    // A partition: its disk is the parent directory.
    let dir = if dir.join("partition").exists() {
        dir.parent()?.to_owned()
    } else {
        dir
    };
    let read = |rel: &str| {
        std::fs::read_to_string(dir.join(rel))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    for (rel, kind) in [
        ("wwid", "wwid"),
        ("device/wwid", "wwid"),
        ("serial", "serial"),
        ("device/serial", "serial"),
    ] {
        if let Some(v) = read(rel) {
            return Some(format!("{kind}:{v}"));
        }
    }
    let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(|n| format!("name:{}", n.trim()))
}

/// The calibrations of a node: files in one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationStore {
    dir: PathBuf,
}

/// `identity` as a file name: ASCII letters, digits, `.`, `-` and `_` kept, every other
/// byte as `%XX` (so two identities never share a file).
fn file_name(identity: &str) -> String {
    let mut out = String::with_capacity(identity.len());
    for b in identity.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !out.is_empty()) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl CalibrationStore {
    /// The store of the state directory `state_dir` (`<state_dir>/calibration`).
    pub fn in_state_dir(state_dir: &Path) -> CalibrationStore {
        CalibrationStore {
            dir: state_dir.join("calibration"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds `identity`'s calibration.
    pub fn path_of(&self, identity: &str) -> PathBuf {
        self.dir.join(file_name(identity))
    }

    /// Stores `c`, replacing an earlier calibration of the same device.
    pub fn save(&self, c: &Calibration) -> io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path_of(&c.identity);
        let tmp = self.dir.join(format!(".{}.tmp", file_name(&c.identity)));
        std::fs::write(&tmp, c.to_text())?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }

    /// The calibration of `identity`: `Ok(None)` when there is none, an error when its
    /// file cannot be read or is refused (or holds another device's identity).
    pub fn load(&self, identity: &str) -> io::Result<Option<Calibration>> {
        let path = self.path_of(identity);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let c = Calibration::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
        if c.identity != identity {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: identity {:?} is not {identity:?}",
                    path.display(),
                    c.identity
                ),
            ));
        }
        Ok(Some(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sample() -> Calibration {
        Calibration {
            identity: "wwid:eui.0123456789abcdef".to_owned(),
            name: "nvme0n1".to_owned(),
            model: DeviceModel {
                read_iops: 412_345.5,
                write_iops: 98_000.0,
                read_bps: 3.2e9,
                write_bps: 1.1e9,
            },
            measured_unix: 1_796_000_000,
        }
    }

    #[test]
    fn text_round_trips_and_bad_files_are_refused_naming_the_key() {
        let c = sample();
        assert_eq!(Calibration::parse(&c.to_text()).unwrap(), c);
        let good = c.to_text();
        for (text, field) in [
            (
                good.replace("read_iops=412345.5", "read_iops=0"),
                "read_iops",
            ),
            (
                good.replace("write_bps=1100000000", "write_bps=x"),
                "write_bps",
            ),
            (
                good.replace("identity=wwid:eui.0123456789abcdef\n", ""),
                "identity",
            ),
            (format!("{good}read_iops=3\n"), "read_iops"),
            (format!("{good}iops=3\n"), "iops"),
            (format!("{good}garbage\n"), "garbage"),
            (
                good.replace("measured_unix=1796000000", "measured_unix=-1"),
                "measured_unix",
            ),
        ] {
            let e = Calibration::parse(&text).unwrap_err();
            assert_eq!(e.field, field, "{text:?}: {e}");
        }
    }

    #[test]
    fn identity_prefers_wwid_then_serial_then_the_name_and_names_a_partition_by_its_disk() {
        let t = tempfile::tempdir().unwrap();
        let disk = t.path().join("devices/nvme0n1");
        fs::create_dir_all(disk.join("nvme0n1p1")).unwrap();
        fs::write(disk.join("uevent"), "MAJOR=259\nDEVNAME=nvme0n1\n").unwrap();
        fs::write(disk.join("nvme0n1p1/partition"), "1\n").unwrap();
        assert_eq!(identity(&disk).as_deref(), Some("name:nvme0n1"));
        fs::create_dir_all(disk.join("device")).unwrap();
        fs::write(disk.join("device/serial"), "  S4EVNX0N  \n").unwrap();
        assert_eq!(identity(&disk).as_deref(), Some("serial:S4EVNX0N"));
        fs::write(disk.join("serial"), "\n").unwrap(); // empty: skipped
        assert_eq!(identity(&disk).as_deref(), Some("serial:S4EVNX0N"));
        fs::write(disk.join("wwid"), "eui.0025388b91b2c1a4\n").unwrap();
        assert_eq!(
            identity(&disk).as_deref(),
            Some("wwid:eui.0025388b91b2c1a4")
        );
        // The partition is its disk; a symlink (as /sys/dev/block/MAJ:MIN) is followed.
        let link = t.path().join("259:1");
        std::os::unix::fs::symlink(disk.join("nvme0n1p1"), &link).unwrap();
        assert_eq!(
            identity(&link).as_deref(),
            Some("wwid:eui.0025388b91b2c1a4")
        );
        assert_eq!(identity(&t.path().join("absent")), None);
    }

    #[test]
    fn store_saves_loads_and_refuses_a_file_of_another_device() {
        let t = tempfile::tempdir().unwrap();
        let store = CalibrationStore::in_state_dir(t.path());
        let c = sample();
        assert_eq!(store.load(&c.identity).unwrap(), None);
        let path = store.save(&c).unwrap();
        assert_eq!(
            path,
            t.path().join("calibration/wwid%3Aeui.0123456789abcdef")
        );
        assert_eq!(store.load(&c.identity).unwrap(), Some(c.clone()));
        // A second calibration replaces the first.
        let mut c2 = c.clone();
        c2.model.read_iops = 1000.0;
        store.save(&c2).unwrap();
        assert_eq!(store.load(&c.identity).unwrap(), Some(c2));
        assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 1);
        // Identities that differ only in unsafe bytes get different files.
        assert_ne!(file_name("serial:a/b"), file_name("serial:a_b"));
        assert_eq!(file_name("..x"), "%2E.x");
        // A file holding another identity, or garbage, is an error, not a capacity.
        let other = Calibration {
            identity: "serial:other".to_owned(),
            ..c.clone()
        };
        fs::write(store.path_of("serial:mine"), other.to_text()).unwrap();
        let e = store.load("serial:mine").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        fs::write(store.path_of("serial:junk"), "read_iops=1\n").unwrap();
        assert!(store.load("serial:junk").is_err());
    }
}

//! An LVM device class as the node config describes it (a `[[device_class]]` table, or
//! `--lvm-devices`): a VG with one thin pool over listed block devices, the defaults of
//! its settings, and their checks (class names, LVM names, device paths).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

/// An LVM device class: a VG with one thin pool over listed block devices.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceClass {
    /// Name that the StorageClass parameter `iolane.dev/device-class` selects.
    pub name: String,
    /// Block devices (absolute paths under `/dev`) the VG is built on.
    pub devices: Vec<PathBuf>,
    /// Volume group name.
    #[serde(default = "default_vg")]
    pub vg: String,
    /// Thin pool LV name inside the VG.
    #[serde(default = "default_thin_pool")]
    pub thin_pool: String,
    /// Thin pool chunk size in bytes (a power of two, 64 KiB to 1 GiB).
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u64,
    /// Whether the pool zeroes newly provisioned chunks. On by default: a discard alone
    /// does not guarantee that a device reads back zeros, so without zeroing a raw block
    /// volume could read a deleted volume's bytes in a partly written chunk. Turn it off
    /// only where every volume is a filesystem or the devices zero discarded blocks.
    #[serde(default = "default_zero")]
    pub zero: bool,
    /// Virtual bytes provisionable per byte of pool data space.
    #[serde(default = "default_lvm_ratio")]
    pub overprovision_ratio: f64,
    /// Pool data usage (percent) at or above which new volumes are refused.
    #[serde(default = "default_data_watermark")]
    pub data_high_watermark: f64,
    /// Pool metadata usage (percent) at or above which new volumes are refused.
    #[serde(default = "default_metadata_watermark")]
    pub metadata_high_watermark: f64,
    /// What to do with a listed device that carries a signature.
    #[serde(default)]
    pub wipe: WipePolicy,
    /// Share of the VG (percent, 1..=99) given to the thin pool's data when iolane creates
    /// the pool; the rest holds the pool's metadata and its spare.
    #[serde(default = "default_pool_size_percent")]
    pub pool_size_percent: u32,
    /// How many deleted filesystem volumes the class keeps as formatted spares, for the
    /// next volumes of the same size and filesystem (see the lvm backend's `spares.rs`);
    /// 0 (the default) turns spares off.
    #[serde(default)]
    pub spares: u32,
}

/// Whether iolane may erase signatures on a device listed in a device class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WipePolicy {
    /// Refuse a device that carries any signature (filesystem, partition table, RAID,
    /// another VG's PV label).
    #[default]
    Never,
    /// Erase every signature (`wipefs -a`) before making the device a PV.
    Signatures,
}

/// Name of the class `--lvm-devices` makes.
pub const DEFAULT_CLASS: &str = "default";
/// Smallest and largest thin pool chunk size LVM accepts.
const MIN_CHUNK: u64 = 64 << 10;
const MAX_CHUNK: u64 = 1 << 30;
/// The most spares a class may keep.
pub const MAX_SPARES: u32 = 256;
/// LVM's limit on VG and LV name length.
const MAX_LVM_NAME_LEN: usize = 127;

fn default_vg() -> String {
    "iolane".to_owned()
}

fn default_thin_pool() -> String {
    "pool".to_owned()
}

fn default_chunk_size() -> u64 {
    MIN_CHUNK
}

fn default_zero() -> bool {
    true
}

fn default_lvm_ratio() -> f64 {
    4.0
}

fn default_data_watermark() -> f64 {
    90.0
}

fn default_metadata_watermark() -> f64 {
    80.0
}

fn default_pool_size_percent() -> u32 {
    95
}

impl DeviceClass {
    /// The class `--lvm-devices` makes: every setting at its default.
    pub fn with_defaults(name: &str, devices: Vec<PathBuf>) -> Self {
        DeviceClass {
            name: name.to_owned(),
            devices,
            vg: default_vg(),
            thin_pool: default_thin_pool(),
            chunk_size: default_chunk_size(),
            zero: default_zero(),
            overprovision_ratio: default_lvm_ratio(),
            data_high_watermark: default_data_watermark(),
            metadata_high_watermark: default_metadata_watermark(),
            wipe: WipePolicy::Never,
            pool_size_percent: default_pool_size_percent(),
            spares: 0,
        }
    }

    /// Checks every setting; `at` names the table (`device_class[0]`) in errors.
    pub(crate) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            field: format!("{at}.{key}"),
            reason,
        };
        if !class_name_ok(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} must be 1..=63 characters of [a-z0-9-], starting and ending with a letter or digit",
                    self.name
                ),
            ));
        }
        validate_devices(&format!("{at}.devices"), &self.devices)?;
        lvm_name("vg", &self.vg).map_err(|r| invalid("vg", r))?;
        lvm_name("thin pool", &self.thin_pool).map_err(|r| invalid("thin_pool", r))?;
        if self.thin_pool.starts_with("iol-") {
            return Err(invalid(
                "thin_pool",
                format!(
                    "{:?} must not start with \"iol-\", the prefix of volume LVs",
                    self.thin_pool
                ),
            ));
        }
        if !self.chunk_size.is_power_of_two() || !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size)
        {
            return Err(invalid(
                "chunk_size",
                format!(
                    "{} must be a power of two between {MIN_CHUNK} (64 KiB) and {MAX_CHUNK} (1 GiB) bytes",
                    self.chunk_size
                ),
            ));
        }
        let r = self.overprovision_ratio;
        if !(1.0..=1000.0).contains(&r) {
            return Err(invalid(
                "overprovision_ratio",
                format!("{r} is outside 1.0..=1000.0"),
            ));
        }
        for (key, w) in [
            ("data_high_watermark", self.data_high_watermark),
            ("metadata_high_watermark", self.metadata_high_watermark),
        ] {
            if !(w > 0.0 && w <= 100.0) {
                return Err(invalid(key, format!("{w} is not a percentage in (0, 100]")));
            }
        }
        if !(1..=99).contains(&self.pool_size_percent) {
            return Err(invalid(
                "pool_size_percent",
                format!(
                    "{} is outside 1..=99 (the pool's metadata and its spare need the rest of the VG)",
                    self.pool_size_percent
                ),
            ));
        }
        if self.spares > MAX_SPARES {
            return Err(invalid(
                "spares",
                format!("{} is more than {MAX_SPARES}", self.spares),
            ));
        }
        Ok(())
    }
}

/// A class name: a DNS label, as it appears in StorageClass parameters.
fn class_name_ok(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A VG or LV name LVM accepts (see lvm(8), VALID NAMES), or why not.
fn lvm_name(what: &str, name: &str) -> Result<(), String> {
    const RESERVED: [&str; 14] = [
        "_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage",
        "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig",
    ];
    let charset_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'_' | b'.' | b'-'));
    if name.is_empty()
        || name.len() > MAX_LVM_NAME_LEN
        || !charset_ok
        || name.starts_with('-')
        || matches!(name, "." | ".." | "snapshot" | "pvmove")
        || RESERVED.iter().any(|r| name.contains(r))
    {
        return Err(format!(
            "{name:?} is not a valid {what} name: 1..={MAX_LVM_NAME_LEN} characters of [A-Za-z0-9+_.-], not starting with '-', and not a name LVM reserves"
        ));
    }
    Ok(())
}

/// Device paths: at least one, each absolute under `/dev` without `.`/`..`, no repeats.
pub(crate) fn validate_devices(field: &str, devices: &[PathBuf]) -> Result<(), ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        field: field.to_owned(),
        reason,
    };
    if devices.is_empty() {
        return Err(invalid("must list at least one device".to_owned()));
    }
    for (i, d) in devices.iter().enumerate() {
        let text = d
            .to_str()
            .ok_or_else(|| invalid(format!("{} is not UTF-8", d.display())))?;
        let clean = crate::validate::abs_path(field, text, Some(Path::new("/dev")))
            .map_err(|e| invalid(format!("{text:?}: {}", reason_of(&e))))?;
        if clean.as_os_str().len() != text.len() {
            return Err(invalid(format!("{text:?} is not in normal form")));
        }
        if devices[..i].contains(d) {
            return Err(invalid(format!("{text:?} is listed twice")));
        }
    }
    Ok(())
}

fn reason_of(e: &crate::error::Error) -> String {
    match e {
        crate::error::Error::InvalidArgument { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Checks every class of a node config, and that no two share a name, a VG or a device.
pub(crate) fn validate_classes(classes: &[DeviceClass]) -> Result<(), ConfigError> {
    for (i, c) in classes.iter().enumerate() {
        let at = format!("device_class[{i}]");
        c.validate(&at)?;
        let earlier = &classes[..i];
        let clash = |key: &str, what: String| ConfigError::Invalid {
            field: format!("{at}.{key}"),
            reason: what,
        };
        if let Some(j) = earlier.iter().position(|e| e.name == c.name) {
            return Err(clash(
                "name",
                format!("{:?} is already the name of device_class[{j}]", c.name),
            ));
        }
        if let Some(j) = earlier.iter().position(|e| e.vg == c.vg) {
            return Err(clash(
                "vg",
                format!(
                    "{:?} is already the VG of device_class[{j}]; a VG holds at most one class",
                    c.vg
                ),
            ));
        }
        for d in &c.devices {
            if let Some(j) = earlier.iter().position(|e| e.devices.contains(d)) {
                return Err(clash(
                    "devices",
                    format!("{} is already a device of device_class[{j}]", d.display()),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    #[test]
    fn device_class_defaults() {
        let c =
            NodeConfig::parse("[[device_class]]\nname = \"fast\"\ndevices = [\"/dev/nvme0n1\"]\n")
                .unwrap();
        assert_eq!(
            c.device_classes,
            vec![DeviceClass::with_defaults(
                "fast",
                vec![PathBuf::from("/dev/nvme0n1")]
            )]
        );
        let d = &c.device_classes[0];
        assert_eq!((d.vg.as_str(), d.thin_pool.as_str()), ("iolane", "pool"));
        assert_eq!(d.chunk_size, 65536);
        assert!(d.zero, "zeroing is on by default");
        assert_eq!(d.wipe, WipePolicy::Never);
        assert_eq!(d.pool_size_percent, 95);
        assert!((d.overprovision_ratio - 4.0).abs() < f64::EPSILON);
        assert!((d.data_high_watermark - 90.0).abs() < f64::EPSILON);
        assert!((d.metadata_high_watermark - 80.0).abs() < f64::EPSILON);
    }

    #[test]
    fn device_class_full_table() {
        let text = r#"
[[device_class]]
name = "streaming"
devices = ["/dev/nvme0n1", "/dev/disk/by-id/nvme-x"]
vg = "iolane-fast"
thin_pool = "thin"
chunk_size = 262144
zero = false
overprovision_ratio = 2.5
data_high_watermark = 85
metadata_high_watermark = 70.5
wipe = "signatures"
pool_size_percent = 90

[[device_class]]
name = "batch"
devices = ["/dev/nvme2n1"]
vg = "iolane-slow"
"#;
        let c = NodeConfig::parse(text).unwrap();
        let s = &c.device_classes[0];
        assert_eq!(s.chunk_size, 256 << 10);
        assert!(!s.zero);
        assert_eq!(s.wipe, WipePolicy::Signatures);
        assert_eq!(s.pool_size_percent, 90);
        assert!((s.metadata_high_watermark - 70.5).abs() < f64::EPSILON);
        assert_eq!(c.device_classes[1].thin_pool, "pool");
    }

    #[test]
    fn device_class_errors_name_the_key() {
        let class = |body: &str| {
            NodeConfig::parse(&format!(
                "[[device_class]]\nname = \"a\"\ndevices = [\"/dev/sda\"]\n{body}\n"
            ))
            .unwrap_err()
            .to_string()
        };
        for (body, starts) in [
            ("chunk_size = 100000", "device_class[0].chunk_size"),
            ("chunk_size = 32768", "device_class[0].chunk_size"),
            ("chunk_size = 2147483648", "device_class[0].chunk_size"),
            (
                "overprovision_ratio = 0.5",
                "device_class[0].overprovision_ratio",
            ),
            (
                "data_high_watermark = 0",
                "device_class[0].data_high_watermark",
            ),
            (
                "metadata_high_watermark = 101",
                "device_class[0].metadata_high_watermark",
            ),
            ("pool_size_percent = 0", "device_class[0].pool_size_percent"),
            (
                "pool_size_percent = 100",
                "device_class[0].pool_size_percent",
            ),
            ("vg = \"-x\"", "device_class[0].vg"),
            ("vg = \"a b\"", "device_class[0].vg"),
            ("thin_pool = \"p_tdata\"", "device_class[0].thin_pool"),
            ("thin_pool = \"iol-pool\"", "device_class[0].thin_pool"),
        ] {
            let e = class(body);
            assert!(e.starts_with(starts), "{body}: {e}");
        }
        for body in ["chunk = 65536", "wipe = \"always\""] {
            let e = class(body);
            assert!(e.contains("chunk") || e.contains("always"), "{body}: {e}");
        }
        let one = |name: &str, devices: &str| {
            NodeConfig::parse(&format!(
                "[[device_class]]\nname = \"{name}\"\ndevices = {devices}\n"
            ))
            .unwrap_err()
            .to_string()
        };
        for (name, devices, starts) in [
            ("Fast", r#"["/dev/sda"]"#, "device_class[0].name"),
            ("a", "[]", "device_class[0].devices"),
            ("a", r#"["sda"]"#, "device_class[0].devices"),
            ("a", r#"["/tmp/disk.img"]"#, "device_class[0].devices"),
            ("a", r#"["/dev/../etc/passwd"]"#, "device_class[0].devices"),
            (
                "a",
                r#"["/dev/sda", "/dev/sda"]"#,
                "device_class[0].devices",
            ),
        ] {
            let e = one(name, devices);
            assert!(e.starts_with(starts), "{devices}: {e}");
        }
        let two = |second: &str| {
            NodeConfig::parse(&format!(
                "[[device_class]]\nname = \"a\"\ndevices = [\"/dev/sda\"]\n[[device_class]]\n{second}\n"
            ))
            .unwrap_err()
            .to_string()
        };
        let e = two("name = \"a\"\ndevices = [\"/dev/sdb\"]\nvg = \"other\"");
        assert!(e.starts_with("device_class[1].name"), "{e}");
        let e = two("name = \"b\"\ndevices = [\"/dev/sdb\"]");
        assert!(
            e.starts_with("device_class[1].vg") && e.contains("at most one class"),
            "{e}"
        );
        let e = two("name = \"b\"\ndevices = [\"/dev/sda\"]\nvg = \"other\"");
        assert!(e.starts_with("device_class[1].devices"), "{e}");
    }
}

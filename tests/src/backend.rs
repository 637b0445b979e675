//! The backend the suite runs the driver on (`IOLANE_TEST_BACKEND`: loop or lvm), what
//! follows from it (size granularity, repeat counts, [`require_lvm!`]), the volume ID rule,
//! and the lvm device classes a test configures ([`LvmClass`]).

use crate::{MIB, sha256};

/// The backend the suite runs the driver on (`IOLANE_TEST_BACKEND`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestBackend {
    /// The embedded default: sparse images on loop devices under the state dir.
    Loop,
    /// LVM thin pools on `devices` (`IOLANE_TEST_LVM_DEVICES`, comma-separated).
    Lvm { devices: Vec<String> },
}

/// VG of the default device class (what `--lvm-devices` would make).
pub const DEFAULT_VG: &str = "iolane";
/// Name of the default device class.
pub const DEFAULT_CLASS: &str = "default";
/// Prefix of the LV names of volumes.
pub const LV_PREFIX: &str = "iol-";
/// Prefix of the LVs the lvm backend makes for snapshots.
pub const SNAPSHOT_PREFIX: &str = "iolsnap-";
/// The extent size of a VG `vgcreate` makes: what LVM rounds LV sizes up to.
pub const LVM_EXTENT: i64 = 4 << 20;

/// The backend from `IOLANE_TEST_BACKEND` (`loop`, the default, or `lvm`); panics on
/// anything else, or on lvm without `IOLANE_TEST_LVM_DEVICES`.
pub fn test_backend() -> TestBackend {
    let kind = std::env::var("IOLANE_TEST_BACKEND").unwrap_or_default();
    match kind.as_str() {
        "" | "loop" => TestBackend::Loop,
        "lvm" => {
            let devices: Vec<String> = std::env::var("IOLANE_TEST_LVM_DEVICES")
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_owned)
                .collect();
            assert!(
                !devices.is_empty(),
                "IOLANE_TEST_BACKEND=lvm needs IOLANE_TEST_LVM_DEVICES=/dev/A[,/dev/B] (blank devices or an iolane VG, in a VM: see tests/vm/README.md)"
            );
            TestBackend::Lvm { devices }
        }
        other => panic!("IOLANE_TEST_BACKEND={other:?}: expected \"loop\" or \"lvm\""),
    }
}

/// Whether the suite runs on the lvm backend.
pub fn is_lvm() -> bool {
    matches!(test_backend(), TestBackend::Lvm { .. })
}

/// Returns from the calling test with a printed reason unless running as root in lvm mode
/// (fails it instead under `IOLANE_REQUIRE_VM_PREREQS=1`, see [`crate::skip`]).
#[macro_export]
macro_rules! require_lvm {
    () => {
        $crate::require_root!();
        if !$crate::is_lvm() {
            $crate::skip(
                "lvm backend test (set IOLANE_TEST_BACKEND=lvm and IOLANE_TEST_LVM_DEVICES; runs in the VM: tests/vm/lvm-suite.sh)",
            );
            return;
        }
    };
}

/// Granularity of volume sizes: the driver rounds to whole MiB on the loop backend and
/// LVM to whole extents (4 MiB) on the lvm backend.
pub fn size_unit() -> i64 {
    if is_lvm() { LVM_EXTENT } else { MIB }
}

/// How many times the idempotency checks repeat a call: 10 on the loop backend, 3 on the
/// lvm backend, where every call runs LVM commands that take about a second in the VM (three
/// calls already prove that a repeat changes nothing).
pub fn repeats() -> usize {
    if is_lvm() { 3 } else { 10 }
}

/// `v` (non-negative) rounded up to a multiple of `unit` (positive).
pub fn round_up(v: i64, unit: i64) -> i64 {
    (v + unit - 1) / unit * unit
}

/// The volume ID the driver derives from a CSI name: `iol-` + the first 16 bytes of its
/// SHA-256, hex.
pub fn volume_id_for(name: &str) -> String {
    format!("{LV_PREFIX}{}", &sha256(name.as_bytes())[..32])
}

/// An lvm device class for [`Options::lvm_classes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvmClass {
    pub name: String,
    pub devices: Vec<String>,
    pub vg: String,
    /// More `key = value` lines for the table (`pool_size_percent = 3`, ...).
    pub extra: String,
}

impl LvmClass {
    /// Class `default`, VG `iolane`, every other setting the driver's default: what
    /// `--lvm-devices` makes.
    pub fn default_class(devices: &[String]) -> LvmClass {
        LvmClass {
            name: DEFAULT_CLASS.to_owned(),
            devices: devices.to_vec(),
            vg: DEFAULT_VG.to_owned(),
            extra: String::new(),
        }
    }

    /// The `[[device_class]]` table.
    pub fn toml(&self) -> String {
        let devices: Vec<String> = self.devices.iter().map(|d| format!("{d:?}")).collect();
        let mut t = format!(
            "\n[[device_class]]\nname = {:?}\ndevices = [{}]\nvg = {:?}\n",
            self.name,
            devices.join(", "),
            self.vg
        );
        t.push_str(&self.extra);
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t
    }
}

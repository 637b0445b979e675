//! Command line (clap, every flag also from an environment variable) and the node config
//! file (TOML, the same text the ConfigMap carries).

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// iolane: thin node-local volumes with per-tier IO limits, as a CSI driver.
#[derive(Debug, Parser)]
#[command(name = "iolane", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = "IOLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `csi_driver=debug`.
    #[arg(long, env = "IOLANE_LOG", default_value = "info", global = true)]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Identity, Controller and Node on this node's socket (the DaemonSet role).
    Node(NodeArgs),
    /// Serve the central Identity and Controller (the Deployment beside csi-resizer):
    /// ControllerExpandVolume answers `node_expansion_required`; the owning node grows the
    /// volume.
    Controller(ControllerArgs),
    /// Print this node's volumes: device class, size, pool usage, tier, the io.max caps in
    /// place for each pod, and live IOPS (from the node's `--metrics-address`).
    Status(StatusArgs),
    /// Run the IO load generator (io_uring, O_DIRECT) on a block device or file and print
    /// per-second IOPS and latency percentiles.
    Bench(BenchArgs),
    /// Run iolane's main job on its embedded default: a loop-backed node in-process, a
    /// streaming and a batch volume published to two stand-in pod cgroups, the load
    /// generator on both, and a table of achieved IOPS against each tier's limit. Needs
    /// root, cgroup v2 with the io controller, and loop devices; removes all it made.
    Demo(DemoArgs),
}

/// Flags of `iolane demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds each load run lasts.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Replace the batch tier's read and write IOPS caps with N (through a demo node
    /// config), for machines too slow to go above the built-in 2000; default: the
    /// built-in tier.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_iops: Option<u64>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Root of the cgroup v2 hierarchy (the demo's pod cgroups go below it).
    #[arg(long, env = "IOLANE_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
}

/// Flags of `iolane bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Block device or regular file to load. Write patterns refuse a mounted device.
    #[arg(long)]
    pub target: PathBuf,
    /// randread, randwrite, read, write, randrw or randrw:<read percent>.
    #[arg(long, default_value = "randread")]
    pub pattern: String,
    /// Bytes per IO, a multiple of 512.
    #[arg(long, default_value_t = 4096)]
    pub block_size: u32,
    /// IOs kept in flight.
    #[arg(long, default_value_t = 32)]
    pub queue_depth: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Use only the first N bytes of the target.
    #[arg(long)]
    pub size_limit: Option<u64>,
    /// Move this process into the cgroup v2 directory before starting IO.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Go through the page cache instead of O_DIRECT.
    #[arg(long)]
    pub buffered: bool,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Flags of `iolane status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The node's `--metrics-address` (where it serves `/status`).
    #[arg(long, env = "IOLANE_STATUS_ADDRESS", default_value = "127.0.0.1:9820")]
    pub address: std::net::SocketAddr,
    /// Seconds between the two readings live IOPS are computed from (1-60).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub interval: u64,
    /// Print the second snapshot as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `iolane controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// CSI endpoint, `unix:///absolute/path.sock`.
    #[arg(long, env = "IOLANE_ENDPOINT")]
    pub endpoint: String,
    /// CSI driver name reported by GetPluginInfo.
    #[arg(long, env = "IOLANE_DRIVER_NAME", default_value = "csi.iolane.dev")]
    pub driver_name: String,
}

/// Flags of `iolane node`.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// CSI endpoint, `unix:///absolute/path.sock`.
    #[arg(long, env = "IOLANE_ENDPOINT")]
    pub endpoint: String,
    /// This node's name; also its topology value `topology.iolane.dev/node`.
    #[arg(long, env = "IOLANE_NODE_ID")]
    pub node_id: String,
    /// Where the loop backend keeps its images and metadata.
    #[arg(long, env = "IOLANE_STATE_DIR", default_value = "/var/lib/iolane")]
    pub state_dir: PathBuf,
    /// Node config file (TOML). Without it the loop backend runs with its defaults.
    #[arg(long, env = "IOLANE_CONFIG")]
    pub config: Option<PathBuf>,
    /// CSI driver name reported by GetPluginInfo.
    #[arg(long, env = "IOLANE_DRIVER_NAME", default_value = "csi.iolane.dev")]
    pub driver_name: String,
    /// Refuse staging and target paths outside this directory (set it to the kubelet
    /// root, `/var/lib/kubelet`, in a cluster).
    #[arg(long, env = "IOLANE_PATH_ROOT")]
    pub path_root: Option<PathBuf>,
    /// Volumes this node accepts, reported in NodeGetInfo (0 = no limit).
    #[arg(long, env = "IOLANE_MAX_VOLUMES", default_value_t = 0)]
    pub max_volumes: i64,
    /// Block devices (comma-separated) for an LVM device class `default` with VG `iolane`
    /// and thin pool `pool`; a shortcut for a one-class config file.
    #[arg(long, env = "IOLANE_LVM_DEVICES", value_delimiter = ',')]
    pub lvm_devices: Vec<PathBuf>,
    /// Root of the cgroup v2 hierarchy, where pod cgroups are searched for.
    #[arg(long, env = "IOLANE_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Seconds between two passes of the io.max reconciler (1-3600).
    #[arg(long, env = "IOLANE_RECONCILE_PERIOD", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reconcile_period: u64,
    /// Serve `/metrics`, `/healthz` and `/status` (what `iolane status` reads) over HTTP
    /// on this address (e.g. `0.0.0.0:9820`); not served when unset.
    #[arg(long, env = "IOLANE_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Read the PVC's `iolane.dev/tier` annotation through the Kubernetes API at
    /// CreateVolume: `auto` when running in a cluster (KUBERNETES_SERVICE_HOST set) or
    /// with `--kubeconfig`, `off` never.
    #[arg(long, env = "IOLANE_KUBERNETES", value_enum, default_value_t = KubeMode::Auto)]
    pub kubernetes: KubeMode,
    /// kubeconfig for the Kubernetes API (outside a cluster).
    #[arg(long, env = "IOLANE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Whether the node reads PVC annotations through the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KubeMode {
    Auto,
    Off,
}

/// The node config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Settings of the loop backend (the embedded default).
    #[serde(default, rename = "loop")]
    pub loopback: LoopConfig,
    /// LVM device classes (`[[device_class]]` tables). With at least one, the node uses
    /// the lvm backend instead of the loop backend.
    #[serde(default, rename = "device_class")]
    pub device_classes: Vec<DeviceClass>,
    /// IO tiers (`[tiers.<name>]` tables), added to or replacing the built-in `streaming`
    /// and `batch`; checked by [`NodeConfig::tier_set`].
    #[serde(default)]
    pub tiers: iops_controller::TierConfig,
}

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
        }
    }

    /// Checks every setting; `at` names the table (`device_class[0]`) in errors.
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
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
fn validate_devices(field: &str, devices: &[PathBuf]) -> Result<(), ConfigError> {
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

/// Settings of the loop backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Virtual bytes provisionable per byte of backing filesystem space.
    #[serde(default = "default_ratio")]
    pub overprovision_ratio: f64,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            overprovision_ratio: default_ratio(),
        }
    }
}

fn default_ratio() -> f64 {
    10.0
}

/// A config problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl NodeConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: String::new(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The tiers this node knows: the built-ins with the config's on top.
    pub fn tier_set(&self) -> Result<iops_controller::TierSet, ConfigError> {
        iops_controller::TierSet::from_config(&self.tiers).map_err(|e| ConfigError::Invalid {
            field: e.field.clone(),
            reason: e.reason.clone(),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.tier_set()?;
        let r = self.loopback.overprovision_ratio;
        if !(1.0..=1000.0).contains(&r) {
            return Err(ConfigError::Invalid {
                field: "loop.overprovision_ratio".to_owned(),
                reason: format!("{r} is outside 1.0..=1000.0"),
            });
        }
        for (i, c) in self.device_classes.iter().enumerate() {
            let at = format!("device_class[{i}]");
            c.validate(&at)?;
            let earlier = &self.device_classes[..i];
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

    /// The device classes to serve: the config file's, or the one `--lvm-devices` makes.
    /// Empty means the loop backend.
    pub fn device_classes(&self, lvm_devices: &[PathBuf]) -> Result<Vec<DeviceClass>, ConfigError> {
        if lvm_devices.is_empty() {
            return Ok(self.device_classes.clone());
        }
        if !self.device_classes.is_empty() {
            return Err(ConfigError::Invalid {
                field: "--lvm-devices".to_owned(),
                reason: "cannot be combined with [[device_class]] tables in the config file; list the devices there instead".to_owned(),
            });
        }
        validate_devices("--lvm-devices", lvm_devices)?;
        Ok(vec![DeviceClass::with_defaults(
            DEFAULT_CLASS,
            lvm_devices.to_vec(),
        )])
    }
}

/// The socket path of a `unix:///abs/path` endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        field: "--endpoint".to_owned(),
        reason: format!("{endpoint:?} {reason}"),
    };
    let path = endpoint
        .strip_prefix("unix://")
        .ok_or_else(|| invalid("must start with unix://"))?;
    crate::validate::abs_path("--endpoint", path, None)
        .map_err(|_| invalid("must name an absolute path without '.' or '..'"))
}

/// Checks the driver name the way the CSI spec and csi-sanity do.
pub fn driver_name(name: &str) -> Result<&str, ConfigError> {
    let b = name.as_bytes();
    let ok = (2..=63).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if ok {
        Ok(name)
    } else {
        Err(ConfigError::Invalid {
            field: "--driver-name".to_owned(),
            reason: format!("{name:?} is not a valid CSI driver name"),
        })
    }
}

#[cfg(test)]
mod tests {
    /// The node configs the manifests ship (the ConfigMap's text) parse and validate with
    /// this very parser, so `kubectl apply -k` never installs a node that refuses to start.
    #[test]
    fn the_shipped_node_configs_are_valid() {
        let base = NodeConfig::parse(include_str!("../../deploy/base/node-config.toml"))
            .expect("deploy/base/node-config.toml");
        assert_eq!(base.device_classes.len(), 1);
        let tiers = base.tier_set().expect("tiers");
        assert!(tiers.get("streaming").is_some() && tiers.get("batch").is_some());
        let lp = NodeConfig::parse(include_str!("../../deploy/overlays/loop/node-config.toml"))
            .expect("deploy/overlays/loop/node-config.toml");
        assert!(lp.device_classes.is_empty());
    }

    use super::*;

    #[test]
    fn config_defaults_and_errors() {
        assert_eq!(NodeConfig::parse("").unwrap(), NodeConfig::default());
        let c = NodeConfig::parse("[loop]\noverprovision_ratio = 2.5\n").unwrap();
        assert!((c.loopback.overprovision_ratio - 2.5).abs() < f64::EPSILON);
        let e = NodeConfig::parse("[loop]\noverprovision = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("overprovision"), "{e}");
        let e = NodeConfig::parse("[loop]\noverprovision_ratio = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("loop.overprovision_ratio"), "{e}");
    }

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

    #[test]
    fn lvm_devices_flag_makes_the_default_class() {
        let none = NodeConfig::default();
        assert!(none.device_classes(&[]).unwrap().is_empty());
        let cli = Cli::try_parse_from([
            "iolane",
            "node",
            "--endpoint",
            "unix:///tmp/x.sock",
            "--node-id",
            "n1",
            "--lvm-devices",
            "/dev/nvme0n1,/dev/nvme1n1",
        ])
        .unwrap();
        let Command::Node(n) = cli.command else {
            panic!("not the node command");
        };
        let classes = none.device_classes(&n.lvm_devices).unwrap();
        assert_eq!(
            classes,
            vec![DeviceClass::with_defaults(
                DEFAULT_CLASS,
                vec![PathBuf::from("/dev/nvme0n1"), PathBuf::from("/dev/nvme1n1")]
            )]
        );
        let e = none
            .device_classes(&[PathBuf::from("nvme0n1")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--lvm-devices"), "{e}");
        let cfg = NodeConfig::parse("[[device_class]]\nname = \"a\"\ndevices = [\"/dev/sda\"]\n")
            .unwrap();
        assert_eq!(cfg.device_classes(&[]).unwrap().len(), 1);
        let e = cfg
            .device_classes(&[PathBuf::from("/dev/sdb")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--lvm-devices") && e.contains("[[device_class]]"),
            "{e}"
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///run/csi/csi.sock").unwrap(),
            PathBuf::from("/run/csi/csi.sock")
        );
        assert!(socket_path("/run/csi.sock").is_err());
        assert!(socket_path("unix://relative.sock").is_err());
        assert!(socket_path("unix:///run/../etc/x").is_err());
    }

    #[test]
    fn names() {
        assert!(driver_name("csi.iolane.dev").is_ok());
        assert!(driver_name("9lives").is_err());
        assert!(driver_name("a b").is_err());
    }

    #[test]
    fn cli_parses_the_documented_command() {
        let cli = Cli::try_parse_from([
            "iolane",
            "node",
            "--endpoint",
            "unix:///tmp/x.sock",
            "--node-id",
            "n1",
        ])
        .unwrap();
        let Command::Node(n) = cli.command else {
            panic!("not the node command");
        };
        assert_eq!(n.state_dir, PathBuf::from("/var/lib/iolane"));
        assert_eq!(n.driver_name, "csi.iolane.dev");
    }

    #[test]
    fn cli_parses_the_bench_command() {
        let cli = Cli::try_parse_from([
            "iolane",
            "bench",
            "--target",
            "/dev/loop3",
            "--pattern",
            "randrw:70",
            "--duration",
            "5",
        ])
        .unwrap();
        let Command::Bench(b) = cli.command else {
            panic!("not the bench command");
        };
        assert_eq!(b.target, PathBuf::from("/dev/loop3"));
        assert_eq!((b.block_size, b.queue_depth, b.duration), (4096, 32, 5));
        assert!(!b.buffered);
    }

    #[test]
    fn cli_parses_the_demo_command() {
        let cli = Cli::try_parse_from(["iolane", "demo"]).unwrap();
        let Command::Demo(d) = cli.command else {
            panic!("not the demo command");
        };
        assert_eq!((d.duration, d.batch_iops), (5, None));
        assert_eq!(d.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
        let cli = Cli::try_parse_from([
            "iolane",
            "demo",
            "--duration",
            "3",
            "--batch-iops",
            "200",
            "--json",
            "/tmp/d.json",
        ])
        .unwrap();
        let Command::Demo(d) = cli.command else {
            panic!("not the demo command");
        };
        assert_eq!((d.duration, d.batch_iops), (3, Some(200)));
        assert!(Cli::try_parse_from(["iolane", "demo", "--batch-iops", "0"]).is_err());
    }
}

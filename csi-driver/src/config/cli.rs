//! The command line: clap's `iolane` command, its subcommands and their flags (every flag
//! also from an `IOLANE_*` environment variable), and the checks of the flags whose
//! values clap cannot check itself.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use super::ConfigError;
pub use crate::node_cleanup::Mode as NodeCleanup;

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
    /// Run iolane's main job on its embedded default: a loop-backed node in-process with its
    /// class priority controllers, a streaming and several batch volumes published to
    /// stand-in pod cgroups, the load generator on them (streaming alone, all together,
    /// batch alone), and a table of what each class got. Needs root, cgroup v2 with the io
    /// controller, loop devices and a work directory on a disk; removes all it made.
    Demo(DemoArgs),
}

/// Flags of `iolane demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds each load run lasts (its first second is not counted: start-up and the
    /// controllers' reaction).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub duration: u64,
    /// How many batch volumes load the device next to the streaming one.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub batch_volumes: u64,
    /// Where the demo makes its temp dir (the loop backend's images, the calibration):
    /// a directory on a disk, since the priority controllers share the capacity of the
    /// disk under it. Default: $TMPDIR, else /tmp.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
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
    /// Sampling interval: below 1000 the report also prints (and the JSON carries, as
    /// `intervals`) the IOPS of every interval; 10-1000, dividing 1000.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Leave the IOs issued in the first this many milliseconds out of the latency
    /// percentiles (they still count in the rates): the steady state's latency.
    #[arg(long, default_value_t = 0)]
    pub latency_from_ms: u64,
    /// Calibrate the physical device under the target for the priority controllers: 4 KiB
    /// random reads and writes (IOPS), 1 MiB sequential reads and writes (bandwidth), each
    /// for --duration, stored under --state-dir by the device's identity. The writes
    /// destroy the target's contents: use a scratch volume or file.
    #[arg(long, conflicts_with_all = ["pattern", "block_size", "cgroup", "buffered", "json", "interval_ms", "latency_from_ms"])]
    pub calibrate: bool,
    /// With --calibrate: the node's state directory (the result goes to its
    /// `calibration/`).
    #[arg(long, env = "IOLANE_STATE_DIR", default_value = "/var/lib/iolane")]
    pub state_dir: PathBuf,
}

/// Flags of `iolane status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The node's `--status-address` (where it serves `/status`).
    #[arg(long, env = "IOLANE_STATUS_ADDRESS", default_value = DEFAULT_STATUS_ADDRESS)]
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
    /// What to do about the volumes of a deleted Node object: `off` nothing, `dry-run`
    /// log and write Events saying what would be deleted, `on` delete the node's PVCs and
    /// PVs (and their finalizers) with Events (policy: docs/runbooks.md, "A dead node").
    #[arg(long, env = "IOLANE_NODE_CLEANUP", value_enum, default_value_t = NodeCleanup::Off)]
    pub node_cleanup: NodeCleanup,
    /// Seconds a Node must stay deleted before node cleanup acts on its volumes (0-86400).
    #[arg(long, env = "IOLANE_NODE_CLEANUP_GRACE", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub node_cleanup_grace: u64,
    /// Seconds between two passes of node cleanup over all PVs, which catch a deletion
    /// the watch missed (10-86400).
    #[arg(long, env = "IOLANE_NODE_CLEANUP_RESYNC", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(10..=86400))]
    pub node_cleanup_resync: u64,
    /// kubeconfig for the Kubernetes API (outside a cluster); in a cluster the pod's
    /// service account is used.
    #[arg(long, env = "IOLANE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The node config (TOML, the nodes' ConfigMap): its tiers are what
    /// ControllerModifyVolume checks `mutable_parameters` against. Without it, the
    /// built-in tiers.
    #[arg(long, env = "IOLANE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds ControllerModifyVolume waits for the owning node to acknowledge the
    /// request recorded on the PV before answering UNAVAILABLE (1-600); keep it below
    /// csi-resizer's --timeout.
    #[arg(long, env = "IOLANE_MODIFY_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub modify_timeout: u64,
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
    /// Where the loop backend keeps its images and metadata, and the node (either backend)
    /// its instance lock, `iolane.lock`.
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
    /// Serve `/metrics` and `/healthz` over HTTP on this address (e.g. `0.0.0.0:9820`);
    /// not served when unset.
    #[arg(long, env = "IOLANE_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Serve `/status` (what `iolane status` reads: volume, PV and pod names) over HTTP on
    /// this address, loopback by default; `off` to not serve it.
    #[arg(long, env = "IOLANE_STATUS_ADDRESS", default_value = DEFAULT_STATUS_ADDRESS)]
    pub status_address: Listen,
    /// Read the PVC's `iolane.dev/tier` annotation through the Kubernetes API at
    /// CreateVolume: `auto` when running in a cluster (KUBERNETES_SERVICE_HOST set) or
    /// with `--kubeconfig`, `off` never.
    #[arg(long, env = "IOLANE_KUBERNETES", value_enum, default_value_t = KubeMode::Auto)]
    pub kubernetes: KubeMode,
    /// kubeconfig for the Kubernetes API (outside a cluster).
    #[arg(long, env = "IOLANE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Where the node serves `/status` unless told otherwise: loopback only, so only a
/// process on the node (`iolane status` in the pod) reads it.
pub const DEFAULT_STATUS_ADDRESS: &str = "127.0.0.1:9821";

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for Listen {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Listen, Self::Err> {
        if s == "off" {
            Ok(Listen(None))
        } else {
            s.parse().map(|a| Listen(Some(a)))
        }
    }
}

/// Whether the node reads PVC annotations through the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KubeMode {
    Auto,
    Off,
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
    use super::*;

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
        assert!(!b.calibrate);
    }

    #[test]
    fn cli_parses_bench_calibrate_and_refuses_a_pattern_with_it() {
        let cli = Cli::try_parse_from([
            "iolane",
            "bench",
            "--calibrate",
            "--target",
            "/dev/loop3",
            "--state-dir",
            "/srv/iolane",
            "--duration",
            "2",
        ])
        .unwrap();
        let Command::Bench(b) = cli.command else {
            panic!("not the bench command");
        };
        assert!(b.calibrate);
        assert_eq!(b.state_dir, PathBuf::from("/srv/iolane"));
        let e = Cli::try_parse_from([
            "iolane",
            "bench",
            "--calibrate",
            "--target",
            "/dev/loop3",
            "--pattern",
            "randwrite",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict, "{e}");
    }

    #[test]
    fn cli_parses_the_demo_command() {
        let cli = Cli::try_parse_from(["iolane", "demo"]).unwrap();
        let Command::Demo(d) = cli.command else {
            panic!("not the demo command");
        };
        assert_eq!((d.duration, d.batch_volumes, d.work_dir), (5, 4, None));
        assert_eq!(d.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
        let cli = Cli::try_parse_from([
            "iolane",
            "demo",
            "--duration",
            "3",
            "--batch-volumes",
            "2",
            "--work-dir",
            "/var/tmp",
            "--json",
            "/tmp/d.json",
        ])
        .unwrap();
        let Command::Demo(d) = cli.command else {
            panic!("not the demo command");
        };
        assert_eq!((d.duration, d.batch_volumes), (3, 2));
        assert_eq!(d.work_dir, Some(PathBuf::from("/var/tmp")));
        // A run needs more than its uncounted first second; at least one batch volume.
        assert!(Cli::try_parse_from(["iolane", "demo", "--duration", "1"]).is_err());
        assert!(Cli::try_parse_from(["iolane", "demo", "--batch-volumes", "0"]).is_err());
        assert!(Cli::try_parse_from(["iolane", "demo", "--batch-iops", "200"]).is_err());
    }
}

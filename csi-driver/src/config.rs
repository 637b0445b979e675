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
}

/// The node config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Settings of the loop backend (the embedded default).
    #[serde(default, rename = "loop")]
    pub loopback: LoopConfig,
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

    fn validate(&self) -> Result<(), ConfigError> {
        let r = self.loopback.overprovision_ratio;
        if !(1.0..=1000.0).contains(&r) {
            return Err(ConfigError::Invalid {
                field: "loop.overprovision_ratio".to_owned(),
                reason: format!("{r} is outside 1.0..=1000.0"),
            });
        }
        Ok(())
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
        let Command::Node(n) = cli.command;
        assert_eq!(n.state_dir, PathBuf::from("/var/lib/iolane"));
        assert_eq!(n.driver_name, "csi.iolane.dev");
    }
}

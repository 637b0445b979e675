//! The node config file: TOML (the same text the ConfigMap carries) with the loop
//! backend's settings, the LVM device classes, the IO tiers and `[priority]`, read and checked once at
//! start-up.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::backend::lvm::{DEFAULT_CLASS, DeviceClass, validate_classes, validate_devices};

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
    /// The per-device class controllers (`[priority]`, on by default); see
    /// [`super::priority::PrioritySection`].
    #[serde(default)]
    pub priority: super::priority::PrioritySection,
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
        validate_classes(&self.device_classes)?;
        self.priority.to_config()?;
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

#[cfg(test)]
mod tests {
    /// The node configs the manifests ship (the ConfigMap's text) parse and validate with
    /// this very parser, so `kubectl apply -k` never installs a node that refuses to start.
    #[test]
    fn the_shipped_node_configs_are_valid() {
        let base = NodeConfig::parse(include_str!("../../../deploy/base/node-config.toml"))
            .expect("deploy/base/node-config.toml");
        assert_eq!(base.device_classes.len(), 1);
        let tiers = base.tier_set().expect("tiers");
        assert!(tiers.get("streaming").is_some() && tiers.get("batch").is_some());
        let lp = NodeConfig::parse(include_str!(
            "../../../deploy/overlays/loop/node-config.toml"
        ))
        .expect("deploy/overlays/loop/node-config.toml");
        assert!(lp.device_classes.is_empty());
    }

    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

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
}

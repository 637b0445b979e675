//! The node config's `[priority]` section (issue 9, on by default): whether the per-device class
//! controllers run (`iops_controller::priority::node`), the law's floor, headroom and
//! period, and per-device capacity overrides (`[priority.devices."<name or MAJ:MIN>"]`).
//! Checked at start-up with errors naming the key.
//!
//! ```toml
//! [priority]
//! enabled = true        # the default; false leaves the tiers' static caps alone
//! floor = 0.05          # the batch class never gets less of a device while streaming runs
//! headroom = 0.10       # kept free beyond what active streaming uses
//! period_ms = 100       # how often the law runs
//! default_iops = 2000   # where a device with no override or calibration starts (corrected online)
//!
//! [priority.devices.nvme0n1]      # or "259:0"
//! iops = 1500                     # read and write IOPS; or read_iops / write_iops
//! read_bps = 104857600            # optional; default iops x 4 KiB
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use iops_controller::priority::{DeviceModel, Params, PriorityConfig};
use serde::Deserialize;

use super::ConfigError;

/// `[priority]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrioritySection {
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    #[serde(default = "default_floor")]
    pub floor: f64,
    #[serde(default = "default_headroom")]
    pub headroom: f64,
    #[serde(default = "default_period_ms")]
    pub period_ms: u64,
    #[serde(default = "default_iops")]
    pub default_iops: f64,
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceCapacity>,
}

/// `[priority.devices."<name or MAJ:MIN>"]`: a device's capacity.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceCapacity {
    pub iops: Option<f64>,
    pub read_iops: Option<f64>,
    pub write_iops: Option<f64>,
    pub read_bps: Option<f64>,
    pub write_bps: Option<f64>,
}

fn default_enabled() -> bool {
    true
}
fn default_floor() -> f64 {
    Params::default().floor
}
fn default_headroom() -> f64 {
    Params::default().headroom
}
fn default_period_ms() -> u64 {
    100
}
fn default_iops() -> f64 {
    iops_controller::priority::node::DEFAULT_START_IOPS
}

impl Default for PrioritySection {
    fn default() -> Self {
        PrioritySection {
            enabled: default_enabled(),
            floor: default_floor(),
            headroom: default_headroom(),
            period_ms: default_period_ms(),
            default_iops: default_iops(),
            devices: BTreeMap::new(),
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn rate(field: String, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("must be a positive number, got {v}"),
        ))
    }
}

impl DeviceCapacity {
    fn model(&self, at: &str) -> Result<DeviceModel, ConfigError> {
        let field = |k: &str| format!("{at}.{k}");
        let iops = self.iops.map(|v| rate(field("iops"), v)).transpose()?;
        let pick = |k: &str, v: Option<f64>| -> Result<f64, ConfigError> {
            match v.or(iops) {
                Some(v) => rate(field(k), v),
                None => Err(invalid(
                    field(k),
                    "is required (or `iops` for reads and writes)",
                )),
            }
        };
        let read_iops = pick("read_iops", self.read_iops)?;
        let write_iops = pick("write_iops", self.write_iops)?;
        let bps = |k: &str, v: Option<f64>, iops: f64| match v {
            Some(v) => rate(field(k), v),
            None => Ok(iops * 4096.0),
        };
        Ok(DeviceModel {
            read_iops,
            write_iops,
            read_bps: bps("read_bps", self.read_bps, read_iops)?,
            write_bps: bps("write_bps", self.write_bps, write_iops)?,
        })
    }
}

impl PrioritySection {
    /// The controllers' config, checked; `None` when `enabled` is false (still checked).
    pub fn to_config(&self) -> Result<Option<PriorityConfig>, ConfigError> {
        let params = Params {
            floor: self.floor,
            headroom: self.headroom,
            ..Params::default()
        };
        params
            .validate()
            .map_err(|e| invalid(format!("priority.{}", e.field), e.reason))?;
        if !(10..=10_000).contains(&self.period_ms) {
            return Err(invalid(
                "priority.period_ms",
                format!("{} is outside 10..=10000", self.period_ms),
            ));
        }
        let default_iops = rate("priority.default_iops".to_owned(), self.default_iops)?;
        let mut devices = BTreeMap::new();
        for (name, cap) in &self.devices {
            let at = format!("priority.devices.{name:?}");
            let ok = !name.is_empty()
                && (name.parse::<iops_controller::DeviceNumber>().is_ok()
                    || name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !ok {
                return Err(invalid(
                    at,
                    "must be a kernel device name (nvme0n1) or MAJ:MIN",
                ));
            }
            devices.insert(name.clone(), cap.model(&at)?);
        }
        let config = PriorityConfig {
            params,
            period: Duration::from_millis(self.period_ms),
            devices,
            default_model: DeviceModel::uniform_iops(default_iops),
            // The node sets the state directory's store (`iolane bench --calibrate`).
            calibrations: None,
        };
        Ok(self.enabled.then_some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    #[test]
    fn on_by_default_and_every_key_checked_by_name() {
        let c = NodeConfig::parse("").unwrap();
        assert_eq!(c.priority, PrioritySection::default());
        assert_eq!(
            c.priority.to_config().unwrap(),
            Some(PriorityConfig::default())
        );
        let c = NodeConfig::parse("[priority]\nenabled = false\n").unwrap();
        assert_eq!(c.priority.to_config().unwrap(), None);

        let c = NodeConfig::parse(
            "[priority]\nenabled = true\nfloor = 0.1\nperiod_ms = 200\n\
             [priority.devices.nvme0n1]\niops = 1500\n\
             [priority.devices.\"259:1\"]\nread_iops = 9000\nwrite_iops = 3000\nwrite_bps = 1e8\n",
        )
        .unwrap();
        let cfg = c.priority.to_config().unwrap().expect("enabled");
        assert_eq!(cfg.params.floor, 0.1);
        assert_eq!(cfg.period, Duration::from_millis(200));
        assert_eq!(cfg.devices["nvme0n1"], DeviceModel::uniform_iops(1500.0));
        let d = cfg.devices["259:1"];
        assert_eq!(
            (d.read_iops, d.write_iops, d.read_bps, d.write_bps),
            (9000.0, 3000.0, 9000.0 * 4096.0, 1e8)
        );

        for (text, field) in [
            ("[priority]\nfloor = 1.5\n", "priority.floor"),
            (
                "[priority]\nfloor = 0.6\nheadroom = 0.5\n",
                "priority.floor",
            ),
            ("[priority]\nheadroom = -1.0\n", "priority.headroom"),
            ("[priority]\nperiod_ms = 1\n", "priority.period_ms"),
            ("[priority]\ndefault_iops = 0.0\n", "priority.default_iops"),
            (
                "[priority.devices.nvme0n1]\nread_iops = 10.0\n",
                "priority.devices.\"nvme0n1\".write_iops",
            ),
            (
                "[priority.devices.nvme0n1]\niops = -3.0\n",
                "priority.devices.\"nvme0n1\".iops",
            ),
            (
                "[priority.devices.\"/dev/sda\"]\niops = 3.0\n",
                "priority.devices.\"/dev/sda\"",
            ),
        ] {
            let e = NodeConfig::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}:")), "{text:?}: {e}");
        }
        let e = NodeConfig::parse("[priority]\nenable = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("enable"), "{e}");
    }
}

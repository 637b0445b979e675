//! The node config file (TOML from the ConfigMap: `[loop]`, `[[device_class]]`,
//! `[tiers.<name>]`, `[priority]`), read once at start-up. No panic; an error names what is
//! wrong; a config it accepts gives a tier set, its device classes, and every tier's caps
//! for any volume size CreateVolume can ask for.
#![no_main]

use std::path::PathBuf;

use csi_driver::config::{ConfigError, NodeConfig};
use libfuzzer_sys::fuzz_target;

/// Volume sizes from none to the largest `required_bytes` (an int64).
const SIZES: [u64; 6] = [0, 1, 1 << 20, 1 << 30, 1 << 40, i64::MAX as u64];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match NodeConfig::parse(text) {
        Ok(cfg) => cfg,
        Err(ConfigError::Invalid { field, reason }) => {
            assert!(
                !field.is_empty() && !reason.is_empty(),
                "{field:?}: {reason:?}"
            );
            return;
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let tiers = cfg
        .tier_set()
        .unwrap_or_else(|e| panic!("a config that parsed has no tier set: {e}"));
    for tier in tiers.iter() {
        for size in SIZES {
            let _ = tier.limits_for(size);
        }
    }
    let _ = cfg.device_classes(&[]);
    let _ = cfg.device_classes(&[PathBuf::from("/dev/vdb")]);
});

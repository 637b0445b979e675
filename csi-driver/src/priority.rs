//! The node's class priority controllers (issue 9) built from the node config's
//! `[priority]`: the one place that turns the config into running controllers, used by
//! `iolane node` and by `iolane demo`'s in-process node.

use std::path::Path;
use std::sync::Arc;

use iops_controller::priority::{CalibrationStore, NodePriority, Topology, topology};
use iops_controller::{Enforcement, PriorityMetrics};
use prometheus_client::registry::Registry;

use crate::config::{ConfigError, NodeConfig};

/// Hands `enforcement` the per-device controllers of `cfg`'s `[priority]` (on by default),
/// with the capacities `iolane bench --calibrate` stored under `state_dir`, devices found
/// under `sys` (`/sys`), and their metrics registered into `registry` when there is one.
/// Returns `enforcement` unchanged when `[priority] enabled = false`. The caller still
/// starts the loop ([`Enforcement::run_priority`]).
pub fn enable(
    enforcement: Enforcement,
    cfg: &NodeConfig,
    state_dir: &Path,
    sys: &Path,
    registry: Option<&mut Registry>,
) -> Result<Enforcement, ConfigError> {
    let Some(mut config) = cfg.priority.to_config()? else {
        return Ok(enforcement);
    };
    config.calibrations = Some(CalibrationStore::in_state_dir(state_dir));
    let topology = Topology::new(sys.to_owned(), topology::real_device_of());
    let metrics = registry.map(|r| {
        let m = Arc::new(PriorityMetrics::new());
        m.register(r);
        m
    });
    tracing::info!(
        floor = config.params.floor,
        headroom = config.params.headroom,
        period_ms = config.period.as_millis(),
        devices = config.devices.len(),
        "priority controllers enabled"
    );
    Ok(enforcement.with_priority(
        NodePriority::new(config, &cfg.tier_set()?, topology),
        metrics,
    ))
}

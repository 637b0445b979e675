//! The snapshot a node serves at `GET /status` (and `iolane status --json` prints): the
//! node, its pools, and each volume with its tier, caps and publications. A publication's
//! part is the enforcement controller's typed
//! [`PublicationSnapshot`](iops_controller::PublicationSnapshot).

use iops_controller::Limits;
use serde::{Deserialize, Serialize};

use iops_controller::PublicationSnapshot;
use iops_controller::enforcement::text;

/// The snapshot `GET /status` returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: String,
    /// `loop` or `lvm`.
    pub backend: String,
    pub pools: Vec<PoolStatus>,
    pub volumes: Vec<VolumeStatus>,
    /// The priority controllers' devices as of their last pass (none while `[priority]`
    /// is off).
    #[serde(default)]
    pub devices: Vec<DeviceStatus>,
}

/// One physical device under the priority controllers: what `/metrics` exports as
/// `iolane_priority_*`, for `iolane status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Kernel name (`nvme0n1`), `+`-joined when volumes span several.
    pub name: String,
    /// The capacity model in force (calibration times the online scale), read IOPS.
    pub capacity_read_iops: f64,
    pub capacity_write_iops: f64,
    /// The online correction (1.0 = as calibrated or configured).
    pub capacity_scale: f64,
    /// Where the capacity the controller started from came from: `config` (the node
    /// config's `[priority.devices.*]`), `calibrated` (`iolane bench --calibrate`) or
    /// `default` (`default_iops`).
    #[serde(default)]
    pub capacity_source: String,
    /// Use in the last period, fractions of the device.
    pub streaming_use: f64,
    pub batch_use: f64,
    pub streaming_active: bool,
    /// The batch class budget in force (above 1.0: streaming idle).
    pub batch_budget: f64,
    pub saturated: bool,
    pub streaming_publications: usize,
    pub batch_publications: usize,
}

impl From<&iops_controller::priority::DeviceState> for DeviceStatus {
    fn from(d: &iops_controller::priority::DeviceState) -> Self {
        let r = &d.report;
        DeviceStatus {
            name: d.name.clone(),
            capacity_read_iops: r.capacity.read_iops,
            capacity_write_iops: r.capacity.write_iops,
            capacity_scale: r.capacity_scale,
            capacity_source: d.source.as_str().to_owned(),
            streaming_use: r.streaming_use,
            batch_use: r.batch_use,
            streaming_active: r.streaming_active,
            batch_budget: r.batch_budget,
            saturated: r.saturated,
            streaming_publications: d.publications.0,
            batch_publications: d.publications.1,
        }
    }
}

/// One thin pool (lvm device class) or the loop backend's state directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Device class name (`loop` for the loop backend).
    pub name: String,
    /// Where it lives: `vg/pool`, or the state directory.
    pub location: String,
    pub size_bytes: u64,
    pub data_percent: f64,
    /// `None` where there is no metadata (loop backend).
    pub metadata_percent: Option<f64>,
    /// Sum of the volumes' virtual sizes.
    pub provisioned_bytes: u64,
    /// `None` when healthy, otherwise why not.
    pub problem: Option<String>,
}

/// One volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub id: String,
    pub name: String,
    pub capacity_bytes: u64,
    /// The device class (lvm) it was created in; `None` for the loop backend.
    pub device_class: Option<String>,
    pub tier: String,
    /// The caps its tier gives it now (`io.max` form: `rbps=.. wbps=.. riops=.. wiops=..`).
    #[serde(with = "text")]
    pub caps: Limits,
    /// An abnormal volume condition (e.g. its pool is full).
    pub condition: Option<String>,
    pub publications: Vec<PublicationSnapshot>,
}

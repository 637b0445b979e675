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

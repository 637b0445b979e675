//! Class priority on a shared device (issue 9): streaming publications keep what they need
//! on a saturated device, batch publications share what streaming leaves (work
//! conserving) above a floor, and tier ceilings stay hard caps. The mechanism, the
//! measurements behind it and the alternatives are in `docs/priority.md`.
//!
//! Pure computation, no IO: the caller reads each publication's counters (`io.stat` of
//! the pod cgroup, or the volume's `/sys/block/dm-N/stat`) and the physical device's
//! `/sys/block/<dev>/stat` every period, calls [`DeviceController::pass`] once per physical
//! device, and writes the returned limits into each batch pod's `io.max`, keyed on the
//! volume's own device.
//!
//! - [`calibration`]: device capacities measured by `iolane bench --calibrate`, stored
//!   in the node's state directory by device identity.
//! - [`model`]: the device cost model (calibrated rates) and its online correction.
//! - [`split`]: max-min fair division of the batch budget.
//! - [`controller`]: the control law of one device.
//! - [`topology`]: the physical devices under a volume's device, and block `stat`
//!   counters, from sysfs under an injected root.
//! - [`node`]: the node's controllers, one per physical device, fed from the
//!   enforcement controller's publications (opt-in: `[priority]` in the node config).

pub mod calibration;
pub mod controller;
pub mod model;
pub mod node;
pub mod split;
pub mod topology;

#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod sim;

pub use calibration::{Calibration, CalibrationStore};
pub use controller::{
    Counters, Decision, DeviceController, DeviceReport, DeviceSample, Params, ParamsError,
    PublicationSample,
};
pub use model::{Capacity, Correction, Cost, DeviceModel, Usage};
pub use node::{CapacitySource, DeviceState, NodePriority, PriorityConfig, PriorityPass};
pub use split::water_fill;
pub use topology::{BlockStat, Topology};

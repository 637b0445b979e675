//! `iolane status` and `/status`: what a node holds now, for an operator at the node.
//!
//! The node serves a JSON snapshot at `GET /status` on its status address (loopback by
//! default, apart from the metrics address; volumes, their
//! tiers and caps, pools, and per publication the pod, its cgroup, the `io.max` caps in
//! place and the `io.stat` counters). `iolane status` fetches it twice, `--interval`
//! apart, and prints one line per volume with the IOPS and bandwidth between the two.
//!
//! - [`snapshot`]: the snapshot's types.
//! - [`cache`]: what `/status` is served from (the backend read once per period).
//! - [`client`]: the `iolane status` client and its table.
//! - [`pool_gauges`]: the pool gauges on `/metrics` and their refresh loop.

pub mod cache;
pub mod client;
pub mod pool_gauges;
pub mod snapshot;

pub use cache::{StatusCache, StatusSource};
pub use client::{StatusError, fetch, rates, render, run};
pub use iops_controller::Counters;
pub use iops_controller::PublicationSnapshot;
pub use pool_gauges::PoolGauges;
pub use snapshot::{DeviceStatus, NodeStatus, PoolStatus, VolumeStatus};

//! iolane's CSI driver: gRPC adapters, the volume domain, storage backends and OS effects,
//! plus what the `iolane` binary serves and runs besides CSI: the HTTP endpoint ([`http`]),
//! `iolane status` ([`status`]), `iolane bench` ([`bench`]), `iolane demo` ([`demo`]) and
//! the node cleanup of `iolane controller` ([`node_cleanup`]) and live re-tiering
//! ([`retier`]).
//!
//! See `ARCHITECTURE.md` at the repository root for the map.

pub mod backend;
pub mod bench;
pub mod config;
pub mod demo;
pub mod driver;
pub mod enforce;
pub mod error;
pub mod grpc;
pub mod http;
pub mod inflight;
pub mod k8s;
pub mod node_cleanup;
pub mod os;
pub mod priority;
pub mod retier;
pub mod server;
pub mod status;
pub mod tiering;
pub mod validate;
pub mod volume;

/// Entry points for the fuzz targets (`fuzz/`, issue 12) into parsers of outside text that
/// are private to their module. Not an API: nothing else may use them.
#[doc(hidden)]
pub mod fuzzing {
    /// The request checks and conversions of the gRPC handlers.
    pub use crate::grpc::convert::{
        capabilities, capability, capacity_range, content_source, map, pod_uid, required, volume_id,
    };

    /// The targets of a device-mapper `DM_TABLE_STATUS` ioctl reply, as the kernel laid
    /// them out ([`os::dm`](crate::os::dm)).
    pub fn dm_status_reply(buf: &[u8]) -> Result<Vec<crate::os::dm::TargetStatus>, &'static str> {
        crate::os::dm::parse_status_reply(buf)
    }
}
